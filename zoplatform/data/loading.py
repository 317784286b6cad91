"""Raw-row readers for the local task files, plus data-dir resolution.

Three on-disk formats cover every task (see ``shared/data/SOURCES.md``):

* ``jsonl``  SuperGLUE JSON lines (one object a line);
* ``tsv``    GLUE TSV with a header row, read with quoting disabled (GLUE
  sentences contain bare ``"`` characters);
* ``lines``  ``<label> <text>`` per line (SentEval/LM-BFF style), read in the
  file's own encoding (TREC train is latin-1).

Rows are read through the Hugging Face ``datasets`` library (fast, Arrow
cached on disk).  ``datasets`` reports parse errors without a row number, so
when it fails we re-scan the file in plain Python only to *locate* the bad
row and raise a :class:`DataError` naming file and row.

Row numbering in messages: ``row N`` is the 1-based data row (header and blank
lines not counted); ``(line L)`` is added when the file line differs.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoplatform.errors import DataError

FORMATS = ("jsonl", "tsv", "lines")
HUB = "hub"  # pass as data_dir to read from the Hugging Face Hub instead of local files
_DEFAULT_REL = Path("..") / "shared" / "data"
# zoplatform/data/loading.py -> parents[2] is the repository root
_REPO_ROOT = Path(__file__).resolve().parents[2]
# a small deterministic sample of the real files, same names and formats (fixtures/SOURCES.md): the
# tests and demos use it when no real data is found; never chosen by resolve_data_dir on its own
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the directory holding the task folders (``sst2/``, ``rte/``, ...).

    Order: explicit ``data_dir`` > env ``ZO_DATA_DIR`` > ``../shared/data``
    relative to the working directory, then relative to the repository root.
    An explicit or env value that does not exist is an error (no silent
    fallback to another copy of the data, nor to the small in-repo sample
    :data:`FIXTURE_DIR`, which is used only when named, e.g. by the tests
    and demos when no real data is found).
    """
    for value, origin in ((data_dir, "--data-dir"), (os.environ.get("ZO_DATA_DIR"), "ZO_DATA_DIR")):
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise DataError(f"data dir not found: {path} (from {origin}); pass --data-dir DIR or set ZO_DATA_DIR")
        return path.resolve()
    tried = [Path.cwd() / _DEFAULT_REL, _REPO_ROOT / _DEFAULT_REL]
    for path in tried:
        if path.is_dir():
            return path.resolve()
    raise DataError(
        "no data dir found (tried " + ", ".join(str(p.resolve()) for p in tried) + "); "
        "pass --data-dir DIR or set ZO_DATA_DIR"
    )


def where(row: int, line: int | None) -> str:
    """Format a row position for messages: ``row 7`` or ``row 7 (line 8)``."""
    return f"row {row}" if line in (None, row) else f"row {row} (line {line})"


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    # "Generating train split" bars are noise inside sweeps; restore the caller's setting.
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def read_rows(path: Path, fmt: str, encoding: str, display: str) -> tuple[list[dict], list[int] | None]:
    """Read every data row of ``path`` as a dict.

    Returns ``(rows, lines)`` where ``lines[i]`` is the 1-based file line of
    ``rows[i]`` (``None`` if it could not be aligned).  ``lines`` format rows
    come back as ``{"label": first token, "text": rest}`` (``text`` absent when
    the line has no space).  ``display`` (e.g. ``rte/train.jsonl``) names the
    file in errors.
    """
    if fmt not in FORMATS:
        raise DataError(f"{display}: unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    import datasets

    files = {"rows": str(path)}
    try:
        with _quiet_datasets():
            if fmt == "jsonl":
                ds = datasets.load_dataset("json", data_files=files, split="rows", encoding=encoding)
            elif fmt == "tsv":
                header = _header(path, encoding, display)
                # every column as string: keeps labels uniform ("0"/"1") and stops
                # pandas from turning sentences like "null" or "nan" into NaN
                feats = datasets.Features({c: datasets.Value("string") for c in header})
                ds = datasets.load_dataset(
                    "csv", data_files=files, split="rows", delimiter="\t", quoting=3,
                    keep_default_na=False, na_filter=False, features=feats, encoding=encoding,
                )
            else:
                ds = datasets.load_dataset("text", data_files=files, split="rows", encoding=encoding)
    except DataError:
        raise
    except Exception as exc:
        _diagnose(path, fmt, encoding, display)
        raise DataError(f"{display}: could not be read as {fmt}: {type(exc).__name__}: {exc}") from exc

    rows = ds.to_list()
    if fmt == "lines":
        rows = [_split_line(r["text"]) for r in rows if r["text"].strip()]
    lines = _data_lines(path, fmt, encoding)
    return rows, (lines if len(lines) == len(rows) else None)


def _split_line(line: str) -> dict:
    label, sep, text = line.rstrip("\r").partition(" ")
    return {"label": label, "text": text} if sep else {"label": label}


def _decoded_lines(path: Path, encoding: str, display: str) -> list[str]:
    lines = []
    for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            lines.append(raw.decode(encoding).rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{display} line {i}: not valid {encoding} text ({exc.reason})") from exc
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start a row
    return lines


def _header(path: Path, encoding: str, display: str) -> list[str]:
    with open(path, encoding=encoding, errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    cols = first.split("\t")
    if not first or len(set(cols)) != len(cols) or any(not c for c in cols):
        raise DataError(f"{display} line 1: expected a tab-separated header row, got {first!r}")
    return cols


def _data_lines(path: Path, fmt: str, encoding: str) -> list[int]:
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        text = fh.read()
    lines = text.split("\n")
    start = 1 if fmt == "tsv" else 0  # skip the TSV header
    # blank = what the readers skip: pandas skips empty lines, arrow-json and our
    # ``lines`` filter skip whitespace-only ones
    blank = (lambda s: s.rstrip("\r") == "") if fmt == "tsv" else (lambda s: s.strip() == "")
    return [i + 1 for i in range(start, len(lines)) if not blank(lines[i])]


def _check_field_counts(lines: list[str], display: str, ncols: int) -> None:
    data = [(i + 2, s) for i, s in enumerate(lines[1:]) if s != ""]  # line 1 is the header
    for row, (line, s) in enumerate(data, start=1):
        n = s.count("\t") + 1
        if n != ncols:
            raise DataError(f"{display} {where(row, line)}: expected {ncols} tab-separated fields, found {n}")


def _diagnose(path: Path, fmt: str, encoding: str, display: str) -> None:
    """Re-scan a file the reader rejected and raise a DataError at the first bad row.

    Returns without raising when no row-level problem is found (the caller
    then reports the reader's own message).
    """
    lines = _decoded_lines(path, encoding, display)
    if fmt == "tsv":
        _check_field_counts(lines, display, len(_header(path, encoding, display)))
    elif fmt == "jsonl":
        row = 0
        for line_no, s in enumerate(lines, start=1):
            if not s.strip():
                continue
            row += 1
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{display} {where(row, line_no)}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if not isinstance(obj, dict):
                raise DataError(f"{display} {where(row, line_no)}: expected a JSON object, got {type(obj).__name__}")


def read_hub_rows(hub_id: tuple[str, ...], split: str) -> list[dict]:
    """Rows of ``datasets.load_dataset(*hub_id, split=split)``; failures -> DataError."""
    import datasets

    name = "/".join(hub_id)
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(*hub_id, split=split)
    except Exception as exc:
        raise DataError(
            f"could not load {name} [{split}] from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "use local files instead: pass --data-dir DIR or set ZO_DATA_DIR"
        ) from exc
    return ds.to_list()
