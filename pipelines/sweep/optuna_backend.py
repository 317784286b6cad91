"""Optuna backend (one machine, no Ray): a study on a journal file (or an RDB URL) with a successive-halving
pruner, ``--max-concurrent`` threads, in-trial retries from the checkpoint, and resume of interrupted trials
(each continues in its own out_dir and MLflow run)."""
from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .callbacks import SweepCallbacks
from .config import SweepConfig, planned_forward_passes, resume_hint, sweep_name
from .results import make_row, reconcile_children
from .trial import run_trial


def optuna_storage(cfg: SweepConfig, sweep_dir: Path, ray_backend: bool = False):
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


@contextlib.contextmanager
def interrupt_event():
    """Ctrl-C or SIGTERM during ``study.optimize``: the trials run in worker threads (``--max-concurrent`` > 1),
    which no signal reaches, and Optuna's thread pool would wait for them to run to the end.  So the signal sets an
    event that every running trial checks after each step (it then ends as Ctrl-C ends it: checkpoint, run KILLED,
    resumable with ``--resume``) and the driver returns promptly; a second Ctrl-C raises KeyboardInterrupt at once."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def on_signal(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def create_study(cfg: SweepConfig, space, objectives, sweep_dir: Path):
    """The sweep's study (made, or loaded on ``--resume``): seeded TPE, a successive-halving pruner on forward
    passes for ``--scheduler asha``, one direction per objective."""
    import optuna

    pruner = optuna.pruners.NopPruner()
    if cfg.scheduler == "asha":
        budget = planned_forward_passes(cfg, space)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.grace_period or max(1, budget // 10),
                                                        reduction_factor=max(2, int(cfg.reduction_factor)))
    return optuna.create_study(study_name=sweep_name(cfg), storage=optuna_storage(cfg, sweep_dir),
                               sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=pruner,
                               load_if_exists=True, directions=["maximize" if d == "max" else "minimize"
                                                                for _, _, d in objectives])


def latest_trials(study, key_of=lambda t: str(t.number)) -> dict[str, Any]:
    """The study's last trial per trial key (a continued trial is a new Optuna trial with the same key)."""
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        latest[t.user_attrs.get("trial_key", key_of(t))] = t  # trials come in number order
    return latest


def prepare_trials(study, space) -> int:
    """Queue what this run of the study starts with; returns how many trials are done.

    A trial that was cut off (RUNNING when its process died, or FAIL without a recorded error) is queued again
    under its key, so it continues in its own out_dir; a new study starts with the space's default points."""
    from optuna.trial import TrialState

    import search_spaces

    done = 0
    for k, t in latest_trials(study).items():
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
    return done


class TrialObjective:
    """The study's objective: one trial through :func:`.trial.run_trial`, retried from its checkpoint up to
    ``max_failures`` times, its results kept as the Optuna trial's user attributes.

    ``stop`` is the sweep's interrupt event (checked before a trial begins and after every step);
    ``on_result`` is :attr:`.callbacks.SweepCallbacks.on_result`, ``after_step`` its ``after_step``."""

    def __init__(self, cfg: SweepConfig, space, objectives, trials_dir: Path, ctx: dict, stop: threading.Event,
                 on_result: Callable[[str, dict], None] | None = None,
                 after_step: Callable[[Path, int], None] | None = None):
        self.cfg, self.space, self.objectives, self.trials_dir, self.ctx = cfg, space, objectives, trials_dir, ctx
        self.stop, self.on_result, self.after_step = stop, on_result, after_step
        self.multi = len(objectives) > 1

    def __call__(self, trial):
        import optuna

        import search_spaces

        if self.stop.is_set():  # interrupted before this trial began: it continues, fresh, on --resume
            raise KeyboardInterrupt("sweep interrupted")
        params = search_spaces.sample(self.space, trial)
        key = trial.user_attrs.get("trial_key") or f"{trial.number:04d}"
        trial.set_user_attr("trial_key", key)
        s = self.run_with_retries(trial, key, params)
        final = {"best_dev_accuracy": s["best_dev_accuracy"], "dev_loss": s["final_dev_loss"],
                 "forward_passes": s["forward_passes"], "test_accuracy": s["test_accuracy"]}
        for k, v in final.items():
            trial.set_user_attr(k, v)
        if s["stopped_early"]:
            trial.set_user_attr("stopped_early", True)
            raise optuna.TrialPruned()
        vals = [final[m] for _, m, _ in self.objectives]
        return vals if self.multi else vals[0]

    def run_with_retries(self, trial, key: str, params: dict) -> dict:
        """The trial's fine-tune; a failed attempt is retried from the checkpoint, the last failure recorded as
        the trial's error and raised."""
        cfg, ctx = self.cfg, self.ctx
        for attempt in range(cfg.max_failures + 1):
            try:
                return run_trial(cfg, params, self.trials_dir / key, trial_key=key,
                                 tracking_uri=ctx["tracking_uri"], parent_run_id=ctx["parent_run_id"],
                                 report=functools.partial(self.report, trial, key),
                                 extra_tags={"optuna_trial": str(trial.number)}, step_hook=self.after_step,
                                 searched=ctx.get("searched", ()), interrupted=self.stop.is_set)
            except Exception as e:
                if attempt == cfg.max_failures:
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def report(self, trial, key: str, metrics: dict) -> bool:
        """One evaluation of the trial, to the pruner (which Optuna cannot do for multi-objective studies);
        returns whether to prune."""
        if self.on_result is not None:
            self.on_result(key, metrics)
        trial.set_user_attr("trial_dir", metrics["trial_dir"])
        trial.set_user_attr("mlflow_run_id", metrics["mlflow_run_id"])
        if self.multi:
            return False
        trial.report(metrics[self.objectives[0][1]], step=int(metrics["forward_passes"]))
        return trial.should_prune()


