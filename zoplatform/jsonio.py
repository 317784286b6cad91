"""Standard JSON out of run summaries: non-finite floats become ``null`` (bare ``NaN``/``Infinity``
are not JSON), and files are replaced atomically (tmp file + rename)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively through dicts, lists, tuples)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` of :func:`json_safe` (``allow_nan=False``: a NaN that slipped through raises)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename, fsynced: a crash leaves
    either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    return write_atomic(path, dumps(obj, indent=indent, default=str))
