"""The objective core shared by both backends: one trial = one :func:`pipelines.finetune.run` in the trial's own
out_dir, logged to a child run of the sweep's parent run.

The contract with the fine-tune recipe is its two hooks: ``on_eval(step, metrics, history)`` after every dev
evaluation (once the checkpoint is written) and ``should_stop()`` after every step.  The trial reports to its
backend from ``on_eval``; a backend that wants the trial to end early says so by the report's return value
(Optuna's pruner), or stops it from outside (Ray: see :class:`StoppedByBackend`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zoplatform.tracking.mlflow import MlflowTracker

from .config import OBJECTIVES, SweepConfig, resume_hint, sweep_name, trial_finetune_config
from .results import trial_label, trial_run_name

STATE_FILES = ("state.json", "trajectory.jsonl")
RUN_ID_FILE = "mlflow_run_id"


class StoppedByBackend(BaseException):  # not an error: the backend ended the trial
    """The backend stopped this trial from outside while it reported.

    Ray forces this: ``tune.report`` raises ``SystemExit(0)`` in a trial whose actor Tune stops (an ASHA stop and
    an interrupted sweep alike; the trial cannot tell which).  The Ray adapter turns that into this exception for
    the objective core (a BaseException, so no ``except Exception`` on the way swallows it) and back into
    ``SystemExit(0)`` at the trainable's edge, which is how Ray's thread runner expects a stopped trial to end."""


def objective_metric(metric: str) -> str:
    """The name a trial's run logs a sweep objective under at every evaluation (``objective.best_dev_accuracy``:
    not the fine-tune's own ``best_dev_accuracy``, a one-off value at step 0)."""
    return f"objective.{metric}"


class TrialTracker(MlflowTracker):
    """The MLflow tracker of one trial's child run.

    Flushes only at evaluations (when the checkpoint is written), so the metrics in MLflow never run ahead of the
    checkpoint: a failed attempt drops what it logged since, and its retry logs those steps once.  Writes the run
    id next to the checkpoint as soon as the run exists.

    ``handed_over``: the backend stopped this trial from outside (:class:`StoppedByBackend`), so the run is left
    for the driver to end, which knows whether the scheduler stopped it (FINISHED) or the sweep was interrupted
    (KILLED).  A trial interrupted in its own process (Ctrl-C, SIGTERM) ends KILLED with ``interrupted_reason``,
    the sweep's resume command (a trial is continued by resuming its sweep, not by ``zo finetune --resume``)."""

    def __init__(self, *, out_dir: Path, tags: dict[str, str], interrupted_reason: str | None = None, **kw):
        super().__init__(flush_every=10**9, **kw)
        self.out_dir, self.extra_tags, self.stopped_early = out_dir, tags, None
        self.handed_over = False
        self.interrupted_reason = interrupted_reason

    def start(self, params, tags=None):
        resumed = self.run_id is not None
        super().start(params, {**(tags or {}), **self.extra_tags})
        (self.out_dir / RUN_ID_FILE).write_text(self.run_id)
        if resumed and self.run_name:  # a run made under an older naming gets today's name
            self.set_name(self.run_name)
        if resumed:  # the previous attempt's end reason no longer applies
            try:
                self.client.delete_tag(self.run_id, "zo.end_reason")
            except Exception:  # noqa: BLE001, S110 - no such tag
                pass

    def end(self, status="FINISHED", reason=None, clear_reason=False):
        if self.handed_over:  # metrics past the last checkpoint are logged again by a resumed attempt
            self.discard_pending()
            self.stop_monitor()
            return
        if self.stopped_early:
            self.set_tags({"zo.stopped_early": "true"})
            status, reason = "FINISHED", self.stopped_early
        elif status == "FAILED":
            self.discard_pending()
        elif status == "KILLED" and self.interrupted_reason:
            reason = self.interrupted_reason
        super().end(status, reason, clear_reason=clear_reason)


