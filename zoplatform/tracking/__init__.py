"""Experiment tracking behind a small protocol; MLflow is imported lazily in
:mod:`zoplatform.tracking.mlflow` only, so the library runs without it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    run_id: str | None

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def flush(self) -> None: ...
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None: ...


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

    def end(self, status="FINISHED", reason=None):
        pass


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