def resolve_transformers_lazily_loaded(cfg: SweepConfig) -> None:
    """Threaded trials: transformers' lazy attributes are not thread-safe, so resolve them first."""
    if cfg.max_concurrent <= 1:
        return
    import transformers

    for n in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
              "PreTrainedTokenizerFast"):
        getattr(transformers, n)


def optimize_in_thread(study, objective, n_trials: int, n_jobs: int) -> None:
    """``study.optimize`` in a thread while this (main) thread waits in short slices: a signal is handled by the
    main thread only, and a main thread blocked in Optuna's futures would not handle it before the trials end
    (the kernel may deliver it to a trial's thread).  What ``optimize`` raised is raised here."""
    failure: list[BaseException] = []

    def optimize():
        try:
            study.optimize(objective, n_trials=n_trials, n_jobs=n_jobs, catch=(Exception,), gc_after_trial=True)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            failure.append(e)

    runner = threading.Thread(target=optimize, name="zo-sweep-optuna", daemon=True)
    runner.start()
    while runner.is_alive():
        runner.join(0.2)
    if failure:
        raise failure[0]


def collect_rows(study, trials_dir: Path) -> tuple[list[dict], int]:
    """The results rows of the study's trials (the last attempt per key) and how many of them ended."""
    from optuna.trial import TrialState

    rows, ended = [], 0
    for k, t in latest_trials(study, key_of=lambda t: f"{t.number:04d}").items():
        ua = t.user_attrs
        if t.state == TrialState.COMPLETE:
            status = "finished"
        elif t.state == TrialState.PRUNED:
            status = "stopped_early"
        elif "error" in ua:
            status = "failed"
        else:
            status = "interrupted"
        ended += status != "interrupted"
        rows.append(make_row(k, dict(t.params), status, dict(ua), trials_dir / k))
    return rows, ended


def run_optuna(cfg: SweepConfig, space, objectives, sweep_dir: Path, ctx: dict, resume: bool,
               callbacks: SweepCallbacks | None = None):
    """A study on one machine (threads for concurrency); returns (rows, interrupted)."""
    import optuna

    callbacks = callbacks or SweepCallbacks()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = create_study(cfg, space, objectives, sweep_dir)
    trials_dir = Path(ctx["trials_dir"])
    done = prepare_trials(study, space)  # which trials are done, which were cut off and continue
    resolve_transformers_lazily_loaded(cfg)
    interrupted = False
    stop = threading.Event()
    try:
        with interrupt_event() as stop:
            objective = TrialObjective(cfg, space, objectives, trials_dir, ctx, stop,
                                       on_result=callbacks.on_result, after_step=callbacks.after_step)
            optimize_in_thread(study, objective, max(0, cfg.trials - done), cfg.max_concurrent)
    except KeyboardInterrupt:
        interrupted = True
    rows, ended = collect_rows(study, trials_dir)
    interrupted = interrupted or stop.is_set() or ended < cfg.trials
    reconcile_children(ctx["tracking_uri"], ctx["parent_run_id"], lambda run: ("KILLED", resume_hint(cfg)))
    return rows, interrupted
