"""The in-repo fixture data (zoplatform/data/fixtures, issue 33 item 3): what SOURCES.md says it is, that it is a
sample of the real files (its rows' own idx numbers on both layouts; every row, byte for byte, when the
real files are here), and that the sizes the tests and demos ask for fit it."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from pathlib import Path

from tests.conftest import DATA, ON_FIXTURE, real_data
from zoplatform.data import FIXTURE_DIR, TASKS, load_split, sample_splits

ROOT = Path(__file__).resolve().parents[1]


def _table() -> dict[str, tuple[int, int, int, str]]:
    text = (FIXTURE_DIR / "SOURCES.md").read_text()
    rows = re.findall(r"^\| (\S+) \| (\d+) \| (\d+) \| (\d+) \| ([0-9a-f]{16}) \|$", text, flags=re.MULTILINE)
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows}


def _data_lines(path: Path) -> list[bytes]:
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines[1:] if path.suffix == ".tsv" else lines


def test_fixture_is_what_its_sources_md_says():
    table = _table()
    files = sorted(str(p.relative_to(FIXTURE_DIR)) for p in FIXTURE_DIR.rglob("*") if p.is_file())
    assert files == sorted([*table, "SOURCES.md"])
    for rel, (kept, _, size, sha) in table.items():
        data = (FIXTURE_DIR / rel).read_bytes()
        assert (len(_data_lines(FIXTURE_DIR / rel)), len(data), hashlib.sha256(data).hexdigest()[:16]) == (
            kept, size, sha), rel
    assert sum(p.stat().st_size for p in FIXTURE_DIR.rglob("*") if p.is_file()) < 1024 * 1024  # kept small


def _make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    return mk


def _kept_rows(rel: str, kept: int, total: int) -> list[int]:
    """The source rows SOURCES.md's sampling rule keeps: row 0 and ``kept - 1`` rows of 1..total-1 drawn by
    ``random.Random("33:<path>").sample``, in file order (written out here from the rule, not the script)."""
    return [0, *sorted(random.Random(f"33:{rel}").sample(range(1, total), kept - 1))]


@real_data
def test_fixture_rows_are_the_real_files_rows_and_regenerate_byte_for_byte(tmp_path):
    """On both layouts: every SuperGLUE-style file (.jsonl) numbers its rows in "idx" (0, 1, ... in the real
    files, checked below when they are here), so the fixture's idx column must be exactly the rows the rule
    picks from SOURCES.md's counts; and the script applies that rule to any source (a tmp one).  With the real
    files: each fixture file is a subsequence of its real file and regenerates byte for byte."""
    mk, table = _make_fixtures(), _table()
    assert set(mk.PLAN) == set(table)
    jsonl = [rel for rel in table if rel.endswith(".jsonl")]
    assert len(jsonl) == 13
    for rel, (kept, total, _, _) in table.items():
        assert kept == min(mk.PLAN[rel], total) and kept < total, rel
        if rel in jsonl:
            idx = [json.loads(line)["idx"] for line in _data_lines(FIXTURE_DIR / rel)]
            assert idx == _kept_rows(rel, kept, total), rel
    # the script on a source of known rows (tmp): header, row 0, the rule's rows, in order, byte for byte
    rows = [f"row {i}\t{i % 2}".encode() for i in range(40)]
    (tmp_path / "x").mkdir()
    (tmp_path / "x/a.tsv").write_bytes(b"sentence\tlabel\n" + b"\n".join(rows) + b"\n")
    want = b"sentence\tlabel\n" + b"".join(rows[i] + b"\n" for i in _kept_rows("x/a.tsv", 7, 40))
    assert mk.sample(tmp_path, "x/a.tsv", 7) == (want, 7, 40)
    assert mk.sample(tmp_path, "x/a.tsv", 99)[1:] == (40, 40)  # never more rows than the source has
    if ON_FIXTURE:  # the real files are not here: the checks above are what can be checked
        return
    for rel, (kept, total, _, _) in table.items():
        real, fix = _data_lines(DATA / rel), _data_lines(FIXTURE_DIR / rel)
        assert len(real) == total and fix[0] == real[0], rel  # the first row is kept (prompt tests pin it)
        it = iter(real)
        assert all(line in it for line in fix), rel  # a subsequence: real rows, in file order
        if rel in jsonl:
            assert [json.loads(line)["idx"] for line in real] == list(range(total)), rel
        assert mk.sample(DATA, rel, mk.PLAN[rel])[0] == (FIXTURE_DIR / rel).read_bytes(), rel


def test_the_tests_and_demos_sizes_fit_the_fixture():
    from pipelines.finetune.sampling import split_sizes

    d = FIXTURE_DIR
    for name in TASKS:
        if any(f"{name}/" in rel for rel in _table()):
            for split in ("validation",) if name == "boolq" else ("train", "validation"):
                assert load_split(name, split, d), (name, split)
    s = sample_splits("sst2", d, num_train=1000, num_dev=200, num_test=500)  # scripts/demo.sh, as given
    assert (len(s.train), len(s.dev), len(s.test)) == (1000, 200, 500) and s.note == ""
    s = sample_splits("sst2", d, num_train=48, num_dev=16, num_test=24)  # tests/test_finetune.py TINY
    assert (len(s.train), len(s.dev), len(s.test)) == (48, 16, 24)
    for name in ("rte", "cb", "copa", "trec", "wic", "wsc", "sst5", "mpqa"):
        assert split_sizes(name, d, 48, 16) == (48, 16)
        s = sample_splits(name, d, num_train=48, num_dev=16, num_test=24)
        assert (len(s.train), len(s.dev), len(s.test)) == (48, 16, 24), name
    s = sample_splits("boolq", d, num_train=32, num_dev=16, num_test=24)  # carved from val.jsonl, as on real data
    assert "disjoint" in s.note and len(s.train) == 32


def test_conftest_uses_the_fixture_only_without_real_data():
    assert ON_FIXTURE == (DATA == FIXTURE_DIR.resolve())
    if not ON_FIXTURE:
        assert not DATA.is_relative_to(FIXTURE_DIR)
