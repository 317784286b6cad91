"""Recipe: a hyperparameter sweep over ZO fine-tunes (Ray Tune or plain Optuna), tracked in MLflow.

Reads top to bottom:

1. **Validate** everything before Ray starts: the sweep config, the search space
   (against the method's Config), resources, objectives, the fine-tune config of
   a default point (task, model, data), the sweep directory.
2. **Driver state**: ``<storage>/<name>/sweep.json`` and the MLflow experiment +
   parent run, created here (never by the trials); ``--resume`` reopens both.
3. **The objective core** :func:`run_trial`, shared by both backends: one call of
   :func:`pipelines.finetune.run` in the trial's own out_dir and child MLflow run
   (explicit tracking URI, metrics batched per evaluation), reporting dev
   accuracy/loss and forward passes at every evaluation.  A ZO run's checkpoint
   is its trajectory, so a retried, resumed or restored trial continues exactly,
   in the same MLflow run (its id is in the checkpoint's ``state.json``).
4. **Backends**.  Ray: ``Tuner`` + ``OptunaSearch`` (seeded TPE, the papers'
   defaults as ``points_to_evaluate``) in a ``ConcurrencyLimiter``, ASHA with
   forward passes as its time attribute, ``with_resources``, ``FailureConfig``
   retries, trajectories as Tune checkpoints, ``Tuner.restore`` for ``--resume``;
   ``RAY_ADDRESS`` set means a bare ``ray.init()`` (a cluster).  Optuna: a study
   on a journal file (or an RDB URL) with a successive-halving pruner, in-trial
   retries from the checkpoint, and resume of interrupted trials.
5. **Finish**: no child run is left RUNNING (stopped-early trials are marked so,
   interrupted ones KILLED until resumed); results table, best config, plots and
   parameter importances become parent-run artifacts; the summary names the best
   trial and the parent run.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from zoplatform.config import StrictModel, validate
from zoplatform.errors import ConfigError

# objective name -> (metric reported by a trial, direction)
OBJECTIVES = {
    "acc": ("best_dev_accuracy", "max"),
    "loss": ("dev_loss", "min"),
    "forward_passes": ("forward_passes", "min"),
}
# fine-tune options the sweep sets itself (not allowed in --set)
MANAGED = {"model", "task", "method", "steps", "seed", "out_dir", "resume", "tracking", "tracking_uri",
           "experiment", "run_name", "parent_run_id", "progress"}
STATE_FILES = ("state.json", "trajectory.jsonl")
RUN_ID_FILE = "mlflow_run_id"


class SweepConfig(StrictModel):
    """A sweep; validated before any backend starts."""

    method: str = "mezo"
    task: str = "sst2"
    model: str = Field("smollm2-135m", min_length=1)
    trials: int = Field(8, ge=1)
    steps: int = Field(500, ge=1)
    space: str | None = Field(None, description="space file, or a packaged space name; default: the method's")
    backend: Literal["ray", "optuna"] = "ray"
    scheduler: Literal["asha", "none"] = "asha"
    resources: str = Field("cpu=1", description="per trial, e.g. cpu=2,gpu=0.25")
    max_concurrent: int = Field(2, ge=1)
    storage: str = "sweeps"
    name: str | None = None
    tracking_uri: str | None = None
    experiment: str = "zo-sweep"
    objectives: list[str] = Field(default_factory=lambda: ["acc"], min_length=1)
    seed: int = Field(0, ge=0)
    max_failures: int = Field(2, ge=0)
    grace_period: int | None = Field(None, ge=1, description="ASHA's first rung, in forward passes")
    reduction_factor: float = Field(3.0, gt=1)
    time_budget_s: float | None = Field(None, gt=0)
    optuna_storage: str | None = Field(None, description="RDB URL or journal file; default: a journal file")
    finetune: dict[str, Any] = Field(default_factory=dict, description="other fine-tune options (batch_size, ...)")
    resume: bool = Field(False, description="continue the interrupted sweep storage/name")
    confirm_seeds: int | None = Field(None, ge=1, description="re-run the best and the default on N fresh seeds")
    confirm_top: int = Field(1, ge=1, description="how many of the best configurations to confirm")
    # testing hooks (not persisted): exercise retry and resume deterministically
    crash_after_steps: int | None = Field(None, ge=1, description="each trial raises once after N steps")
    interrupt_after_evals: int | None = Field(None, ge=1, description="interrupt the sweep (as Ctrl-C does) at "
                                                                        "the N-th evaluation any trial reports")


TESTING_HOOKS = ("crash_after_steps", "interrupt_after_evals")
NOT_PERSISTED = {*TESTING_HOOKS, "resume"}


# =========================================================================== 1. validation
def parse_resources(spec: str) -> dict[str, float]:
    """``cpu=2,gpu=0.25`` -> ``{"cpu": 2.0, "gpu": 0.25}`` (fractional GPUs must be 1/k)."""
    out: dict[str, float] = {}
    for item in [s for s in spec.split(",") if s.strip()]:
        if "=" not in item:
            raise ConfigError(f"--resources item {item!r} must look like cpu=N or gpu=N")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in ("cpu", "gpu"):
            raise ConfigError(f"--resources: unknown resource {k!r}; use cpu and gpu")
        try:
            x = float(v)
        except ValueError:
            raise ConfigError(f"--resources: {k}={v!r} is not a number") from None
        if not math.isfinite(x) or x < 0 or (k == "cpu" and x == 0):
            raise ConfigError(f"--resources: {k}={v} is invalid: cpu must be > 0, gpu >= 0")
        if k == "gpu" and 0 < x < 1 and abs(1 / x - round(1 / x)) > 1e-6:
            raise ConfigError(f"--resources: gpu={v} is not 1/k (0.5, 0.25, ...): Ray packs fractional GPUs "
                              f"correctly only for 1/k shares")
        if k == "gpu" and x > 1 and not x.is_integer():
            raise ConfigError(f"--resources: gpu={v} is invalid: more than one GPU must be a whole number")
        out[k] = x
    out.setdefault("cpu", 1.0)
    out.setdefault("gpu", 0.0)
    return out


def parse_objectives(names: list[str]) -> list[tuple[str, str, str]]:
    """``["acc", "forward_passes"]`` -> ``[(name, metric, mode), ...]``."""
    out = []
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"unknown objective {n!r}; choose from: {', '.join(OBJECTIVES)}")
        out.append((n, *OBJECTIVES[n]))
    if len({o[0] for o in out}) != len(out):
        raise ConfigError(f"objectives {','.join(names)} repeat a name")
    return out


def _default_name(method: str, task: str, model: str) -> str:
    return f"{method}-{task}-{model.replace('/', '_').replace(':', '_')}"


def sweep_name(cfg: SweepConfig) -> str:
    return cfg.name or _default_name(cfg.method, cfg.task, cfg.model)


def trial_finetune_config(cfg: SweepConfig, params: dict[str, Any], *, out_dir: Path, resume: bool,
                          run_name: str, tracking_uri: str | None, parent_run_id: str | None):
    """The fine-tune config of one trial: sweep-level options + sampled params
    (fine-tune fields at top level, the rest as method options)."""
    from pipelines.finetune import FinetuneConfig, load_config

    data: dict[str, Any] = dict(cfg.finetune)
    if parse_resources(cfg.resources)["gpu"] > 0:
        data.setdefault("device", "cuda")
    data.update(model=cfg.model, task=cfg.task, method=cfg.method, steps=cfg.steps, seed=cfg.seed,
                progress=False, tracking=True, tracking_uri=tracking_uri, experiment=cfg.experiment,
                parent_run_id=parent_run_id, run_name=run_name, out_dir=str(out_dir), resume=resume)
    options = dict(data.get("method_options") or {})
    for k, v in params.items():
        if k in FinetuneConfig.model_fields:
            data[k] = v
        else:
            options[k] = v
    data["method_options"] = options
    return load_config(None, data)


def check_inputs(cfg: SweepConfig):
    """Everything that can be wrong with the input, checked without starting Ray
    or loading a model.  Returns (space, resources, objectives, sweep_dir)."""
    import search_spaces
    import zoplatform
    from pipelines.finetune import FinetuneConfig
    from pipelines.finetune import check_inputs as check_finetune

    zoplatform.get_method(cfg.method)  # unknown method: the registry's message
    space = search_spaces.load_space(cfg.space or cfg.method)
    if space.method != cfg.method:
        raise ConfigError(f"search space {space.source} is for method {space.method!r}, not --method {cfg.method!r}")
    resources = parse_resources(cfg.resources)
    objectives = parse_objectives(cfg.objectives)
    if len(objectives) > 1 and cfg.scheduler == "asha":
        raise ConfigError("multi-objective sweeps cannot use --scheduler asha: a stopped trial would report a "
                          "truncated cost and land on the Pareto front; use --scheduler none")
    bad = sorted(set(cfg.finetune) & MANAGED)
    if bad:
        raise ConfigError(f"fine-tune option {bad[0]!r} is set by the sweep itself; use the sweep's own option")
    unknown = sorted(set(cfg.finetune) - set(FinetuneConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown fine-tune option {unknown[0]!r}")
    if cfg.crash_after_steps and cfg.crash_after_steps >= cfg.steps:
        raise ConfigError(f"crash_after_steps={cfg.crash_after_steps} must be below steps={cfg.steps}")
    # a trial's full config at the first default point: task, model spec, data, method
    point = search_spaces.to_points(space)[0] if space.defaults else {}
    fixed = {p.name: p.value for p in space.params if p.dist == "fixed"}
    ft = trial_finetune_config(cfg, fixed | point, out_dir=Path("unused"), resume=False, run_name="check",
                               tracking_uri=None, parent_run_id=None)
    check_finetune(ft)
    from pipelines.confirm import check as check_confirm

    check_confirm(cfg, space)
    return space, resources, objectives, Path(cfg.storage).resolve() / sweep_name(cfg)


# =========================================================================== 2. driver state
def load_for_resume(storage: str, name: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The saved config of an interrupted sweep, checked against the options given now."""
    root = Path(storage).resolve()
    if name is None and any(k in given for k in ("method", "task", "model")):
        f = SweepConfig.model_fields
        name = _default_name(*(given.get(k, f[k].default) for k in ("method", "task", "model")))
    if name is None:
        found = sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.is_dir() else []
        if len(found) != 1:
            raise ConfigError(f"--resume: pass --name (sweeps in {root}: {', '.join(found) or 'none'})")
        name = found[0]
    path = root / name / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"--resume: no sweep {name!r} in {root} (no {path})")
    saved = json.loads(path.read_text())["config"]
    for k, v in given.items():
        if v is None or k in NOT_PERSISTED or k in ("storage", "name"):
            continue
        if k == "finetune":
            v = {**saved.get("finetune", {}), **v}
        if saved.get(k) != v and not (isinstance(v, float) and saved.get(k) == v):
            raise ConfigError(f"--resume: {k}={v!r} differs from the interrupted sweep's {k}={saved.get(k)!r}; "
                              f"a resume continues the sweep as it was defined")
    return saved | {"storage": str(root), "name": name} | {k: given[k] for k in TESTING_HOOKS if given.get(k)}


