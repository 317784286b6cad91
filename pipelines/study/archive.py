"""The compact archive of a study's finished runs, committed in git: ``<results>/runs.jsonl`` (per run: its
comparable config, its dev curve and its summary) and ``<results>/predictions.npz`` (per run: its test predictions;
the test examples' uids and labels once per task and seed when the runs share them).

That is everything the report reads of a run (``state.json``'s dev curve, ``summary.json``, ``predictions.npz``), so
:func:`materialise` rebuilds a run directory the report cannot tell from the original; the rest of a run directory
(checkpoint, trajectory, curve PNGs, logs) lives in the study's MLflow artifacts.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from pipelines.compare.config import OPERATIONAL
from pipelines.finetune.runinfo import PREDICTIONS_FILE
from zoplatform.errors import ConfigError

RUNS_FILE = "runs.jsonl"
PREDS_FILE = "predictions.npz"
PRED_KEYS = ("pred", "label", "uid")
Key = tuple[str, str, int]  # (task, arm, seed)


def read_run(run_dir: Path, key: Key) -> dict | None:
    """One run directory's archive entry (None when it holds no run)."""
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text())
    task, arm, seed = key
    entry: dict[str, Any] = {"task": task, "arm": arm, "seed": seed,
                             "config": {k: v for k, v in state.get("config", {}).items() if k not in OPERATIONAL},
                             "evals": state["history"]["evals"], "summary": None}
    summary = run_dir / "summary.json"
    if summary.is_file():
        entry["summary"] = {k: v for k, v in json.loads(summary.read_text()).items() if k != "out_dir"}
    return entry


def _read_predictions(run_dir: Path) -> dict | None:
    import numpy as np

    path = run_dir / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in PRED_KEYS}


def load(results_dir: Path) -> tuple[dict[Key, dict], dict[str, Any]]:
    """The archive's entries by (task, arm, seed) and its arrays (empty when there is no archive)."""
    import numpy as np

    runs_path = results_dir / RUNS_FILE
    if not runs_path.is_file():
        return {}, {}
    entries = {}
    for n, line in enumerate(runs_path.read_text().splitlines(), 1):
        if line.strip():
            try:
                e = json.loads(line)
                entries[(e["task"], e["arm"], int(e["seed"]))] = e
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{runs_path} line {n} is not an archive entry (JSON with task, arm, seed)") from None
    arrays = {}
    preds = results_dir / PREDS_FILE
    if preds.is_file():
        with np.load(preds, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return entries, arrays


def predictions_of(arrays: dict, key: Key) -> dict | None:
    task, arm, seed = key
    pred = arrays.get(f"{task}/{arm}/{seed}/pred")
    if pred is None:
        return None
    own = {k: arrays.get(f"{task}/{arm}/{seed}/{k}") for k in ("label", "uid")}
    return {"pred": pred, **{k: v if v is not None else arrays[f"{task}/{seed}/{k}"] for k, v in own.items()}}


def materialise(entry: dict, arrays: dict, run_dir: Path) -> None:
    """An archive entry as a run directory: state.json (config + dev curve), summary.json, predictions.npz."""
    import numpy as np

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "state.json").write_text(json.dumps({"config": entry["config"], "history": {"evals": entry["evals"]}}))
    if entry.get("summary") is not None:
        (run_dir / "summary.json").write_text(json.dumps(entry["summary"]))
    p = predictions_of(arrays, (entry["task"], entry["arm"], int(entry["seed"])))
    if p is not None:
        np.savez(run_dir / PREDICTIONS_FILE, **p)


def write(results_dir: Path, entries: dict[Key, dict], preds: dict[Key, dict], order: list[Key]) -> dict[str, int]:
    """Write the archive (entries in ``order``); the uids and labels shared by a task and seed are stored once.
    The bytes depend on the contents only (fixed zip timestamps), so re-archiving the same runs changes nothing."""
    import numpy as np

    results_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in order if k in entries]
    with open(results_dir / RUNS_FILE, "w") as f:
        for k in keys:
            f.write(json.dumps(entries[k]) + "\n")  # key order kept: the report is byte for byte the run dirs'
    arrays: dict[str, Any] = {}
    shared: dict[tuple[str, int], dict] = {}
    for task, arm, seed in keys:
        p = preds.get((task, arm, seed))
        if p is None:
            continue
        arrays[f"{task}/{arm}/{seed}/pred"] = p["pred"]
        first = shared.setdefault((task, seed), {"label": p["label"], "uid": p["uid"]})
        for k in ("label", "uid"):
            if not (first[k].shape == p[k].shape and np.array_equal(first[k], p[k])):
                arrays[f"{task}/{arm}/{seed}/{k}"] = p[k]  # tested on other examples or in another order
    for (task, seed), v in shared.items():
        arrays |= {f"{task}/{seed}/label": v["label"], f"{task}/{seed}/uid": v["uid"]}
    if not arrays:  # no run saved its predictions (runs older than predictions.npz)
        (results_dir / PREDS_FILE).unlink(missing_ok=True)
        return {"runs": len(keys), "finished": sum(entries[k].get("summary") is not None for k in keys),
                "with_predictions": 0}
    with zipfile.ZipFile(results_dir / PREDS_FILE, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)
    return {"runs": len(keys), "finished": sum(entries[k].get("summary") is not None for k in keys),
            "with_predictions": sum(k in preds for k in keys)}


def pack(results_dir: Path, runs_dir: Path, planned: list[Key]) -> dict[str, int]:
    """Add the runs found under ``runs_dir/runs/<task>/<arm>/seed<k>`` to the archive (entries of runs no longer on
    disk are kept; a run on disk replaces its entry)."""
    entries, arrays = load(results_dir)
    preds = {k: p for k in entries if (p := predictions_of(arrays, k)) is not None}
    found = 0
    for key in planned:
        task, arm, seed = key
        d = runs_dir / "runs" / task / arm / f"seed{seed}"
        entry = read_run(d, key)
        if entry is None:
            continue
        found += 1
        entries[key] = entry
        p = _read_predictions(d)
        if p is None:
            preds.pop(key, None)
        else:
            preds[key] = p
    out = write(results_dir, entries, preds, planned)
    return {**out, "from_run_dirs": found}