def run_trial(cfg: SweepConfig, params: dict[str, Any], out_dir: Path, *, trial_key: str, tracking_uri: str,
              parent_run_id: str, report: Callable[[dict], bool], extra_tags: dict[str, str] | None = None,
              step_hook: Callable[[Path, int], None] | None = None, searched: Sequence[str] = (),
              label: str | None = None, interrupted: Callable[[], bool] | None = None) -> dict:
    """One trial = one fine-tune in ``out_dir`` logged to a child run of the sweep.

    ``report(metrics)`` is called after every dev evaluation (and its checkpoint)
    with dev accuracy/loss, the best dev accuracy so far and the forward passes;
    returning True ends training early (a pruned trial still finishes its run).
    If ``out_dir`` holds a checkpoint the trial resumes from it, in the same run.
    ``step_hook(out_dir, steps)`` (optional: :attr:`.callbacks.SweepCallbacks.after_step`) runs after every step
    with the steps done in this attempt. ``searched``: the space's sampled
    hyperparameters, shown in the run's name (``t3 lr=4.43e-06 eps=0.001 mezo sst2``) after ``label`` (default
    :func:`.results.trial_label` of the key). ``interrupted()`` true (the sweep was interrupted while this trial
    runs in a worker thread, which no signal reaches) ends the trial after its step as Ctrl-C does: checkpoint, run
    KILLED with the sweep's resume command.
    """
    from pipelines.finetune import run

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = json.loads((out_dir / "state.json").read_text()) if (out_dir / "state.json").is_file() else None
    run_id = (saved or {}).get("run_id")
    if run_id is None and (out_dir / RUN_ID_FILE).is_file():  # failed before its first checkpoint
        run_id = (out_dir / RUN_ID_FILE).read_text().strip() or None
    label = label or trial_label(trial_key)
    run_name = trial_run_name(label, params, searched or params, cfg.method, cfg.task)
    objective_metrics = [OBJECTIVES[o][0] for o in cfg.objectives]
    ft = trial_finetune_config(cfg, params, out_dir=out_dir, resume=saved is not None, run_name=run_name,
                               tracking_uri=tracking_uri, parent_run_id=parent_run_id)
    tracker = TrialTracker(out_dir=out_dir, tracking_uri=tracking_uri, experiment=cfg.experiment,
                           run_name=run_name, parent_run_id=parent_run_id, run_id=run_id,
                           interrupted_reason=resume_hint(cfg),
                           tags={"zo.kind": "sweep-trial", "zo.sweep": sweep_name(cfg), "zo.trial": trial_key,
                                 "zo.trial_label": label,
                                 **(extra_tags or {})})
    stop, steps_here = False, 0

    def on_eval(step, m, history):
        nonlocal stop
        metrics = {"step": step, "dev_accuracy": m["dev_accuracy"], "dev_loss": m["dev_loss"],
                   "best_dev_accuracy": history.best_dev_accuracy, "forward_passes": m["forwards"],
                   "mlflow_run_id": tracker.run_id, "trial_dir": str(out_dir), "trial_label": label}
        # the sweep's objective(s) as of this evaluation, on the trial's run: its latest value is what the
        # backend ranks (a stopped trial's included), so sorting the trials by it in the UI ranks them right
        tracker.log_metrics({objective_metric(k): metrics[k] for k in objective_metrics}, step)
        tracker.flush()  # right after the checkpoint, as the fine-tune's own eval metrics
        if step >= ft.steps:  # the last evaluation: the trial has run its whole budget, so no scheduler may cut
            return            # it now (it would lose its test evaluation); the backend gets its final result
        try:
            stop = bool(report(metrics)) or stop
        except StoppedByBackend:
            tracker.handed_over = True  # the driver ends the run FINISHED or KILLED
            raise
        if stop:
            tracker.stopped_early = f"stopped early (pruned) at {m['forwards']} forward passes"

    def should_stop():
        nonlocal steps_here
        steps_here += 1
        if step_hook is not None:
            step_hook(out_dir, steps_here)
        if interrupted is not None and interrupted():
            raise KeyboardInterrupt("sweep interrupted")
        return stop

    summary = run(ft, tracker=tracker, on_eval=on_eval, should_stop=should_stop)
    summary["stopped_early"] = stop
    return summary
