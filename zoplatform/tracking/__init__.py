"""Experiment tracking behind a small protocol; MLflow is imported lazily in
:mod:`zoplatform.tracking.mlflow` only, so the library runs without it."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    run_id: str | None

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def flush(self) -> None: ...
    def end(self, status: str = "FINISHED", reason: str | None = None, clear_reason: bool = False) -> None: ...


class NullTracker:
    """Tracks nothing (library use, tests)."""

    run_id = None

    def start(self, params, tags=None):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def set_tags(self, tags):
        pass

    def flush(self):
        pass

    def end(self, status="FINISHED", reason=None, clear_reason=False):
        pass


@dataclass
class Outcome:
    """How a tracked run ends; the body of :func:`ending` may set a non-default outcome (e.g. FAILED with a reason
    when some child runs failed)."""

    status: str = "FINISHED"
    reason: str | None = None
    clear_reason: bool = False  # FINISHED: drop a reason an earlier segment left (e.g. "interrupted")


@contextmanager
def ending(tracker: Tracker, interrupted: str | Callable[[], str], on_interrupt: Callable[[], Any] | None = None
           ) -> Iterator[Outcome]:
    """End ``tracker``'s run with the outcome of the block: KILLED with ``interrupted`` (how to continue) on Ctrl-C
    or SIGTERM, FAILED with the exception on any other error, else the yielded :class:`Outcome` (FINISHED unless the
    block changed it); ``on_interrupt`` runs first on an interrupt (e.g. write a checkpoint). The exception is
    re-raised; a crash never leaves a run RUNNING."""
    outcome = Outcome()
    try:
        yield outcome
    except KeyboardInterrupt:
        outcome.status, outcome.reason = "KILLED", interrupted() if callable(interrupted) else interrupted
        if on_interrupt is not None:
            on_interrupt()
        raise
    except BaseException as e:  # any failure ends the run FAILED with the reason (then re-raised)
        from ..errors import ZOError

        outcome.status, outcome.reason = "FAILED", str(e) if isinstance(e, ZOError) else f"{type(e).__name__}: {e}"
        raise
    finally:
        tracker.end(outcome.status, outcome.reason, clear_reason=outcome.clear_reason and outcome.reason is None)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` for params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def mlflow_tracker(**kw) -> Tracker:
    from .mlflow import MlflowTracker

    return MlflowTracker(**kw)
