"""Scale-out benchmarks: ``zo bench data-parallel`` (1 vs N data-parallel workers) and ``zo bench sweep-overhead``
(trials through Ray Tune vs run directly); split out of :mod:`pipelines.bench.step`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any


def data_parallel(*, model: str = "smollm2-135m", task: str = "sst2", method: str = "mezo", batch_size: int = 16,
                  steps: int = 6, workers=(1, 2), threads: int = 1, data_dir: str | None = None) -> dict[str, Any]:
    """Steps/s of one ZO run on 1 worker and on N workers (``threads`` each) at the same global batch,
    and the bytes each worker all-reduces per step; ratios measured in one run (the runs go one after
    another, so they share the machine's state)."""
    import tempfile

    from zoplatform.errors import ConfigError

    if steps < 1 or batch_size < max(workers) or min(workers) < 1:
        raise ConfigError(f"steps={steps}, batch_size={batch_size}, workers={list(workers)}: need steps >= 1, "
                          f"workers >= 1 and batch_size >= every worker count")
    out: dict[str, Any] = {"model": model, "task": task, "method": method, "global_batch": batch_size,
                           "steps": steps, "threads_per_worker": threads, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in workers:
            argv = ["finetune", "--model", model, "--task", task, "--method", method, "--steps", str(steps),
                    "--batch-size", str(batch_size), "--num-dev", "16", "--num-test", "16",
                    "--eval-every", str(10 * steps), "--no-zero-shot", "--no-tracking", "--threads", str(threads),
                    "--workers", str(n), "--out-dir", f"{tmp}/w{n}", "--json"]
            if data_dir:
                argv += ["--data-dir", data_dir]
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
            p = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True, env=env)
            if p.returncode != 0:
                raise RuntimeError(f"{n}-worker run failed: {p.stderr.strip().splitlines()[-1:]}")
            s = json.loads(p.stdout.strip().splitlines()[-1])
            out["runs"][str(n)] = {"steps_per_s": steps / s["train_time_s"], "train_time_s": s["train_time_s"],
                                   "allreduce_bytes_per_step": s.get("allreduce_bytes_per_step", 0.0),
                                   "replicas_identical": len(set(s.get("replica_sha256", ["-"]))) == 1}
    base = out["runs"][str(workers[0])]["steps_per_s"]
    for n in workers[1:]:
        out["runs"][str(n)]["speedup_vs_1"] = out["runs"][str(n)]["steps_per_s"] / base
    return out


def sweep_overhead(model: str = "tiny:llama", task: str = "sst2", method: str = "mezo", trials: int = 4,
                   steps: int = 4, data_dir: str | None = None) -> dict[str, Any]:
    """Wall time of ``trials`` short trials through Ray Tune against the same
    trials run directly through the sweep's objective core, in one run.

    Both sides run the trials one at a time (Ray: ``max_concurrent_trials=1``, no
    search or scheduler, one CPU per trial, worker processes reused as ``zo sweep``
    does for CPU trials; direct: one torch thread), with the
    paper-default config of the method, logging to the same temporary SQLite
    MLflow store.  ``ratio`` excludes Ray's start-up; ``ratio_with_init`` includes it.
    """
    import shutil
    import tempfile
    from pathlib import Path

    import torch
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    import search_spaces
    from pipelines import raytools
    from pipelines.sweep import SweepConfig, check_inputs, run_trial
    from pipelines.sweep.ray_backend import trainable, trial_dirname
    from zoplatform.tracking.mlflow import MlflowTracker

    tmp = Path(tempfile.mkdtemp(prefix="zo-sweep-overhead-"))
    ft = {"num_train": 32, "num_dev": 16, "num_test": 16, "batch_size": 8, "eval_every": steps,
          "zero_shot": False} | ({"data_dir": data_dir} if data_dir else {})
    cfg = SweepConfig(method=method, task=task, model=model, trials=trials, steps=steps, scheduler="none",
                      max_concurrent=1, max_failures=0, storage=str(tmp), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                      finetune=ft)
    space, *_ = check_inputs(cfg)
    params = search_spaces.to_points(space)[0] if space.defaults else {}
    uri = cfg.tracking_uri
    parent = MlflowTracker(tracking_uri=uri, experiment=cfg.experiment, run_name="sweep-overhead",
                           system_metrics=False)
    parent.start({"trials": trials, "steps": steps, "model": model})
    import transformers  # noqa: F401  (imported once by both sides: not part of the comparison)

    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t = time.perf_counter()
        for i in range(trials):
            run_trial(cfg, params, tmp / "direct" / str(i), trial_key=f"direct-{i}", tracking_uri=uri,
                      parent_run_id=parent.run_id, report=lambda m: False)
        direct_s = time.perf_counter() - t
        torch.set_num_threads(threads)

        t = time.perf_counter()
        started = raytools.connect()
        init_s = time.perf_counter() - t
        try:
            ctx = {"tracking_uri": uri, "parent_run_id": parent.run_id, "trials_dir": str(tmp / "ray"),
                   "resources": {"cpu": 1.0, "gpu": 0.0}}
            fn = tune.with_resources(tune.with_parameters(trainable, sweep=cfg.model_dump(), ctx=ctx), {"cpu": 1})
            t = time.perf_counter()
            grid = Tuner(fn, param_space=dict(params),
                         tune_config=TuneConfig(num_samples=trials, max_concurrent_trials=1,
                                                trial_dirname_creator=trial_dirname,
                                                reuse_actors=True),  # as zo sweep does for CPU trials
                         run_config=RunConfig(name="ray", storage_path=str(tmp / "tune"))).fit()
            ray_s = time.perf_counter() - t
        finally:
            if started:
                import ray

                ray.shutdown()
        if grid.num_errors:
            raise RuntimeError(f"{grid.num_errors} Ray trial(s) failed: {grid.errors[0]}")
    finally:
        parent.end("FINISHED")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"trials": trials, "steps": steps, "model": model, "method": method,
            "direct_s": round(direct_s, 2), "ray_init_s": round(init_s, 2), "ray_fit_s": round(ray_s, 2),
            "direct_per_trial_s": round(direct_s / trials, 2), "ray_per_trial_s": round(ray_s / trials, 2),
            "ratio": round(ray_s / direct_s, 2), "ratio_with_init": round((ray_s + init_s) / direct_s, 2)}