def _client(uri: str):
    from zoplatform.tracking.mlflow import open_client

    return open_client(uri)


# =========================================================================== 3. the objective core
def _trial_tracker(**kw):
    """An MLflow tracker for one trial's child run (see :class:`_TrialTracker`)."""
    from zoplatform.tracking.mlflow import MlflowTracker

    class _TrialTracker(MlflowTracker):
        """Flushes only at evaluations (when the checkpoint is written), so the
        metrics in MLflow never run ahead of the checkpoint: a failed attempt
        drops what it logged since, and its retry logs those steps once.  Writes
        the run id next to the checkpoint as soon as the run exists.

        ``handed_over``: the backend stopped this trial from outside (Ray's
        scheduler, or an interrupted sweep stopping its trials: the trial cannot
        tell which), so the run is left for the driver to end, which knows."""

        def __init__(self, *, out_dir: Path, tags: dict[str, str], **kw):
            super().__init__(flush_every=10**9, **kw)
            self.out_dir, self.extra_tags, self.stopped_early = out_dir, tags, None
            self.handed_over = False

        def start(self, params, tags=None):
            resumed = self.run_id is not None
            super().start(params, {**(tags or {}), **self.extra_tags})
            (self.out_dir / RUN_ID_FILE).write_text(self.run_id)
            if resumed:  # the previous attempt's end reason no longer applies
                try:
                    self.client.delete_tag(self.run_id, "zo.end_reason")
                except Exception:  # noqa: BLE001 - no such tag
                    pass

        def end(self, status="FINISHED", reason=None, clear_reason=False):
            if self.handed_over:  # metrics past the last checkpoint are logged again by a resumed attempt
                self._buf.clear()
                self.stop_monitor()
                return
            if self.stopped_early:
                self.set_tags({"zo.stopped_early": "true"})
                status, reason = "FINISHED", self.stopped_early
            elif status == "FAILED":
                self._buf.clear()
            super().end(status, reason, clear_reason=clear_reason)

    return _TrialTracker(**kw)


