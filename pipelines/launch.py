"""``zo finetune --workers N``: one data-parallel ZO run over N local worker processes.

The launcher is torchrun (``torch.distributed.run --standalone``): it starts N copies of the
same ``zo finetune`` command with ``RANK``/``WORLD_SIZE`` set, forwards SIGINT/SIGTERM to them
(the main worker then checkpoints and ends the MLflow run ``KILLED``), and when one worker dies
it stops the others and exits non-zero.  The main worker logs the one MLflow run and writes the
one trajectory; if a worker dies the launcher ends that run ``FAILED`` with the reason, and
``--resume`` continues it from the last checkpoint.  Each worker gets ``--threads`` threads
(default: the machine's cores divided by N).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(argv: list[str], workers: int, threads: int | None, out_dir: str | None) -> int:
    """Run ``zo <argv>`` as ``workers`` torchrun workers; returns the exit status to use."""
    per = threads or max(1, (os.cpu_count() or 1) // workers)
    argv = list(argv)
    if out_dir is None:  # every worker must name the same out dir (the default has a timestamp in it)
        import time

        out_dir = str(Path("runs") / f"dp{workers}-{int(time.time())}")
        argv += ["--out-dir", out_dir]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}",
           "-m", "pipelines.cli", *argv]
    if threads is None:
        cmd += ["--threads", str(per)]
    env = dict(os.environ, OMP_NUM_THREADS=str(per), TOKENIZERS_PARALLELISM="false")
    p = subprocess.Popen(cmd, env=env)
    try:
        rc = p.wait()
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM reach the workers through torchrun; wait for their checkpoint
        p.send_signal(signal.SIGINT)
        p.wait()
        return 130
    if rc not in (0, 2) and out_dir:  # a worker died, or torchrun stopped the main one before it ended its run
        fail_run(Path(out_dir), f"a data-parallel worker failed (torchrun exit {rc}; its log says which); "
                                f"continue with: zo finetune --resume --out-dir {out_dir} --workers {workers}")
    return rc if rc in (0, 1, 2, 130) else 1


def fail_run(out_dir: Path, reason: str) -> None:
    """End the out dir's MLflow run FAILED with ``reason`` if it is still RUNNING (best effort)."""
    import json

    state = out_dir / "state.json"
    if not state.is_file():
        return
    try:
        info = json.loads(state.read_text())
        cfg = info.get("config", {})
        if not info.get("run_id") or not cfg.get("tracking", True):
            return
        from zoplatform.tracking.mlflow import open_client

        client = open_client(cfg.get("tracking_uri"))
        run = client.get_run(info["run_id"])
        # RUNNING: the main worker was stopped mid-way; KILLED: torchrun's SIGTERM reached it as an interrupt;
        # FAILED: the main worker saw the dead peer first (a gloo read error) and ended the run itself.  In
        # every case the reason leads with what happened and how to continue, the worker's own error after it.
        if run.info.status in ("RUNNING", "KILLED", "FAILED"):
            why = run.data.tags.get("zo.end_reason")
            if why and why.startswith(reason):
                return
            client.set_tag(info["run_id"], "zo.end_reason", (f"{reason} ({why})" if why else reason)[:5000])
            if run.info.status != "FAILED":
                client.set_terminated(info["run_id"], status="FAILED")
    except Exception as e:  # noqa: BLE001 - the launcher's own exit status already says it failed
        print(f"warning: could not end the MLflow run of {out_dir}: {e}", file=sys.stderr)
