"""The in-repo fixture data (zoplatform/data/fixtures, issue 33 item 3): what SOURCES.md says it is, that it is a
sample of the real files (when they are here), and that the sizes the tests and demos ask for fit it."""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from tests.conftest import DATA, ON_FIXTURE, real_data
from zoplatform.data import FIXTURE_DIR, TASKS, load_split, sample_splits

ROOT = Path(__file__).resolve().parents[1]


def _table() -> dict[str, tuple[int, int, int, str]]:
    text = (FIXTURE_DIR / "SOURCES.md").read_text()
    rows = re.findall(r"^\| (\S+) \| (\d+) \| (\d+) \| (\d+) \| ([0-9a-f]{16}) \|$", text, flags=re.M)
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


@real_data
def test_fixture_rows_are_the_real_files_rows_and_regenerate_byte_for_byte():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    for rel, (kept, total, _, _) in _table().items():
        real, fix = _data_lines(DATA / rel), _data_lines(FIXTURE_DIR / rel)
        assert len(real) == total and fix[0] == real[0], rel  # the first row is kept (prompt tests pin it)
        it = iter(real)
        assert all(line in it for line in fix), rel  # a subsequence: real rows, in file order
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