def run_trial(cfg: SweepConfig, params: dict[str, Any], out_dir: Path, *, trial_key: str, tracking_uri: str,
              parent_run_id: str, report: Callable[[dict], bool], extra_tags: dict[str, str] | None = None) -> dict:
    """One trial = one fine-tune in ``out_dir`` logged to a child run of the sweep.

    ``report(metrics)`` is called after every dev evaluation (and its checkpoint)
    with dev accuracy/loss, the best dev accuracy so far and the forward passes;
    returning True ends training early (a pruned trial still finishes its run).
    If ``out_dir`` holds a checkpoint the trial resumes from it, in the same run.
    """
    from pipelines.finetune import run

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = json.loads((out_dir / "state.json").read_text()) if (out_dir / "state.json").is_file() else None
    run_id = (saved or {}).get("run_id")
    if run_id is None and (out_dir / RUN_ID_FILE).is_file():  # failed before its first checkpoint
        run_id = (out_dir / RUN_ID_FILE).read_text().strip() or None
    run_name = f"{sweep_name(cfg)}-{trial_key}"
    ft = trial_finetune_config(cfg, params, out_dir=out_dir, resume=saved is not None, run_name=run_name,
                               tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    tracker = _trial_tracker(out_dir=out_dir, tracking_uri=tracking_uri, experiment=cfg.experiment,
                             run_name=run_name, parent_run_id=parent_run_id, run_id=run_id,
                             tags={"zo.kind": "sweep-trial", "zo.sweep": sweep_name(cfg), "zo.trial": trial_key,
                                   **(extra_tags or {})})
    stop, steps_here = False, 0

    def on_eval(step, m, history):
        nonlocal stop
        metrics = {"step": step, "dev_accuracy": m["dev_accuracy"], "dev_loss": m["dev_loss"],
                   "best_dev_accuracy": history.best_dev_accuracy, "forward_passes": m["forwards"],
                   "mlflow_run_id": tracker.run_id, "trial_dir": str(out_dir)}
        try:
            stop = bool(report(metrics)) or stop
        except SystemExit:  # Ray stopped the trial: its scheduler, or the sweep being interrupted
            tracker.handed_over = True  # the driver ends the run FINISHED or KILLED (see _SweepCallback)
            raise
        if stop:
            tracker.stopped_early = f"stopped early (pruned) at {m['forwards']} forward passes"

    def should_stop():
        nonlocal steps_here
        steps_here += 1
        marker = out_dir / ".crashed_once"
        if cfg.crash_after_steps and steps_here == cfg.crash_after_steps and not marker.exists():
            marker.touch()
            raise RuntimeError(f"simulated crash after {steps_here} steps (crash_after_steps, a testing hook)")
        return stop

    summary = run(ft, tracker=tracker, on_eval=on_eval, should_stop=should_stop)
    summary["stopped_early"] = stop
    return summary


def _progress(d: Path) -> int:
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


# =========================================================================== 4a. Ray backend
_SESSIONS: dict[str, dict] = {}  # per sweep dir: what this driver process saw end (filled by _SweepCallback)


def _ray_trainable(config: dict, sweep: dict, ctx: dict):
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
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        return False  # Ray's scheduler stops trials itself

    try:
        s = run_trial(cfg, dict(config), out_dir, trial_key=trial_id, tracking_uri=ctx["tracking_uri"],
                      parent_run_id=ctx["parent_run_id"], report=report_with_checkpoint,
                      extra_tags={"ray_trial_id": trial_id})
        report_with_checkpoint({"best_dev_accuracy": s["best_dev_accuracy"],
                                "dev_loss": s["final_dev_loss"], "forward_passes": s["forward_passes"],
                                "test_accuracy": s["test_accuracy"], "done_training": 1,
                                "mlflow_run_id": s["mlflow_run_id"], "trial_dir": str(out_dir)})
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _ray_callback(key: str, tracking_uri: str):
    from ray.tune import Callback

    class _SweepCallback(Callback):
        """Records which trials ended how in this driver session (for the MLflow
        reconciliation), ends the run of a trial the scheduler stopped, and
        implements the interrupt testing hook."""

        def __init__(self, key, tracking_uri):
            self.key, self.tracking_uri = key, tracking_uri

        def _session(self):
            # looked up at call time: a restored experiment unpickles this class by value
            import importlib

            sessions = importlib.import_module("pipelines.sweep")._SESSIONS
            return sessions.setdefault(self.key, {"completed": set(), "errored": set(), "interrupt_after": None,
                                                  "results": 0})

        def on_trial_result(self, iteration, trials, trial, result, **info):
            s = self._session()
            s["results"] += 1
            n = s["interrupt_after"]
            if n and s["results"] == n and callable(signal.getsignal(signal.SIGUSR1)):
                # what Ctrl-C does: Tune's handler saves the experiment state and ends fit()
                signal.raise_signal(signal.SIGUSR1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._session()["completed"].add(trial.trial_id)
            run_id = (trial.last_result or {}).get("mlflow_run_id")
            if run_id:  # a trial that finished training has ended its run itself; one stopped is still RUNNING
                end_child(_client(self.tracking_uri), run_id, "FINISHED", "stopped early by the scheduler",
                          only_running=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._session()["errored"].add(trial.trial_id)

    return _SweepCallback(key, tracking_uri)


def _ray_connect() -> bool:
    """Connect to ``RAY_ADDRESS`` (bare ``ray.init()``) or start a local Ray sized to
    the machine.  Returns whether this call started it (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False)
    return True


def run_ray(cfg: SweepConfig, space, resources, objectives, sweep_dir: Path, ctx: dict, resume: bool):
    """Tuner + OptunaSearch + ASHA; returns (rows, interrupted)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    import search_spaces

    total = ray.cluster_resources()
    for k, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        if resources[k] > total.get(ray_key, 0):
            raise ConfigError(f"--resources {k}={resources[k]:g} per trial, but the Ray cluster has "
                              f"{total.get(ray_key, 0):g} {ray_key}s")
    key = str(sweep_dir)
    _SESSIONS[key] = {"completed": set(), "errored": set(), "interrupt_after": cfg.interrupt_after_evals,
                      "results": 0}
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trainable, sweep=cfg.model_dump(exclude={"interrupt_after_evals"}),
                             ctx=ctx | {"resources": resources}),
        {"cpu": resources["cpu"], "gpu": resources["gpu"]})

    if resume:
        tuner = Tuner.restore(str(sweep_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        metric = [m for _, m, _ in objectives] if len(objectives) > 1 else objectives[0][1]
        mode = [d for _, _, d in objectives] if len(objectives) > 1 else objectives[0][2]
        searcher = OptunaSearch(space=functools.partial(search_spaces.sample, space), metric=metric, mode=mode,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                points_to_evaluate=search_spaces.to_points(space) or None,
                                study_name=sweep_name(cfg), storage=_optuna_storage(cfg, sweep_dir, ray_backend=True))
        scheduler = None
        if cfg.scheduler == "asha":
            budget = planned_forward_passes(cfg, space)
            scheduler = ASHAScheduler(time_attr="forward_passes", metric=objectives[0][1], mode=objectives[0][2],
                                      max_t=4 * budget, grace_period=cfg.grace_period or max(1, budget // 10),
                                      reduction_factor=cfg.reduction_factor)
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent),
                                   scheduler=scheduler, num_samples=cfg.trials, time_budget_s=cfg.time_budget_s,
                                   trial_dirname_creator=_trial_dirname,
                                   # CPU trials reuse worker processes (no re-import per trial); GPU
                                   # trials get a fresh process each, so no memory is carried over
                                   reuse_actors=resources["gpu"] == 0),
            run_config=RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),  # tiny trajectories
                                 callbacks=[_ray_callback(key, ctx["tracking_uri"])]),
        )
    t_fit = time.monotonic()
    grid = tuner.fit()
    session = _SESSIONS.pop(key)
    # fewer trials ended than asked: interrupted, unless the time budget ended the sweep
    budget_hit = cfg.time_budget_s is not None and time.monotonic() - t_fit >= cfg.time_budget_s
    interrupted = grid.num_terminated + grid.num_errors < cfg.trials and not budget_hit
    rows = []
    for r in grid:
        m = dict(r.metrics or {})
        tid = Path(r.path).name
        if r.error is not None:
            status = "failed"
        elif m.get("done_training"):
            status = "finished"
        elif tid in session["completed"] or not interrupted:
            status = "stopped_early"
        else:
            status = "interrupted"
        rows.append(_row(tid, dict(r.config or {}), status, m, Path(ctx["trials_dir"]) / tid))

    def classify(run) -> tuple[str, str]:
        tid = run.data.tags.get("ray_trial_id", "")
        if tid in session["errored"]:
            return "FAILED", "trial failed after its retries (see the Ray trial error)"
        if tid in session["completed"]:
            return "FINISHED", "stopped early by the scheduler"
        return "KILLED", _resume_hint(cfg)

    reconcile_children(ctx["tracking_uri"], ctx["parent_run_id"], classify)
    return rows, interrupted


