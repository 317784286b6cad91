"""The callbacks a caller of :func:`pipelines.sweep.run` may pass: hooks into a running sweep, none by default.

They are passed down explicitly (``run(cfg, callbacks=SweepCallbacks(...))`` -> the backend -> :func:`.trial.run_trial`)
and change nothing when left out.  Tests use them to interrupt a sweep or crash a trial at a chosen point.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepCallbacks:
    """Hooks into a sweep.

    ``on_result(trial_key, result)``: in the driver process, for every result a trial reports to its backend
    (each evaluation but the last; on ``--backend ray`` also the trial's final result), before the backend acts
    on it.  The key is the Optuna trial key (``0000``) or the Ray trial id.  Raising KeyboardInterrupt or
    sending SIGINT from it is what Ctrl-C at that point does.

    ``after_step(out_dir, steps)``: after every training step of a search trial (not the confirmation's runs),
    with the trial's directory and the steps done in this attempt; an exception fails the attempt, as a crash
    does.  On ``--backend ray`` it runs in the trial's worker process, so it must pickle (a closure does: Ray
    ships it by value).
    """

    on_result: Callable[[str, dict], None] | None = None
    after_step: Callable[[Path, int], None] | None = None
