"""Experiment tracking behind a small protocol; MLflow is imported lazily in
:mod:`zoplatform.tracking.mlflow` only, so the library runs without it.

Browsing helpers (no MLflow import): :func:`ui_links` (the MLflow UI pages of a run and of its experiment's runs
view), :func:`set_note` (a run's description), :func:`readable_params` (param values as the UI should show them)
and :data:`EXPERIMENT_NOTES` (what zoplatform logs in an experiment of each kind, its description in the UI).

The runs view: MLflow 3.17's UI picks the experiment page's layout from a *global* workflow type, never from the
experiment: the ``workflowType`` URL parameter, else the browser's last choice of the sidebar's "GenAI / Model
training" switch (localStorage ``mlflow.workflowType``), else GenAI, whose experiment page is the traces overview.
The ``mlflow.experimentKind`` experiment tag is not consulted for it (the feature check that would read it is
hard-wired on in 3.17.2's bundle), so every link printed here carries ``?workflowType=machine_learning``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.parse
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


# --------------------------------------------------------------------------- browsing
NOTE_TAG = "mlflow.note.content"  # a run's (or, as an experiment tag, an experiment's) description in the UI
MAX_NOTE = 8000  # MLflow's limit on a run tag's value
RUNS_VIEW = "workflowType=machine_learning"  # MLflow 3.17's UI: the "Model training" layout (runs table, charts)
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default

_SUMMARY = ("One-off results are logged once, at step 0, so the runs table and the charts show them as values "
            "(bar charts), not as lone points on a step axis.")
EXPERIMENT_NOTES = {
    "finetune": "zoplatform fine-tunes (`zo finetune`): one run per model x task x method x seed, named "
                "`<method> <task> s<seed> <model>`. Params: the method's resolved hyperparameters (lr, eps, "
                "direction, ...) and the run's options. Per step: train_loss, projected_grad, forward_passes (lr "
                "only under a schedule); per dev evaluation: dev_loss, dev_accuracy. Summary values: test_accuracy, "
                "test_loss, zero_shot_test_accuracy, best_dev_accuracy, best_step, wall_time_s, peak_memory_mb. "
                + _SUMMARY + " Artifacts: curves.png, summary.json, trajectory.jsonl (the checkpoint; "
                "`zo eval --trajectory`), predictions.npz. The run's description is a one-line result.",
    "compare": "zoplatform method comparisons (`zo compare`): one parent run per comparison, named `compare "
               "<methods> on <tasks> (<model>)`, whose description is the report (results.md: test accuracy per "
               "method x task, paired verdicts); a child run per method x task x seed, named `<label> <task> "
               "s<seed>` (a fine-tune run). Parent metrics: test_accuracy/<label>/<task> (mean over seeds), "
               "test_accuracy_std/..., final_dev_loss/..., peak_memory_mb/<label>, paired.<label>.<task>.*. "
               + _SUMMARY + " Artifacts: results.md/csv/json, dev_curves_<task>.png, peak_memory.png.",
    "sweep": "zoplatform hyperparameter sweeps (`zo sweep`): one parent run per sweep, named `sweep <method> on "
             "<task> (<model>)` (its directory: tag zo.sweep), whose description is the results table (results.md: "
             "the trials ranked by the objective); a child run per trial (a fine-tune run), named `t<N> <searched "
             "hyperparameters> <method> <task>`, with the sweep objective logged at every evaluation as "
             "`objective.<metric>` (e.g. objective.best_dev_accuracy: sort the trials by it). Parent metrics: "
             "best_dev_accuracy (the best trial's), best_test_accuracy, trials_<status>. Artifacts: results.md/csv/"
             "json, best_config.yaml (a plain fine-tune config: `zo finetune --config best_config.yaml`), "
             "objective_vs_trial.png, accuracy_vs_forward_passes.png, param_importances.png.",
    "meta-train": "zoplatform ZO Fine-tuner policy meta-training (`zo meta-train`): one run per policy "
                  "(meta-validation metrics, policy artifact, registry version), its description a plain-words "
                  "verdict (did ω move; meta-val gain over σ = 1).",
}


def set_note(tracker: Tracker, text: str) -> None:
    """Set the run's description (the MLflow UI's "Description"; markdown), cut to MLflow's limit."""
    if len(text) > MAX_NOTE:
        tail = "\n\n(cut here; the full text is in the run's artifacts)"
        text = text[:MAX_NOTE - len(tail)] + tail
    tracker.set_tags({NOTE_TAG: text})


def format_param(v: Any) -> str:
    """A param value as the runs table should show it: floats to 4 significant digits (``4.43e-06``, never a
    cut-off ``4.43037524...``), lists comma-joined; the exact values stay in the run's config artifacts."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(format_param(x) for x in v)
    return str(v)


def readable_params(params: dict[str, Any]) -> dict[str, str]:
    """Flattened (``a.b``), None values dropped, values formatted by :func:`format_param` (MLflow's 6000-char
    limit applied)."""
    return {k: format_param(v)[:6000] for k, v in flatten(params).items() if v is not None}


def _redact(uri: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``."""
    return re.sub(r"(://[^/:@]+):[^/@]+@", r"\1:***@", uri)