def planned_forward_passes(cfg: SweepConfig, space) -> int:
    """Training forward passes of a full trial at the first default point (ASHA's scale)."""
    import search_spaces
    import zoplatform

    point = search_spaces.to_points(space)[0] if space.defaults else {}
    method = zoplatform.make(cfg.method, **search_spaces.method_params(space, point))
    return max(1, cfg.steps * int(method.forwards_per_step))


# =========================================================================== 4b. Optuna backend
def _optuna_storage(cfg: SweepConfig, sweep_dir: Path, ray_backend: bool = False):
    """An RDB URL, a journal file, or (Optuna backend default) a journal in the sweep dir."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    url = cfg.optuna_storage
    if url is None:
        if ray_backend:
            return None  # the searcher's state is saved with the Tune experiment
        return JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    if "://" in url:
        return RDBStorage(url, heartbeat_interval=60)
    return JournalStorage(JournalFileBackend(str(Path(url).resolve())))


def run_optuna(cfg: SweepConfig, space, objectives, sweep_dir: Path, ctx: dict, resume: bool):
    """A study on one machine (threads for concurrency); returns (rows, interrupted)."""
    import optuna
    from optuna.trial import TrialState

    import search_spaces

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = len(objectives) > 1
    pruner = optuna.pruners.NopPruner()
    if cfg.scheduler == "asha":
        budget = planned_forward_passes(cfg, space)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.grace_period or max(1, budget // 10),
                                                        reduction_factor=max(2, int(cfg.reduction_factor)))
    study = optuna.create_study(study_name=sweep_name(cfg), storage=_optuna_storage(cfg, sweep_dir),
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=pruner,
                                load_if_exists=True, directions=["maximize" if d == "max" else "minimize"
                                                                 for _, _, d in objectives])
    trials_dir = Path(ctx["trials_dir"])

    # which trials are done, and which were cut off and continue in their own out_dir
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        latest[t.user_attrs.get("trial_key", str(t.number))] = t  # trials come in number order
    done = 0
    for k, t in latest.items():
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or "error" in t.user_attrs:
            done += 1
        elif t.state in (TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING):
            if t.state == TrialState.RUNNING:  # its process died: close it, then continue it
                study.tell(t.number, state=TrialState.FAIL)
            if t.state != TrialState.WAITING:
                study.enqueue_trial(t.params, user_attrs={"trial_key": k})
    if not study.trials:
        for p in search_spaces.to_points(space):
            study.enqueue_trial(p)

    evals = {"n": 0}

    def objective(trial):
        params = search_spaces.sample(space, trial)
        key = trial.user_attrs.get("trial_key") or f"{trial.number:04d}"
        trial.set_user_attr("trial_key", key)
        out_dir = trials_dir / key

        def report(metrics):
            evals["n"] += 1
            if cfg.interrupt_after_evals and evals["n"] == cfg.interrupt_after_evals:
                raise KeyboardInterrupt  # testing hook: what Ctrl-C does, mid-trial
            trial.set_user_attr("trial_dir", metrics["trial_dir"])
            trial.set_user_attr("mlflow_run_id", metrics["mlflow_run_id"])
            if multi:
                return False  # Optuna cannot prune multi-objective studies
            trial.report(metrics[objectives[0][1]], step=int(metrics["forward_passes"]))
            return trial.should_prune()

        for attempt in range(cfg.max_failures + 1):  # retries continue from the checkpoint
            try:
                s = run_trial(cfg, params, out_dir, trial_key=key, tracking_uri=ctx["tracking_uri"],
                              parent_run_id=ctx["parent_run_id"], report=report,
                              extra_tags={"optuna_trial": str(trial.number)})
                break
            except Exception as e:  # retried, then recorded as the trial's error
                if attempt == cfg.max_failures:
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
                    raise
        final = {"best_dev_accuracy": s["best_dev_accuracy"], "dev_loss": s["final_dev_loss"],
                 "forward_passes": s["forward_passes"], "test_accuracy": s["test_accuracy"]}
        for k, v in final.items():
            trial.set_user_attr(k, v)
        if s["stopped_early"]:
            trial.set_user_attr("stopped_early", True)
            raise optuna.TrialPruned()
        vals = [final[m] for _, m, _ in objectives]
        return vals if multi else vals[0]

    if cfg.max_concurrent > 1:  # transformers' lazy attributes are not thread-safe: resolve them first
        import transformers

        for n in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                  "PreTrainedTokenizerFast"):
            getattr(transformers, n)
    remaining = max(0, cfg.trials - done)
    interrupted = False
    try:
        study.optimize(objective, n_trials=remaining, n_jobs=cfg.max_concurrent, catch=(Exception,),
                       gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True

    rows = []
    latest = {}
    for t in study.get_trials(deepcopy=False):
        latest[t.user_attrs.get("trial_key", f"{t.number:04d}")] = t
    finished = 0
    for k, t in latest.items():
        ua = t.user_attrs
        if t.state == TrialState.COMPLETE:
            status = "finished"
        elif t.state == TrialState.PRUNED:
            status = "stopped_early"
        elif "error" in ua:
            status = "failed"
        else:
            status = "interrupted"
        finished += status != "interrupted"
        rows.append(_row(k, dict(t.params), status, dict(ua), trials_dir / k))
    interrupted = interrupted or finished < cfg.trials
    reconcile_children(ctx["tracking_uri"], ctx["parent_run_id"], lambda run: ("KILLED", _resume_hint(cfg)))
    return rows, interrupted


# =========================================================================== 5. finish
def _resume_hint(cfg: SweepConfig) -> str:
    return f"sweep interrupted; continue with: zo sweep --resume --storage {cfg.storage} --name {sweep_name(cfg)}"


def reconcile_children(uri: str, parent_run_id: str, classify: Callable[[Any], tuple[str, str]]) -> int:
    """End every child run still RUNNING (a trial process that was stopped or
    killed cannot end its own run); returns how many were ended."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                            f"and attributes.status = 'RUNNING'", max_results=10000)
    for run in runs:
        end_child(client, run.info.run_id, *classify(run))
    return len(runs)


