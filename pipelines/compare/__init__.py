"""Recipe: every method on the same tasks and seeds at an equal forward-pass budget (``zo compare``).

The package, in the order a comparison goes: :mod:`.config` (:class:`CompareConfig` and :class:`RunSpec`,
validated before anything runs), :mod:`.runner` (plan the runs, reuse or resume finished ones, drive them under
one MLflow parent run), :mod:`.execute` (the runs one after another, or as Ray tasks), :mod:`.report` (the paired
statistics and the results tables) and :mod:`.plots` (dev curves and peak memory).
"""
from .config import CompareConfig, RunSpec, load_compare_config
from .plots import plots
from .report import collect, markdown, paired_metrics, update_readme, write_csv
from .runner import plan, run

__all__ = ["CompareConfig", "RunSpec", "collect", "load_compare_config", "markdown", "paired_metrics", "plan",
           "plots", "run", "update_readme", "write_csv"]