def check_ui_url(url: str, source: str = "--ui-url") -> str:
    """``url`` as a UI base (``http(s)://host[:port][/prefix]``, no trailing slash), or :class:`ConfigError` naming
    it (``source``: where it came from, e.g. ``$ZO_MLFLOW_UI``)."""
    from ..errors import ConfigError

    parsed = urllib.parse.urlsplit(url.strip())
    try:
        parsed.port  # noqa: B018 (raises on a bad port)
        ok = parsed.scheme in ("http", "https") and bool(parsed.hostname) and not parsed.query and not parsed.fragment
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{source} {url!r} is not an MLflow UI address: give http(s)://HOST[:PORT], e.g. "
                          f"http://127.0.0.1:5055 (where `mlflow ui --port 5055` serves)")
    return url.strip().rstrip("/")


def ui_base(tracking_uri: str, ui_url: str | None = None) -> tuple[str | None, str | None]:
    """(the MLflow UI's base URL, the command that starts it or None) for a tracking URI.

    The UI the user named wins: ``ui_url``, else ``$ZO_MLFLOW_UI`` (``zo ... --ui-url`` sets it), e.g.
    http://127.0.0.1:5055 for ``mlflow ui --port 5055`` or a proxy in front of a server. Otherwise an http(s)
    store is its own UI, and a local store (SQLite, ...) needs ``mlflow ui`` on it, at http://127.0.0.1:5000.
    The start command (local stores only) serves on the named URL's port. Databricks: (None, None)."""
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower()
    named = ui_url or os.environ.get("ZO_MLFLOW_UI") or None
    if scheme == "databricks":
        return None, None
    if scheme in ("http", "https"):
        return (named or tracking_uri).rstrip("/"), None
    base = (named or DEFAULT_UI).rstrip("/")
    exe = "mlflow" if shutil.which("mlflow") else f"{sys.executable} -m mlflow"
    start = f"{exe} ui --backend-store-uri {_redact(tracking_uri)}"
    try:
        parsed = urllib.parse.urlsplit(base)
        port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    except ValueError:
        port = None
    if port and port != 5000:
        start += f" --port {port}"
    return base, start


def ui_links(tracking_uri: str, experiment_id: str | None, run_id: str | None = None,
             ui_url: str | None = None) -> dict[str, str] | None:
    """The MLflow UI pages of a run: ``runs`` (its experiment's runs table), ``run`` (its own page), and
    ``start_ui`` (the command that serves them, for a local store); both pages in the runs ("Model training")
    layout, at the UI :func:`ui_base` finds (``ui_url``/``$ZO_MLFLOW_UI`` when given). None when there is nothing
    to link (no experiment, Databricks)."""
    base, start = ui_base(tracking_uri, ui_url)
    if base is None or experiment_id is None:
        return None
    links = {"runs": f"{base}/#/experiments/{experiment_id}/runs?{RUNS_VIEW}"}
    if run_id:
        links["run"] = f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{RUNS_VIEW}"
    if start:
        links["start_ui"] = start
    return links


def compare_runs_link(tracking_uri: str, experiment_id: str, run_ids: list[str]) -> str | None:
    """MLflow's page that puts runs side by side (their params and metrics in one table), or None."""
    base, _ = ui_base(tracking_uri)
    if base is None or not run_ids:
        return None
    return (f"{base}/#/compare-runs?runs={_json_arg(list(run_ids))}&experiments={_json_arg([experiment_id])}"
            f"&{RUNS_VIEW}")


def children_link(runs_link: str, parent_run_id: str, order_by: str | None = None, ascending: bool = False,
                  where: str | None = None) -> str:
    """The runs view (``runs_link``, from :func:`ui_links`) filtered to a parent's child runs (and ``where``, a
    further MLflow search clause) and sorted by the metric ``order_by`` (e.g. a sweep's trials, best first): the
    UI reads ``searchFilter``/``orderByKey``/``orderByAsc`` from the URL."""
    query = {"searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {where}" if where else "")}
    if order_by:
        query |= {"orderByKey": f"metrics.`{order_by}`", "orderByAsc": str(ascending).lower()}
    sep = "&" if "?" in runs_link else "?"
    return runs_link + sep + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def _json_arg(v) -> str:
    return urllib.parse.quote(json.dumps(v, separators=(",", ":")))


def tracker_links(tracker: Tracker) -> dict[str, str] | None:
    """:func:`ui_links` of a tracker's run (None for a tracker that logs nowhere)."""
    fn = getattr(tracker, "ui_links", None)
    return fn() if callable(fn) and tracker.run_id else None


def print_links(links: dict[str, str] | None, what: str = "run", file=None) -> None:
    """The links, for a person, on stderr (stdout keeps the JSON summary)."""
    if not links:
        return
    out = file or sys.stderr
    lines = [f"MLflow {what}: {links['run']}"] if "run" in links else []
    lines.append(f"MLflow runs: {links['runs']}")
    if "trials" in links:
        lines.append(f"MLflow trials, best first: {links['trials']}")
    if "start_ui" in links:
        lines.append(f"  (start the UI first: {links['start_ui']})")
    print("\n".join(lines), file=out, flush=True)
