"""Regenerate zoplatform/data/fixtures/: a small, deterministic sample of the real task files.

    python scripts/make_fixtures.py [--src ../shared/data]

The fixture lets the test suite (and the demos) run end to end in a fresh clone without the real
data (issue 33 item 3).  Each sampled file keeps the real file's name, format and encoding
byte for byte: its header (TSV), its first data row (the exact-prompt tests pin it) and a seeded
random sample of the other rows, written in file order.  Rows are raw lines (bytes), so latin-1 /
cp1252 files stay as they are.  SOURCES.md is rewritten with the row counts and sha256 of each file.
"""
from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "zoplatform" / "data" / "fixtures"
SEED = 33  # issue 33

# file -> data rows kept (header not counted).  Sized for the tests' requests (e.g. tests/test_finetune.py
# TINY: 48 train + 16 dev from train, 24 test from validation) and for the demos (sst2: 1000 train + 200 dev,
# 500 test).  BoolQ ships no train file, as in the real data (train/dev/test are carved from val.jsonl);
# MPQA keeps more rows than its 2,000-row held-out test pool (tasks.py: holdout=2000).  MR, CR and SUBJ are
# left out: their held-out pools (2,000 / 1,000 / 2,000 rows of long sentences) would need most of the file.
PLAN = {
    "sst2/train.tsv": 1200, "sst2/dev.tsv": 500,
    "rte/train.jsonl": 160, "rte/val.jsonl": 80,
    "cb/train.jsonl": 120, "cb/val.jsonl": 40,
    "copa/train.jsonl": 200, "copa/val.jsonl": 60,
    "boolq/val.jsonl": 120,
    "wic/train.jsonl": 100, "wic/val.jsonl": 50,
    "wsc/train.jsonl": 80, "wsc/val.jsonl": 30,
    "multirc/train.jsonl": 4, "multirc/val.jsonl": 3,
    "sst5/stsa.fine.train": 200, "sst5/stsa.fine.test": 100,
    "trec/TREC.train.all": 300, "trec/TREC.test.all": 100,
    "mpqa/mpqa.all": 2300,
}
HEADER = {"tsv"}  # formats whose first line is a header


def sample(src: Path, rel: str, k: int) -> tuple[bytes, int, int]:
    """(sampled bytes, rows kept, rows in the source) for one file."""
    lines = src.joinpath(rel).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    head = lines[:1] if rel.endswith(".tsv") else []
    rows = lines[len(head):]
    n = len(rows)
    k = min(k, n)
    rng = random.Random(f"{SEED}:{rel}")
    keep = [0] + sorted(rng.sample(range(1, n), k - 1))
    return b"\n".join(head + [rows[i] for i in keep]) + b"\n", k, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data")
    src = ap.parse_args().src
    table = []
    for rel, k in PLAN.items():
        data, kept, n = sample(src, rel, k)
        dst = OUT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        table.append(f"| {rel} | {kept} | {n} | {len(data)} | {hashlib.sha256(data).hexdigest()[:16]} |")
    sources = (OUT / "SOURCES.md").read_text()
    start, end = "<!-- table -->\n", "<!-- /table -->"
    before, _, rest = sources.partition(start)
    _, _, after = rest.partition(end)
    head = "| file | rows kept | rows in source | bytes | sha256 (first 16) |\n|---|---|---|---|---|\n"
    (OUT / "SOURCES.md").write_text(before + start + head + "\n".join(table) + "\n" + end + after)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(PLAN)} files written under {OUT} ({total / 1024:.0f} KiB with SOURCES.md)")


if __name__ == "__main__":
    main()