def end_child(client, run_id: str, status: str, reason: str, only_running: bool = False) -> None:
    """End a trial's run from the driver (FINISHED here means stopped early)."""
    if only_running and client.get_run(run_id).info.status != "RUNNING":
        return
    client.set_tag(run_id, "zo.end_reason", reason)
    if status == "FINISHED":
        client.set_tag(run_id, "zo.stopped_early", "true")
    client.set_terminated(run_id, status=status)


def _curve(trial_dir: Path) -> list[tuple[int, float]]:
    try:
        evals = json.loads((trial_dir / "state.json").read_text())["history"]["evals"]
        return [(int(e["forwards"]), float(e["dev_accuracy"])) for e in evals]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _row(key: str, params: dict, status: str, m: dict, trial_dir: Path) -> dict:
    def num(k):
        v = m.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    curve = _curve(trial_dir)
    fp = num("forward_passes")
    if fp is None and curve:
        fp = float(curve[-1][0])
    return {"trial": key, "status": status, "params": params,
            "best_dev_accuracy": num("best_dev_accuracy"), "dev_loss": num("dev_loss"),
            "forward_passes": fp, "test_accuracy": num("test_accuracy"),
            "mlflow_run_id": m.get("mlflow_run_id"), "trial_dir": str(trial_dir), "curve": curve}


