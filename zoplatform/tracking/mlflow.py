"""MLflow tracker: one run per fine-tune (optionally a child of a sweep run).

Uses ``MlflowClient`` with an explicit tracking URI (never the fluent global
run), so several runs can log from one process or from Ray workers without
sharing state.  Metrics are buffered and written with ``log_batch`` (a ZO step
is fast; one HTTP/SQLite round trip per metric is not).  By default the
buffer is written only on :meth:`flush`, which the recipes call right after
each checkpoint, so a resumed run never logs a step twice.

Store resolution: ``tracking_uri`` argument > ``MLFLOW_TRACKING_URI`` >
``sqlite:///<cwd>/mlflow.db`` with artifacts under ``<cwd>/mlartifacts``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import EXPERIMENT_NOTES, NOTE_TAG, readable_params, ui_links

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"
    if "://" not in uri:  # a bare path means a SQLite file there
        return f"sqlite:///{Path(uri).resolve()}"
    return uri


SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> str:
    """Fail fast, in one line, on a tracking URI that cannot work: an unknown scheme, or a server
    that does not answer its ``/health`` within ``timeout_s`` (MLflow's own client would retry
    for minutes and then raise a chain of tracebacks)."""
    import urllib.error
    import urllib.request

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; allowed: "
                          f"{', '.join(SCHEMES)} (or a path to a SQLite file)")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                r.read(64)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # an authenticating server is reachable; the client sends credentials
                return uri
            raise ConfigError(f"MLflow tracking server {uri} answered /health with HTTP {e.code}; check the URI") \
                from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            raise ConfigError(f"MLflow tracking server {uri} is unreachable ({why}); start it (mlflow server "
                              f"--host 127.0.0.1 --port 5000 ...) or use --tracking-uri sqlite:///mlflow.db") from None
    return uri


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def open_client(uri: str | None = None):
    """An ``MlflowClient`` for the resolved, checked URI.  A SQLite store's schema is created
    (or checked) under a file lock next to the database, so runs that start at once on a fresh
    store do not race MLflow's schema creation (``duplicate column name``)."""
    from mlflow import MlflowClient

    uri = check_tracking_uri(resolve_tracking_uri(uri))
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    db = Path(uri[len("sqlite:///"):])
    with _file_lock(db.with_name(db.name + ".lock")):  # the client's store creates or migrates the schema
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    return client


def default_artifact_location(uri: str) -> str | None:
    """Next to the SQLite file for local stores; the server decides otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / DEFAULT_ARTIFACTS).as_uri()
    return None


def ensure_experiment(client, name: str, uri: str, note: str | None = None) -> str:
    """The experiment's id, created if needed; ``note`` becomes its description (the ``mlflow.note.content``
    experiment tag) when it has none yet (a description a person wrote is kept)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            loc = default_artifact_location(uri)
            exp_id = client.create_experiment(name, artifact_location=f"{loc}/{name}" if loc else None,
                                              tags={NOTE_TAG: note} if note else None)
            return exp_id
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if note and not exp.tags.get(NOTE_TAG):
        client.set_experiment_tag(exp.experiment_id, NOTE_TAG, note)
    return exp.experiment_id


def run_links(run_id: str, tracking_uri: str | None = None) -> dict[str, str] | None:
    """:func:`zoplatform.tracking.ui_links` of a run known by its id (for commands whose summary holds only
    the run id); None if the store cannot be read."""
    uri = resolve_tracking_uri(tracking_uri)
    try:
        exp_id = open_client(uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - links are a convenience; never fail a finished command for them
        return None
    return ui_links(uri, exp_id, run_id)


class MlflowTracker:
    def __init__(self, tracking_uri: str | None = None, experiment: str = "zoplatform", run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, system_metrics: bool = True,
                 flush_every: int | None = None, experiment_note: str | None = None):
        import mlflow  # noqa: F401  (lazy: only this module imports mlflow)

        self.uri = resolve_tracking_uri(tracking_uri)
        self.client = open_client(self.uri)
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.run_id = run_id  # set: continue that run (resume)
        self.system_metrics = system_metrics
        self.flush_every = flush_every
        self.experiment_note = experiment_note  # default: EXPERIMENT_NOTES of the run's zo.kind tag
        self.experiment_id: str | None = None
        self._buf: list = []
        self._monitor = None

    # -- lifecycle ----------------------------------------------------------
    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        tags = dict(tags or {})
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        reopened = None
        if self.run_id is not None:  # a saved id (checkpoint, compare.json, sweep.json) the store may have lost
            try:
                reopened = self.client.get_run(self.run_id)
            except MlflowException:
                print(f"MLflow: run {self.run_id} is not in {self.uri} (a new store?): starting a new run",
                      file=sys.stderr, flush=True)
                self.run_id = None
        if self.run_id is None:
            note = self.experiment_note or EXPERIMENT_NOTES.get(tags.get("zo.kind", ""))
            exp_id = ensure_experiment(self.client, self.experiment, self.uri, note=note)
            run = self.client.create_run(exp_id, tags=tags, run_name=self.run_name)
            self.run_id, self.experiment_id = run.info.run_id, exp_id
            items = [Param(k, v) for k, v in readable_params(params).items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        else:  # resumed: reopen the same run, params are already there
            self.experiment_id = reopened.info.experiment_id
            self.client.update_run(self.run_id, status="RUNNING")
            if tags:
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if self.system_metrics:
            self._start_monitor()

    def _start_monitor(self):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.uri)
            self._monitor.start()
        except Exception:  # system metrics are best effort (psutil missing, etc.)
            self._monitor = None

    def set_name(self, name: str) -> None:
        """Rename the run (e.g. a reopened run made under an older naming)."""
        self.client.update_run(self.run_id, name=name)

    def ui_links(self) -> dict[str, str] | None:
        """This run's MLflow UI pages (:func:`zoplatform.tracking.ui_links`); None before :meth:`start`."""
        return ui_links(self.uri, self.experiment_id, self.run_id) if self.run_id else None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buf.extend(Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None)
        if self.flush_every is not None and len(self._buf) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        buf, self._buf = self._buf, []
        for i in range(0, len(buf), 1000):
            self.client.log_batch(self.run_id, metrics=buf[i:i + 1000])

    def discard_pending(self) -> None:
        """Drop the metrics logged since the last :meth:`flush` (a run whose later steps will be logged again,
        e.g. by a resumed attempt from the last checkpoint)."""
        self._buf.clear()

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED", reason: str | None = None, clear_reason: bool = False) -> None:
        if self.run_id is None:
            return
        try:
            self.flush()
            if reason:
                self.client.set_tag(self.run_id, "zo.end_reason", reason[:5000])
            elif clear_reason and "zo.end_reason" in self.client.get_run(self.run_id).data.tags:
                self.client.delete_tag(self.run_id, "zo.end_reason")
        finally:
            self.stop_monitor()
            self.client.set_terminated(self.run_id, status=status)

    def stop_monitor(self) -> None:
        """Stop sampling system metrics (best effort)."""
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:
                pass
            self._monitor = None
