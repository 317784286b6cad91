"""Ray backend: ``Tuner`` + ``OptunaSearch`` (seeded TPE, the papers' defaults as ``points_to_evaluate``) in a
``ConcurrencyLimiter``, ASHA with forward passes as its time attribute, ``with_resources``, ``FailureConfig``
retries, trajectories as Tune checkpoints, ``Tuner.restore`` for ``--resume``.

What the driver learns about each trial is kept where a restored sweep finds it again: Tune's results (errors,
last metrics) and, for a trial the scheduler stopped, a marker file in the trial's directory written by
:class:`SweepCallback`.  Nothing lives in module state.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ray.tune import Callback

from zoplatform.errors import ConfigError

from .callbacks import SweepCallbacks
from .config import SweepConfig, planned_forward_passes, resume_hint, sweep_name
from .optuna_backend import optuna_storage
from .results import end_child, make_row, reconcile_children, tracking_client
from .trial import STATE_FILES, StoppedByBackend, run_trial

STOPPED_FILE = "stopped_early"  # in a trial's directory: the scheduler stopped it (its text: why)


def _progress(d: Path) -> int:
    import json

    try:
        return int(json.loads((d / "state.json").read_text())["history"]["steps_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _adopt_checkpoint(src: Path, out_dir: Path) -> None:
    """Take the Tune checkpoint's trajectory unless out_dir (shared storage) is further along."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if _progress(src) > _progress(out_dir):
        for f in STATE_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, out_dir / f)


def trainable(config: dict, sweep: dict, ctx: dict):
    """The Tune trainable: one trial through the objective core, trajectories as checkpoints."""
    import torch
    from ray import tune

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = SweepConfig(**sweep)
    res = ctx["resources"]
    torch.set_num_threads(max(1, int(res["cpu"])))
    if 0 < res["gpu"] < 1 and torch.cuda.is_available():  # fractions are logical: cap this trial's memory
        torch.cuda.set_per_process_memory_fraction(res["gpu"])
    trial_id = tune.get_context().get_trial_id()
    label = tune.get_context().get_trial_name()  # trial_name: t<N>
    out_dir = Path(ctx["trials_dir"]) / trial_id
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retry or a restore: continue from the trajectory
        with ckpt.as_directory() as d:
            _adopt_checkpoint(Path(d), out_dir)

    def report_with_checkpoint(metrics: dict) -> bool:
        with tempfile.TemporaryDirectory() as d:
            for f in STATE_FILES:
                if (out_dir / f).is_file():
                    shutil.copy2(out_dir / f, Path(d) / f)
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            except SystemExit:  # Ray stops a trial this way: see trial.StoppedByBackend
                raise StoppedByBackend(trial_id) from None
        return False  # Ray's scheduler stops trials itself

    try:
        s = run_trial(cfg, dict(config), out_dir, trial_key=trial_id, tracking_uri=ctx["tracking_uri"],
                      parent_run_id=ctx["parent_run_id"], report=report_with_checkpoint,
                      extra_tags={"ray_trial_id": trial_id}, step_hook=ctx.get("after_step"),
                      searched=ctx.get("searched", ()), label=label)
        report_with_checkpoint({"best_dev_accuracy": s["best_dev_accuracy"],
                                "dev_loss": s["final_dev_loss"], "forward_passes": s["forward_passes"],
                                "test_accuracy": s["test_accuracy"], "done_training": 1,
                                "mlflow_run_id": s["mlflow_run_id"], "trial_dir": str(out_dir),
                                "trial_label": label})
    except StoppedByBackend:
        raise SystemExit(0) from None  # how Ray's thread runner expects a stopped trial to end
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def trial_dirname(trial) -> str:
    return trial.trial_id


def trial_name(trial) -> str:
    """``t<N>``: the trial's place in the sweep, from 0 (Tune's experiment tag starts with its 1-based counter,
    which the searcher's saved state carries over a restore); the trial id names its directory."""
    n = str(trial.experiment_tag).split("_", 1)[0]
    return f"t{int(n) - 1}" if n.isdigit() else trial.trial_id


