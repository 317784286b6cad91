"""Recipe: a hyperparameter sweep over ZO fine-tunes (Ray Tune or plain Optuna), tracked in MLflow.

The package reads in the order a sweep runs:

1. :mod:`.config` -- **validate** everything before a backend starts: the sweep config, the search space
   (against the method's Config), resources, objectives, the fine-tune config of a default point (task, model,
   data), and on ``--resume`` the saved config of the sweep.
2. :mod:`.recipe` -- **driver state** (:class:`.recipe.SweepDriver`: setup, run the trials, finish):
   ``<storage>/<name>/sweep.json`` and the MLflow experiment + parent run, created by the driver (never by the
   trials); ``--resume`` reopens both.  ``run(cfg, callbacks=SweepCallbacks(...))`` passes optional hooks
   (:mod:`.callbacks`) down to the backend and the trials.
3. :mod:`.trial` -- **the objective core** :func:`run_trial`, shared by both backends: one call of
   :func:`pipelines.finetune.run` in the trial's own out_dir and child MLflow run (explicit tracking URI, metrics
   batched per evaluation), reporting dev accuracy/loss and forward passes at every evaluation.  A ZO run's
   checkpoint is its trajectory, so a retried, resumed or restored trial continues exactly, in the same MLflow run
   (its id is in the checkpoint's ``state.json``).
4. **Backends**: :mod:`.ray_backend` (Tuner + OptunaSearch + ASHA on forward passes, retries, ``Tuner.restore``;
   ``RAY_ADDRESS`` set means a cluster, see :mod:`pipelines.raytools`) and :mod:`.optuna_backend` (a study on a
   journal file or an RDB URL, a successive-halving pruner, in-trial retries, resume of cut-off trials).
5. :mod:`.results` and :mod:`.plots` -- **finish**: no child run is left RUNNING (stopped-early trials are marked
   so, interrupted ones KILLED until resumed); results table, best config, plots and parameter importances become
   parent-run artifacts; the summary names the best trial and the parent run.
"""
from .callbacks import SweepCallbacks
from .config import (
    MANAGED,
    OBJECTIVES,
    SweepConfig,
    check_inputs,
    load_for_resume,
    load_sweep_config,
    parse_objectives,
    planned_forward_passes,
    resume_hint,
    sweep_name,
    trial_finetune_config,
)
from .recipe import run
from .results import end_child, importances, make_row, pareto_front, pick_best, reconcile_children, write_table
from .trial import RUN_ID_FILE, STATE_FILES, StoppedByBackend, TrialTracker, run_trial

__all__ = [
    "MANAGED",
    "OBJECTIVES",
    "RUN_ID_FILE",
    "STATE_FILES",
    "StoppedByBackend",
    "SweepCallbacks",
    "SweepConfig",
    "TrialTracker",
    "check_inputs",
    "end_child",
    "importances",
    "load_for_resume",
    "load_sweep_config",
    "make_row",
    "pareto_front",
    "parse_objectives",
    "pick_best",
    "planned_forward_passes",
    "reconcile_children",
    "resume_hint",
    "run",
    "run_trial",
    "sweep_name",
    "trial_finetune_config",
    "write_table",
]