def pareto_front(rows: list[dict], objectives) -> list[dict]:
    """Rows not dominated on every objective (rows missing a value are skipped)."""
    cand = [r for r in rows if all(r.get(m) is not None for _, m, _ in objectives)]

    def better_eq(a, b):
        return all((a[m] >= b[m]) if d == "max" else (a[m] <= b[m]) for _, m, d in objectives)

    return [r for r in cand if not any(better_eq(o, r) and any(o[m] != r[m] for _, m, _ in objectives)
                                       for o in cand if o is not r)]


def pick_best(rows: list[dict], objectives) -> dict | None:
    """The best trial on the first objective (ties: fewer forward passes); for
    several objectives, the Pareto-front member best on the first."""
    pool = pareto_front(rows, objectives) if len(objectives) > 1 else rows
    _, metric, mode = objectives[0]
    pool = [r for r in pool if r.get(metric) is not None and r["status"] != "failed"]
    if not pool:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(pool, key=lambda r: (sign * r[metric], -(r["forward_passes"] or 0.0)))


def write_table(rows: list[dict], space, path: Path) -> Path:
    cols = ["trial", "status", *space.names, "best_dev_accuracy", "dev_loss", "forward_passes", "test_accuracy",
            "mlflow_run_id"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r["trial"], r["status"], *[r["params"].get(n, "") for n in space.names],
                        *[("" if r[c] is None else r[c]) for c in cols[2 + len(space.names):]]])
    return path


class _Replay:
    """A stand-in trial for :func:`search_spaces.sample` that returns known values
    and records Optuna distributions, so finished rows become Optuna trials."""

    def __init__(self, values: dict):
        import optuna.distributions as D

        self.D, self.values, self.dists = D, values, {}

    def suggest_float(self, name, low, high, log=False, step=None):
        self.dists[name] = self.D.FloatDistribution(low, high, log=log, step=step)
        return self.values[name]

    def suggest_int(self, name, low, high, log=False, step=1):
        self.dists[name] = self.D.IntDistribution(low, high, log=log, step=step)
        return self.values[name]

    def suggest_categorical(self, name, choices):
        self.dists[name] = self.D.CategoricalDistribution(choices)
        return self.values[name]


