"""Optuna backend (one machine, no Ray): a study on a journal file (or an RDB URL) with a successive-halving
pruner, ``--max-concurrent`` threads, in-trial retries from the checkpoint, and resume of interrupted trials
(each continues in its own out_dir and MLflow run)."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

from .config import SweepConfig, planned_forward_passes, resume_hint, sweep_name
from .results import make_row, reconcile_children
from .trial import run_trial


def on_report(trial_key: str, metrics: dict) -> None:
    """Called for every evaluation a trial reports, before the pruner sees it (a seam for tests: they
    monkeypatch it to raise KeyboardInterrupt, what Ctrl-C does, at a chosen point)."""


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
    study = optuna.create_study(study_name=sweep_name(cfg), storage=optuna_storage(cfg, sweep_dir),
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

    def objective(trial):
        if stop.is_set():  # interrupted before this trial began: it continues, fresh, on --resume
            raise KeyboardInterrupt("sweep interrupted")
        params = search_spaces.sample(space, trial)
        key = trial.user_attrs.get("trial_key") or f"{trial.number:04d}"
        trial.set_user_attr("trial_key", key)
        out_dir = trials_dir / key

        def report(metrics):
            on_report(key, metrics)
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
                              extra_tags={"optuna_trial": str(trial.number)}, searched=ctx.get("searched", ()),
                              interrupted=stop.is_set)
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
    stop = threading.Event()
    try:
        with interrupt_event() as stop:
            # the study runs in a thread and this (main) thread waits in short slices: a signal is handled by
            # the main thread only, and a main thread blocked in Optuna's futures would not handle it before
            # the trials end (the kernel may deliver it to a trial's thread)
            failure: list[BaseException] = []

            def optimize():
                try:
                    study.optimize(objective, n_trials=remaining, n_jobs=cfg.max_concurrent, catch=(Exception,),
                                   gc_after_trial=True)
                except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                    failure.append(e)

            runner = threading.Thread(target=optimize, name="zo-sweep-optuna", daemon=True)
            runner.start()
            while runner.is_alive():
                runner.join(0.2)
            if failure:
                raise failure[0]
    except KeyboardInterrupt:
        interrupted = True
    interrupted = interrupted or stop.is_set()

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
        rows.append(make_row(k, dict(t.params), status, dict(ua), trials_dir / k))
    interrupted = interrupted or finished < cfg.trials
    reconcile_children(ctx["tracking_uri"], ctx["parent_run_id"], lambda run: ("KILLED", resume_hint(cfg)))
    return rows, interrupted
