"""Recipe: fine-tune one model on one task with one method, tracked in MLflow (``zo finetune``).

The package, in the order a run goes: :mod:`.config` (:class:`FinetuneConfig`, validated before anything
heavy, and the fail-fast input checks), :mod:`.sampling` (the train/dev/test sample), :mod:`.checkpoint` (the out
dir's checkpoint and the rules for resuming it), :mod:`.recipe` (the run itself: setup, resume, train, finish),
:mod:`.runinfo` (what a run logs: params, notes, plots, predictions) with :mod:`.method_reports` (each method's
end-of-run numbers), and :mod:`.evaluate` (``zo eval``: a saved trajectory on any split).
"""
from .config import (
           FO_METHODS,
           FinetuneConfig,
           check_inputs,
           load_config,
           method_hyper,
           resolve_policy_option,
           run_precision,
)
from .recipe import run
from .runinfo import PREDICTIONS_FILE, save_predictions
from .sampling import SMALL_TRAIN_TASKS, sample_data, split_sizes

__all__ = ["FO_METHODS", "PREDICTIONS_FILE", "SMALL_TRAIN_TASKS", "FinetuneConfig", "check_inputs", "load_config",
           "method_hyper", "resolve_policy_option", "run", "run_precision", "sample_data", "save_predictions",
           "split_sizes"]