class SweepCallback(Callback):
    """Driver side: marks and ends the run of a trial the scheduler stopped, and calls ``on_result`` (the caller's
    :attr:`.callbacks.SweepCallbacks.on_result`, if any) for every result.

    A module-level class, so the experiment state pickles it by reference: a restored sweep runs this code, with
    the attributes it was made with (the trials directory and the tracking URI).  ``on_result`` is not pickled:
    it belongs to the driver that passed it, and a restored sweep gets the resuming driver's
    (:func:`restore_tuner`)."""

    def __init__(self, trials_dir: str, tracking_uri: str, on_result: Callable[[str, dict], None] | None = None):
        self.trials_dir, self.tracking_uri, self.on_result = trials_dir, tracking_uri, on_result

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "on_result"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.on_result = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.on_result is not None:
            self.on_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("done_training"):  # it finished training and ended its run itself
            return
        d = Path(self.trials_dir) / trial.trial_id
        d.mkdir(parents=True, exist_ok=True)
        (d / STOPPED_FILE).write_text("stopped early by the scheduler")
        if last.get("mlflow_run_id"):  # its run is still RUNNING: it was handed over to the driver
            end_child(tracking_client(self.tracking_uri), last["mlflow_run_id"], "FINISHED", "stopped early by the scheduler",
                      only_running=True)


@contextlib.contextmanager
def interrupt_flag():
    """Ctrl-C during ``Tuner.fit`` (and SIGTERM, which :mod:`pipelines.raytools` routes to the SIGINT handler),
    remembered by the driver, then handed to Tune as SIGUSR1, which Tune's handler always listens to (it saves
    the experiment, stops the trials and returns from ``fit``); a second Ctrl-C raises KeyboardInterrupt.

    Tune's own answer cannot tell an interrupted sweep from a finished one: at the end of an interrupted ``fit``
    it marks the trials it stopped TERMINATED, so ``ResultGrid.num_terminated`` counts them as ended (a SIGTERM'd
    2-trial sweep once reported ``finished`` with exit 0)."""
    state = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def on_sigint(signum, frame):
        if state["interrupted"]:
            raise KeyboardInterrupt
        state["interrupted"] = True
        signal.raise_signal(signal.SIGUSR1)

    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT stays ours; Tune installs only its SIGUSR1 handler
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


def check_cluster(resources: dict) -> None:
    """One line if a trial asks for more CPUs or GPUs than the whole Ray cluster has."""
    import ray

    total = ray.cluster_resources()
    for k, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        if resources[k] > total.get(ray_key, 0):
            raise ConfigError(f"--resources {k}={resources[k]:g} per trial, but the Ray cluster has "
                              f"{total.get(ray_key, 0):g} {ray_key}s")


def new_tuner(cfg: SweepConfig, fn, space, objectives, sweep_dir: Path, ctx: dict, resources: dict,
              on_result: Callable[[str, dict], None] | None = None):
    """A new sweep's Tuner: seeded TPE in a ConcurrencyLimiter, the space's default points first, ASHA on
    forward passes for ``--scheduler asha``, retries, every checkpoint kept (tiny trajectories)."""
    import optuna
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    import search_spaces

    metric = [m for _, m, _ in objectives] if len(objectives) > 1 else objectives[0][1]
    mode = [d for _, _, d in objectives] if len(objectives) > 1 else objectives[0][2]
    searcher = OptunaSearch(space=functools.partial(search_spaces.sample, space), metric=metric, mode=mode,
                            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                            points_to_evaluate=search_spaces.to_points(space) or None,
                            study_name=sweep_name(cfg), storage=optuna_storage(cfg, sweep_dir, ray_backend=True))
    scheduler = None
    if cfg.scheduler == "asha":
        budget = planned_forward_passes(cfg, space)
        scheduler = ASHAScheduler(time_attr="forward_passes", metric=objectives[0][1], mode=objectives[0][2],
                                  max_t=4 * budget, grace_period=cfg.grace_period or max(1, budget // 10),
                                  reduction_factor=cfg.reduction_factor)
    return Tuner(
        fn,
        tune_config=TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent),
                               scheduler=scheduler, num_samples=cfg.trials, time_budget_s=cfg.time_budget_s,
                               trial_dirname_creator=trial_dirname, trial_name_creator=trial_name,
                               # CPU trials reuse worker processes (no re-import per trial); GPU
                               # trials get a fresh process each, so no memory is carried over
                               reuse_actors=resources["gpu"] == 0),
        run_config=RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None),  # tiny trajectories
                             callbacks=[SweepCallback(ctx["trials_dir"], ctx["tracking_uri"], on_result)]),
    )