def importances(rows: list[dict], space, objectives) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) of the first objective over the rows."""
    import optuna

    import search_spaces

    _, metric, mode = objectives[0]
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for r in rows:
        if r.get(metric) is None or r["status"] == "failed":
            continue
        rep = _Replay(r["params"])
        try:
            search_spaces.sample(space, rep)
        except KeyError:
            continue
        study.add_trial(optuna.trial.create_trial(params={k: r["params"][k] for k in rep.dists},
                                                  distributions=rep.dists, value=r[metric]))
    if len(study.trials) < 2:
        return {}
    return dict(optuna.importance.get_param_importances(study))


def make_plots(rows: list[dict], objectives, imps: dict[str, float], out: Path) -> list[Path]:
    """Objective vs trial, accuracy vs forward passes (with the Pareto front), importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    name, metric, mode = objectives[0]
    xs = [(i, r[metric]) for i, r in enumerate(rows) if r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if xs:
        i, v = zip(*xs)
        ax.scatter(i, v, c=["C0" if rows[k]["status"] == "finished" else "C1" for k in i])
        best = [max(v[: j + 1]) if mode == "max" else min(v[: j + 1]) for j in range(len(v))]
        ax.step(i, best, where="post", color="C2", label="best so far")
        ax.legend()
    ax.set_xlabel("trial (orange: stopped early / pruned)"), ax.set_ylabel(metric), ax.set_title(f"{name} vs trial")
    fig.tight_layout()
    paths.append(out / "objective_vs_trial.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        if r["curve"]:
            f, a = zip(*r["curve"])
            ax.plot(f, a, "-", lw=0.8, alpha=0.6)
    acc_fp = [("acc", "best_dev_accuracy", "max"), ("forward_passes", "forward_passes", "min")]
    front = sorted(pareto_front(rows, acc_fp), key=lambda r: r["forward_passes"])
    if front:
        ax.plot([r["forward_passes"] for r in front], [r["best_dev_accuracy"] for r in front], "k*--", ms=9,
                label="Pareto front (best dev acc, forward passes)")
        ax.legend(fontsize=8)
    ax.set_xlabel("forward passes"), ax.set_ylabel("dev accuracy"), ax.set_title("accuracy vs forward passes")
    fig.tight_layout()
    paths.append(out / "accuracy_vs_forward_passes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if imps:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(imps)))
        names = list(imps)[::-1]
        ax.barh(names, [imps[n] for n in names])
        ax.set_xlabel(f"importance for {metric} (Optuna, PED-ANOVA)"), ax.set_title("parameter importances")
        fig.tight_layout()
        paths.append(out / "param_importances.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# =========================================================================== the recipe
def run(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a sweep; returns the JSON summary."""
    from zoplatform.tracking import ending
    from zoplatform.tracking.mlflow import MlflowTracker, resolve_tracking_uri

    t0 = time.perf_counter()
    # 1. validate: nothing below starts before this passes -----------------------
    space, resources, objectives, sweep_dir = check_inputs(cfg)
    state_path = sweep_dir / "sweep.json"
    resume = cfg.resume
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep {sweep_dir.name!r} in {sweep_dir.parent} (no {state_path})")
    if not resume and state_path.is_file():
        raise ConfigError(f"sweep {sweep_dir.name!r} already exists in {sweep_dir.parent}; pass --resume to "
                          f"continue it, or --name for a new sweep")
    if resume and cfg.backend == "ray" and not (sweep_dir / "tuner.pkl").is_file():
        raise ConfigError(f"--resume: {sweep_dir} holds no Ray Tune experiment to restore; start a new sweep "
                          f"with another --name")
    from zoplatform.models import PACKAGED, prepare_packaged

    if cfg.model in PACKAGED:  # once on the driver, not by every trial at the same time
        prepare_packaged(cfg.model)
    uri = resolve_tracking_uri(cfg.tracking_uri)

    # 2. driver state: sweep dir, MLflow experiment and parent run ----------------
    saved = json.loads(state_path.read_text()) if resume else {}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parent = MlflowTracker(tracking_uri=uri, experiment=cfg.experiment, run_name=sweep_dir.name,
                           run_id=saved.get("parent_run_id"), system_metrics=False)
    persisted = cfg.model_dump(exclude=NOT_PERSISTED)
    parent.start({**persisted, "space": space.raw, "space_source": space.source},
                 tags={"zo.kind": "sweep", "zo.sweep": sweep_dir.name, "backend": cfg.backend,
                       "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task, "model": cfg.model,
                       "objectives": ",".join(cfg.objectives)})
    if not resume:
        state_path.write_text(json.dumps({"config": persisted, "parent_run_id": parent.run_id,
                                          "tracking_uri": uri, "created": time.time()}, indent=1, default=str))
    else:
        parent.set_tags({"zo.resumed": str(int(time.time()))})
    ctx = {"tracking_uri": uri, "parent_run_id": parent.run_id, "trials_dir": str(sweep_dir / "trials")}

    started_ray = False
    try:
        with ending(parent, _resume_hint(cfg)) as run_end:
            # 3-4. the trials, on one backend --------------------------------------
            if cfg.backend == "ray":
                started_ray = _ray_connect()
                rows, interrupted = run_ray(cfg, space, resources, objectives, sweep_dir, ctx, resume)
            else:
                rows, interrupted = run_optuna(cfg, space, objectives, sweep_dir, ctx, resume)

            # 5. results: table, best config, plots, importances -> parent-run artifacts
            out = sweep_dir / "results"
            out.mkdir(exist_ok=True)
            best = pick_best(rows, objectives)
            front = pareto_front(rows, objectives) if len(objectives) > 1 else []
            try:
                imps = importances(rows, space, objectives)
            except Exception as e:  # noqa: BLE001 - too few or constant trials: no importances, say why
                imps = {}
                parent.set_tags({"zo.importances": f"not computed: {type(e).__name__}: {e}"[:500]})
            files = [write_table(rows, space, out / "results.csv")]
            (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1))
            files.append(out / "results.json")
            if best is not None:
                ft = trial_finetune_config(cfg, best["params"], out_dir=Path(best["trial_dir"]), resume=False,
                                           run_name=f"{sweep_dir.name}-best", tracking_uri=None, parent_run_id=None)
                best_cfg = ft.model_dump(exclude={"out_dir", "resume", "tracking_uri", "parent_run_id", "run_name",
                                                  "progress", "tracking"})
                import yaml

                (out / "best_config.yaml").write_text(
                    f"# best trial {best['trial']} of sweep {sweep_dir.name}: zo finetune --config best_config.yaml\n"
                    + yaml.safe_dump(best_cfg, sort_keys=False))
                files.append(out / "best_config.yaml")
            files += make_plots(rows, objectives, imps, out)
            confirmed = None
            if cfg.confirm_seeds and not interrupted:  # did tuning help? pipelines/confirm.py
                from pipelines.confirm import confirm

                confirmed = confirm(cfg, space, rows, objectives, sweep_dir, parent, uri)
            for f in files:
                parent.log_artifact(f)
            counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped_early", "failed",
                                                                         "interrupted")}
            metrics = {f"trials_{k}": v for k, v in counts.items()}
            if best is not None:
                metrics |= {f"best_{m}": best[m] for _, m, _ in objectives if best.get(m) is not None}
                if best.get("test_accuracy") is not None:
                    metrics["best_test_accuracy"] = best["test_accuracy"]
            parent.log_metrics(metrics, 0)
            if interrupted:
                run_end.status, run_end.reason = "KILLED", _resume_hint(cfg)

            def public(r):
                return None if r is None else {k: v for k, v in r.items() if k != "curve"}

            return {
                "sweep": sweep_dir.name, "status": "interrupted" if interrupted else "finished",
                "backend": cfg.backend, "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task,
                "model": cfg.model, "trials": cfg.trials, "counts": counts,
                "objectives": [{"name": n, "metric": m, "mode": d} for n, m, d in objectives],
                "best": public(best), "pareto": [public(r) for r in front], "importances": imps,
                "parent_run_id": parent.run_id, "experiment": cfg.experiment, "tracking_uri": uri,
                "storage": str(sweep_dir), "artifacts": [str(f) for f in files],
                "wall_time_s": round(time.perf_counter() - t0, 2),
                **({"resume_with": run_end.reason} if interrupted else {}),
                **({"confirm": confirmed} if confirmed else {}),
            }
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def load_sweep_config(data: dict[str, Any]) -> SweepConfig:
    """CLI values (None = not given) -> a validated config; with ``resume``, the
    saved config of the sweep in ``storage``/``name``, checked against the values given."""
    given = {k: v for k, v in data.items() if v is not None and v != {}}
    if given.get("resume"):
        given = load_for_resume(given.get("storage", "sweeps"), given.get("name"), given) | {"resume": True}
    return validate(SweepConfig, given, "sweep config")


# =========================================================================== benchmark
def sweep_overhead(model: str = "tiny:llama", task: str = "sst2", method: str = "mezo", trials: int = 4,
                   steps: int = 4, data_dir: str | None = None) -> dict[str, Any]:
    """Wall time of ``trials`` short trials through Ray Tune against the same
    trials run directly through the objective core, in one run.

    Both sides run the trials one at a time (Ray: ``max_concurrent_trials=1``, no
    search or scheduler, one CPU per trial, worker processes reused as ``zo sweep``
    does for CPU trials; direct: one torch thread), with the
    paper-default config of the method, logging to the same temporary SQLite
    MLflow store.  ``ratio`` excludes Ray's start-up; ``ratio_with_init`` includes it.
    """
    import torch
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner

    import search_spaces
    from zoplatform.tracking.mlflow import MlflowTracker

    tmp = Path(tempfile.mkdtemp(prefix="zo-sweep-overhead-"))
    ft = {"num_train": 32, "num_dev": 16, "num_test": 16, "batch_size": 8, "eval_every": steps,
          "zero_shot": False} | ({"data_dir": data_dir} if data_dir else {})
    cfg = SweepConfig(method=method, task=task, model=model, trials=trials, steps=steps, scheduler="none",
                      max_concurrent=1, max_failures=0, storage=str(tmp), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                      finetune=ft)
    space, resources, objectives, sweep_dir = check_inputs(cfg)
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
        started = _ray_connect()
        init_s = time.perf_counter() - t
        try:
            ctx = {"tracking_uri": uri, "parent_run_id": parent.run_id, "trials_dir": str(tmp / "ray"),
                   "resources": {"cpu": 1.0, "gpu": 0.0}}
            trainable = tune.with_resources(tune.with_parameters(_ray_trainable, sweep=cfg.model_dump(), ctx=ctx),
                                            {"cpu": 1})
            t = time.perf_counter()
            grid = Tuner(trainable, param_space=dict(params),
                         tune_config=TuneConfig(num_samples=trials, max_concurrent_trials=1,
                                                trial_dirname_creator=_trial_dirname,
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
