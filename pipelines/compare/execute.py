"""How ``zo compare`` executes its runs: each a fresh ``zo finetune`` process, one at a time (``--backend local``)
or as Ray tasks in parallel (``--backend ray``); split out of :mod:`pipelines.compare`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunSpec


def _finetune_argv(spec: RunSpec, parent_run_id: str, tracking_uri: str) -> list[str]:
    cfg = spec.config.model_copy(update={"parent_run_id": parent_run_id, "tracking_uri": tracking_uri,
                                         "resume": spec.status == "resume"})
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    if spec.status == "restart":  # an interrupted fo run: its partial record goes, the run starts again
        (spec.out_dir / "state.json").unlink(missing_ok=True)
    path = spec.out_dir / "config.json"
    path.write_text(json.dumps(cfg.model_dump(), indent=1))
    return [sys.executable, "-m", "pipelines.cli", "finetune", "--config", str(path), "--json"]


def run_one(argv: list[str], out_dir: str, threads: int) -> dict:
    """One run in a fresh process (its own peak memory); its log next to it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(Path(out_dir) / "run.log", "a") as log:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0:
        tail = (Path(out_dir) / "run.log").read_text().strip().splitlines()[-1:] or [""]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1])


def execute_local(todo: list[RunSpec], parent_id: str, uri: str, threads: int, progress) -> None:
    for spec in todo:
        _settle(spec, run_one(_finetune_argv(spec, parent_id, uri), str(spec.out_dir), threads), progress)


def _settle(spec: RunSpec, out: dict, progress) -> None:
    """A run's outcome (``{"error": ...}`` = failed) onto its spec, then the progress callback."""
    spec.status, spec.summary = ("failed", out) if "error" in out else ("done", out)
    progress(spec)


def execute_ray(todo: list[RunSpec], parent_id: str, uri: str, resources: dict, progress) -> None:
    import ray

    from pipelines.raytools import connect as _ray_connect
    from pipelines.raytools import run_tasks

    started = _ray_connect()
    try:
        remote = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_calls=1)(run_one)

        run_tasks(lambda s: remote.remote(_finetune_argv(s, parent_id, uri), str(s.out_dir), _threads_of(resources)),
                  todo, lambda spec, out, error: _settle(spec, {"error": error} if error else out, progress))
    finally:
        if started:
            ray.shutdown()


def _threads_of(resources: dict) -> int:
    return max(1, int(resources["cpu"]))


# =========================================================================== 3. results: pipelines/compare/report.py
# =========================================================================== 4. the recipe