def restore_tuner(sweep_dir: Path, fn, on_result: Callable[[str, dict], None] | None = None):
    """The sweep's Tuner from its experiment (``Tuner.restore``), with this driver's ``on_result``.

    ``Tuner.restore`` takes no RunConfig: the restored :class:`SweepCallback` comes from the pickled one, without
    its ``on_result``.  A caller's ``on_result`` is set on it through the Tuner's run config (Ray's private
    ``_local_tuner``), only when one is given."""
    from ray.tune import Tuner

    tuner = Tuner.restore(str(sweep_dir), fn, resume_unfinished=True, resume_errored=True)
    if on_result is not None:
        local = getattr(tuner, "_local_tuner", None)
        ours = [cb for cb in (local.get_run_config().callbacks or []) if isinstance(cb, SweepCallback)] \
            if local is not None else []
        if not ours:
            raise RuntimeError("on_result: the restored Ray Tune experiment's SweepCallback was not found (Ray "
                               "client mode, or a Ray that keeps its run config elsewhere)")
        for cb in ours:
            cb.on_result = on_result
    return tuner


def fit(cfg: SweepConfig, tuner):
    """``tuner.fit()`` under :func:`interrupt_flag`; returns (grid, interrupted): interrupted, or fewer trials
    ended than asked (unless the time budget ended the sweep)."""
    t_fit = time.monotonic()
    with interrupt_flag() as flag:
        grid = tuner.fit()
    budget_hit = cfg.time_budget_s is not None and time.monotonic() - t_fit >= cfg.time_budget_s
    return grid, flag["interrupted"] or (grid.num_terminated + grid.num_errors < cfg.trials and not budget_hit)


def collect_rows(grid, trials_dir: Path, interrupted: bool) -> tuple[list[dict], set[str], set[str]]:
    """The results rows of the grid's trials, and the ids of those that failed and those the scheduler
    stopped."""
    rows, errored, stopped = [], set(), set()
    for r in grid:
        m = dict(r.metrics or {})
        tid = Path(r.path).name
        if (trials_dir / tid / STOPPED_FILE).is_file():
            stopped.add(tid)
        if r.error is not None:
            status = "failed"
            errored.add(tid)
            m["error"] = f"{type(r.error).__name__}: {r.error}"
        elif m.get("done_training"):
            status = "finished"
        elif tid in stopped or not interrupted:
            status = "stopped_early"
        else:
            status = "interrupted"
        rows.append(make_row(tid, dict(r.config or {}), status, m, trials_dir / tid))
    return rows, errored, stopped


def run_ray(cfg: SweepConfig, space, resources, objectives, sweep_dir: Path, ctx: dict, resume: bool,
            callbacks: SweepCallbacks | None = None):
    """Tuner + OptunaSearch + ASHA; returns (rows, interrupted)."""
    from ray import tune

    callbacks = callbacks or SweepCallbacks()
    check_cluster(resources)
    trials_dir = Path(ctx["trials_dir"])
    # the trials' ctx goes to the workers (by value): after_step must pickle
    fn = tune.with_resources(
        tune.with_parameters(trainable, sweep=cfg.model_dump(),
                             ctx=ctx | {"resources": resources, "after_step": callbacks.after_step}),
        {"cpu": resources["cpu"], "gpu": resources["gpu"]})
    if resume:
        tuner = restore_tuner(sweep_dir, fn, callbacks.on_result)
    else:
        tuner = new_tuner(cfg, fn, space, objectives, sweep_dir, ctx, resources, callbacks.on_result)
    grid, interrupted = fit(cfg, tuner)
    rows, errored, stopped = collect_rows(grid, trials_dir, interrupted)

    def classify(run) -> tuple[str, str]:
        tid = run.data.tags.get("ray_trial_id", "")
        if tid in errored:
            return "FAILED", "trial failed after its retries (see the Ray trial error)"
        if tid in stopped:
            return "FINISHED", "stopped early by the scheduler"
        return "KILLED", resume_hint(cfg)

    reconcile_children(ctx["tracking_uri"], ctx["parent_run_id"], classify)
    return rows, interrupted
