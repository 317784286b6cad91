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

from ..errors import ConfigError, ZOError
from . import EXPERIMENT_NOTES, NOTE_TAG, readable_params, ui_links

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use (see the module doc).  A bare path names a SQLite file: an existing SQLite
    file, or a new one whose name ends in .db/.sqlite/.sqlite3.  Anything else a bare path could mean
    (MLflow's ``./mlruns`` file store, a directory, some other file) is a ConfigError in one line."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"
    if uri.startswith("file:") and "://" not in uri:  # file:./mlruns (MLflow's file store, relative)
        raise ConfigError(_file_store_message(uri, Path(uri[len("file:"):]).expanduser().resolve()))
    if "://" not in uri:  # a bare path means a SQLite file there
        p = Path(uri).expanduser().resolve()
        if p.is_dir() or (not p.exists() and p.suffix.lower() not in SQLITE_SUFFIXES):
            raise ConfigError(_file_store_message(uri, p))
        if p.is_file() and p.stat().st_size > 0 and not _is_sqlite(p):
            raise ConfigError(f"tracking URI {uri!r}: {p} is not a SQLite database; give a new or SQLite file "
                              f"(e.g. --tracking-uri sqlite:///{p.parent / DEFAULT_DB}) or a server URL")
        return f"sqlite:///{p}"
    return uri


def _is_sqlite(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _file_store_message(uri: str, p: Path) -> str:
    db = p / DEFAULT_DB if p.is_dir() or not p.suffix else p.with_suffix(".db")
    return (f"tracking URI {uri!r} is a directory path (MLflow's file store, which MLflow 3 keeps only in "
            f"maintenance mode and zoplatform does not use): give a SQLite file, e.g. --tracking-uri "
            f"sqlite:///{db}, or a tracking server URL (http://host:5000)")


SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> str:
    """Fail fast, in one line, on a tracking URI that cannot work: an unknown scheme, or a server
    that does not answer its ``/health`` within ``timeout_s`` (MLflow's own client would retry
    for minutes and then raise a chain of tracebacks)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; allowed: "
                          f"{', '.join(SCHEMES)} (or a path to a SQLite file)")
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise ConfigError(_file_store_message(uri, Path(urllib.parse.urlparse(uri).path or ".")))
    if scheme == "sqlite":
        check_sqlite_location(uri)
    if scheme in ("postgresql", "mysql", "mssql"):
        check_db_driver(uri)
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


# the module a SQLAlchemy dialect imports -> the pip package that provides it
DB_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
              "asyncpg": "asyncpg", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL",
              "mysql": "mysql-connector-python", "mariadb": "mariadb", "pyodbc": "pyodbc", "pymssql": "pymssql"}
CLUSTER_EXTRA = "zoplatform[cluster]"  # pyproject.toml: the PostgreSQL driver for a shared store


def check_db_driver(uri: str) -> None:
    """A database URI (``postgresql://``, ``mysql://``, ...) whose SQLAlchemy driver is not installed fails
    here in one line naming the package to install (MLflow would raise a ``ModuleNotFoundError`` traceback)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise ConfigError(f"tracking URI is not a database URL SQLAlchemy knows: {str(e).splitlines()[0]}") \
            from None
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except ImportError as e:
        mod = (e.name or str(e).rsplit(" ", 1)[-1].strip("'")).split(".")[0]
        pkg = DB_DRIVERS.get(mod, mod)
        how = f"pip install '{pkg}'"
        if url.get_backend_name() == "postgresql":
            how = (f"pip install '{CLUSTER_EXTRA}' (psycopg 3; write postgresql+psycopg://...)" if mod != "psycopg"
                   else f"pip install '{CLUSTER_EXTRA}' (or {how})")
        raise ConfigError(f"tracking URI {shown} needs the database driver {mod!r} ({url.drivername}), which is "
                          f"not installed: {how}") from None


def check_sqlite_location(uri: str) -> None:
    """A SQLite store must be creatable and writable where it is (MLflow would fail on its lock or journal file
    with a traceback): the file, if it exists, and the nearest existing folder above it."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return
    db = Path(path)
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if db.exists() and not db.is_file():
        raise ConfigError(f"tracking URI {uri}: {db} is not a file; give a SQLite file, e.g. "
                          f"sqlite:///{db / DEFAULT_DB}")
    why = None
    if not folder.is_dir():
        why = f"{folder} is not a directory"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"{folder} is not writable"
    elif db.exists() and not os.access(db, os.R_OK | os.W_OK):
        why = f"{db} is not writable"
    if why:
        raise ConfigError(f"tracking URI {uri}: the SQLite store cannot be written there ({why}); choose a "
                          f"writable place, e.g. --tracking-uri sqlite:///{Path.cwd() / DEFAULT_DB}")


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
    try:
        with _file_lock(db.with_name(db.name + ".lock")):  # the client's store creates or migrates the schema
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
    except OSError as e:  # a read-only or vanished location the checks above could not see (e.g. /proc)
        raise ConfigError(f"tracking URI {uri}: the SQLite store cannot be written there ({e.strerror}: "
                          f"{e.filename}); choose a writable place, e.g. --tracking-uri "
                          f"sqlite:///{Path.cwd() / DEFAULT_DB}") from None
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


MAX_EXPERIMENT_NAME = 500  # MLflow's limit


def check_experiment_name(name) -> str:
    """An experiment name MLflow accepts (a non-blank string of at most 500 characters), else a ConfigError."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_EXPERIMENT_NAME:
        raise ConfigError(f"experiment name {name!r} is invalid: give a non-empty name of at most "
                          f"{MAX_EXPERIMENT_NAME} characters (--experiment NAME)")
    return name


# A tracking server that stops answering mid-run: MLflow's own defaults (120 s timeout, 7 retries with backoff
# factor 2) hold a run ~12 minutes per call and then raise a chain of tracebacks.  A tracker sets these shorter
# defaults (a user's own settings of the variables win); after a failed call it asks the server's /health and, if
# that does not answer either, raises TrackingLost in one line.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingLost(ZOError):
    """The tracking server stopped answering during a run: the run stops (exit 1); its checkpoint is kept."""

    exit_code = 1


PENDING_FILE = "mlflow_pending.jsonl"  # metrics a lost server did not take, logged when the run is reopened


def server_answers(uri: str, timeout_s: float = 3.0) -> bool:
    """Whether the tracking server at ``uri`` answers ``/health`` (any HTTP status counts as an answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read(64)
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _short_reason(e: BaseException) -> str:
    """``Connection refused`` out of MLflow's several-hundred-character retry error, else its first line, cut."""
    import re

    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text) or re.search(r"(Read timed out|timed out|Connection "
                                                                     r"aborted|Remote end closed connection)", text)
    return m.group(1).strip() if m else (text.splitlines() or [type(e).__name__])[0][:160]


class _GuardedClient:
    """An ``MlflowClient`` whose calls go through :meth:`MlflowTracker._call` (a remote store that stops answering
    becomes one :class:`TrackingLost`, and no call is tried after it)."""

    def __init__(self, client, tracker: MlflowTracker):
        self._client, self._tracker = client, tracker

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            return self._tracker._call(name, attr, *a, **kw)

        return call


class MlflowTracker:
    def __init__(self, tracking_uri: str | None = None, experiment: str = "zoplatform", run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, system_metrics: bool = True,
                 flush_every: int | None = None, experiment_note: str | None = None):
        import mlflow  # noqa: F401  (lazy: only this module imports mlflow)

        check_experiment_name(experiment)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.remote = self.uri.split("://", 1)[0].lower() in ("http", "https")
        if self.remote:
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
        self.lost: str | None = None  # set once the server stopped answering: no further calls are made
        self.resume_hint: str | None = None  # how to continue after a lost server (set by start from the params)
        self.client = open_client(self.uri)
        if self.remote:
            self.client = _GuardedClient(self.client, self)
        self.pending_path: Path | None = None  # where a lost server's metrics wait (the run's out_dir)
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

    def _call(self, what: str, fn, *a, **kw):
        """``fn(*a, **kw)`` against a remote store; a failure while the server does not answer its /health either
        is a :class:`TrackingLost` (one line: the server, what failed, how to continue), and so is every later
        call, at once."""
        if self.lost:
            raise TrackingLost(self.lost)
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - re-raised unless the server is gone
            if server_answers(self.uri):
                raise
            hint = self.resume_hint or "restart the server, then continue the run with --resume"
            self.lost = f"MLflow tracking server {self.uri} stopped answering ({what}: {_short_reason(e)}); " \
                        f"the run's checkpoint is kept: {hint}"
            self.stop_monitor()
            raise TrackingLost(self.lost) from None

    def _hint(self, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        kind, out_dir = tags.get("zo.kind"), params.get("out_dir")
        if getattr(self, "interrupted_reason", None):  # a sweep trial: its sweep's resume command
            return f"restart the server, then {self.interrupted_reason}"
        if kind == "finetune" and out_dir:
            return f"restart the server, then continue with: zo finetune --resume --out-dir {out_dir}"
        if kind == "sweep":
            return "restart the server, then continue with the same zo sweep command and --resume"
        if kind == "compare":
            return "restart the server, then run the same zo compare command again (finished runs are reused)"
        return None

    # -- lifecycle ----------------------------------------------------------
    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        tags = dict(tags or {})
        if self.remote:
            self.resume_hint = self.resume_hint or self._hint(params, tags)
            if params.get("out_dir"):
                self.pending_path = Path(params["out_dir"]) / PENDING_FILE
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
            self._log_pending()
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
        """Write the buffered metrics.  If the server is lost meanwhile, the ones it did not take are kept in
        ``<out_dir>/mlflow_pending.jsonl`` (the recipes flush right after a checkpoint, so they belong to it) and
        logged when the run is reopened (``--resume``)."""
        buf, self._buf = self._buf, []
        for i in range(0, len(buf), 1000):
            try:
                self.client.log_batch(self.run_id, metrics=buf[i:i + 1000])
            except TrackingLost:
                self._keep_pending(buf[i:])
                raise

    def _keep_pending(self, metrics: list) -> None:
        import json

        if self.pending_path is None or not metrics:
            return
        try:
            with open(self.pending_path, "a") as f:
                for m in metrics:
                    f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp,
                                        "step": m.step}) + "\n")
        except OSError:  # best effort: the checkpoint, not this file, is what a resume needs
            pass

    def _log_pending(self) -> None:
        """Log the metrics a lost server did not take (:meth:`flush`) into the reopened run, once."""
        import json

        from mlflow.entities import Metric

        if self.pending_path is None or not self.pending_path.is_file():
            return
        rows = [json.loads(line) for line in self.pending_path.read_text().splitlines() if line.strip()]
        items = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])
        self.pending_path.unlink()

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
        if self.lost:  # the server is gone: nothing to tell it (the run stays RUNNING there until resumed)
            self.stop_monitor()
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
