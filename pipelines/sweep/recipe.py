"""The sweep recipe: validate, open the driver state, run the trials on one backend, then the results."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoplatform.errors import ConfigError

from .callbacks import SweepCallbacks
from .config import NOT_PERSISTED, SweepConfig, check_inputs, resume_hint, trial_finetune_config
from .optuna_backend import run_optuna
from .plots import make_plots
from .results import best_metric, importances, pareto_front, pick_best, results_markdown, searched, write_table
from .trial import objective_metric

# best_config.yaml is a plain fine-tune config: nothing that files the run under the sweep or points at its dirs
NOT_IN_BEST_CONFIG = {"out_dir", "resume", "tracking", "tracking_uri", "experiment", "parent_run_id", "run_name",
                      "progress"}


def parent_name(cfg: SweepConfig) -> str:
    """The sweep parent run's name: what it sweeps (``sweep curvzo on sst2 (smollm2-135m)``; the sweep dir's
    name is its ``zo.sweep`` tag)."""
    return f"sweep {cfg.method} on {cfg.task} ({cfg.model})"


def run(cfg: SweepConfig, callbacks: SweepCallbacks | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a sweep; returns the JSON summary (:func:`human_summary` says it in a
    few lines).  ``callbacks``: optional hooks into the running sweep (:class:`.callbacks.SweepCallbacks`)."""
    t0 = time.perf_counter()
    # 1. validate: nothing below starts before this passes -----------------------
    space, resources, objectives, sweep_dir = check_inputs(cfg)
    state_path = sweep_dir / "sweep.json"
    if cfg.resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep {sweep_dir.name!r} in {sweep_dir.parent} (no {state_path})")
    lock = lock_sweep_dir(sweep_dir)  # held for the driver's life: a second driver on this sweep is refused
    try:
        driver = SweepDriver(cfg, space, resources, objectives, sweep_dir, callbacks or SweepCallbacks(), t0)
        return driver.run()
    finally:
        lock.__exit__(None, None, None)


def lock_sweep_dir(sweep_dir: Path):
    """The sweep dir's flock (:class:`pipelines.locks.OutDirLock`), or one line naming the driver that holds
    it (two drivers on one sweep would write the same study, trials and MLflow runs)."""
    from pipelines.locks import LOCK_FILE, OutDirLock

    lock = OutDirLock(sweep_dir)
    try:
        return lock.__enter__()
    except ConfigError:
        try:
            holder = (sweep_dir / LOCK_FILE).read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise ConfigError(f"sweep {sweep_dir.name!r} in {sweep_dir.parent} is in use by another zo sweep "
                          f"({holder}); wait for it to end, or pass another --name") from None


@dataclass
class Outcome:
    """What the trials came to, as the finish step builds it up."""

    rows: list[dict]
    interrupted: bool
    best: dict | None = None
    front: list[dict] = field(default_factory=list)
    importances: dict = field(default_factory=dict)
    importances_note: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    note: str = ""
    confirmed: dict | None = None
    failed: bool = False


class SweepDriver:
    """One sweep, as its driver runs it, on the sweep dir's lock: :meth:`setup` (driver state: sweep dir, MLflow
    experiment and parent run), :meth:`run_trials` (one backend), :meth:`finish` (results as parent-run
    artifacts, the summary)."""

    def __init__(self, cfg: SweepConfig, space, resources: dict, objectives, sweep_dir: Path,
                 callbacks: SweepCallbacks, t0: float):
        self.cfg, self.space, self.resources, self.objectives = cfg, space, resources, objectives
        self.sweep_dir, self.callbacks, self.t0 = sweep_dir, callbacks, t0
        self.state_path = sweep_dir / "sweep.json"
        self.resume = cfg.resume
        self.out = sweep_dir / "results"
        self.parent = self.uri = None
        self.ctx: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        from zoplatform.tracking import ending

        self.check_state()
        self.setup()
        started_ray = False
        try:
            with ending(self.parent, resume_hint(self.cfg)) as run_end:
                if self.cfg.backend == "ray":
                    from pipelines import raytools

                    started_ray = raytools.connect()
                rows, interrupted = self.run_trials()
                return self.finish(Outcome(rows, interrupted), run_end)
        finally:
            if started_ray:
                import ray

                ray.shutdown()

    def check_state(self) -> None:
        """A new sweep must not exist yet; a resumed one must exist (on Ray: with its Tune experiment)."""
        cfg, sweep_dir, state_path = self.cfg, self.sweep_dir, self.state_path
        if self.resume and not state_path.is_file():
            raise ConfigError(f"--resume: no sweep {sweep_dir.name!r} in {sweep_dir.parent} (no {state_path})")
        if not self.resume and state_path.is_file():
            raise ConfigError(f"sweep {sweep_dir.name!r} already exists in {sweep_dir.parent}; pass --resume to "
                              f"continue it, or --name for a new sweep")
        if self.resume and cfg.backend == "ray" and not (sweep_dir / "tuner.pkl").is_file():
            raise ConfigError(f"--resume: {sweep_dir} holds no Ray Tune experiment to restore; start a new sweep "
                              f"with another --name")

    # 2. driver state: sweep dir, MLflow experiment and parent run -------------------
    def setup(self) -> None:
        """The packaged model once on the driver (not by every trial at the same time), the sweep dir, the
        parent run (reopened on resume) and the context every trial gets."""
        from zoplatform.models import PACKAGED, prepare_packaged
        from zoplatform.tracking.mlflow import MlflowTracker, resolve_tracking_uri

        cfg, space = self.cfg, self.space
        if cfg.model in PACKAGED:
            prepare_packaged(cfg.model)
        self.uri = uri = resolve_tracking_uri(cfg.tracking_uri)
        saved = json.loads(self.state_path.read_text()) if self.resume else {}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.parent = parent = MlflowTracker(tracking_uri=uri, experiment=cfg.experiment, run_name=parent_name(cfg),
                                             run_id=saved.get("parent_run_id"), system_metrics=False)
        persisted = cfg.model_dump(exclude=NOT_PERSISTED)
        parent.start({**persisted, "space": space.raw, "space_source": space.source},
                     tags={"zo.kind": "sweep", "zo.sweep": self.sweep_dir.name, "backend": cfg.backend,
                           "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task, "model": cfg.model,
                           "objectives": ",".join(cfg.objectives)})
        if not self.resume:
            self.state_path.write_text(json.dumps({"config": persisted, "parent_run_id": parent.run_id,
                                                   "tracking_uri": uri, "created": time.time()}, indent=1,
                                                  default=str))
        else:
            parent.set_tags({"zo.resumed": str(int(time.time()))})
            parent.set_name(parent_name(cfg))  # a parent made under the older naming (the sweep dir's name)
        self.ctx = {"tracking_uri": uri, "parent_run_id": parent.run_id,
                    "trials_dir": str(self.sweep_dir / "trials"), "searched": searched(space)}

    # 3-4. the trials, on one backend -------------------------------------------------
    def run_trials(self) -> tuple[list[dict], bool]:
        """The trials on the sweep's backend (Ray connected by :meth:`run`); returns (rows, interrupted)."""
        cfg = self.cfg
        if cfg.backend == "ray":
            from .ray_backend import run_ray

            return run_ray(cfg, self.space, self.resources, self.objectives, self.sweep_dir, self.ctx, self.resume,
                           self.callbacks)
        return run_optuna(cfg, self.space, self.objectives, self.sweep_dir, self.ctx, self.resume, self.callbacks)

    # 5. results: table, best config, plots, importances -> parent-run artifacts ---
    def finish(self, o: Outcome, run_end) -> dict[str, Any]:
        """Rank, write and log the results, confirm if asked, end the parent run's status; the summary."""
        from zoplatform.tracking import set_note

        self.out.mkdir(exist_ok=True)
        o.best = pick_best(o.rows, self.objectives)
        o.front = pareto_front(o.rows, self.objectives) if len(self.objectives) > 1 else []
        o.importances, o.importances_note = self.parameter_importances(o.rows)
        o.counts = {s: sum(r["status"] == s for r in o.rows) for s in ("finished", "stopped_early", "failed",
                                                                       "interrupted")}
        self.write_results(o)
        if self.cfg.confirm_seeds and not o.interrupted:  # did tuning help? pipelines/sweep/confirm.py
            from .confirm import confirm

            o.confirmed = confirm(self.cfg, self.space, o.rows, self.objectives, self.sweep_dir, self.parent,
                                  self.uri, self.resources)
            o.note += "\n### Did tuning help? (`confirm.md`)\n\n" + (self.out / "confirm.md").read_text()
        for f in o.files:
            self.parent.log_artifact(f)
        self.log_metrics(o)
        set_note(self.parent, o.note)  # the table first: the run's name is its title
        self.end_status(o, run_end)
        return self.summary(o, run_end)

    def parameter_importances(self, rows: list[dict]) -> tuple[dict, str | None]:
        """(importances, None), or ({}, why not) for too few or constant trials (said on the parent and here)."""
        try:
            return importances(rows, self.space, self.objectives), None
        except Exception as e:  # noqa: BLE001 - too few or constant trials: no importances, say why
            note = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            self.parent.set_tags({"zo.importances": f"not computed: {note}"[:500]})
            print(f"parameter importances not computed: {note}", file=sys.stderr, flush=True)
            return {}, note

    def what(self) -> str:
        cfg = self.cfg
        return f"{cfg.method} on {cfg.task} ({cfg.model})"

    def about(self, o: Outcome) -> str:
        """The results' opening paragraph: what ran and how the trials are found."""
        cfg = self.cfg
        tally = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in o.counts.items() if v)
        return (f"{len(o.rows)} trials ({tally}) of {cfg.steps} steps each; backend {cfg.backend}, scheduler "
                f"{cfg.scheduler}; sweep dir `{self.sweep_dir}`. Each trial is a child run named `t<N> "
                f"<hyperparameters> {cfg.method} {cfg.task}`, its objective logged at every evaluation as "
                f"`{objective_metric(self.objectives[0][1])}`.")

    def write_results(self, o: Outcome) -> None:
        """results.md/.csv/.json, best_config.yaml and the plots in ``results/`` (``o.files``); the parent run's
        note (``o.note``): the results without their title."""
        out, rows, space, objectives = self.out, o.rows, self.space, self.objectives
        about = self.about(o)
        table = {"best": o.best, "front": o.front, "about": about, "importances_note": o.importances_note}
        (out / "results.md").write_text(results_markdown(rows, space, objectives, title=f"sweep {self.what()}",
                                                         **table))
        o.note = results_markdown(rows, space, objectives, title=None, **table)
        o.files = [out / "results.md", write_table(rows, space, out / "results.csv", objectives)]
        (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1))
        o.files.append(out / "results.json")
        if o.best is not None:
            o.files.append(self.write_best_config(o.best))
        o.files += make_plots(rows, objectives, o.importances, out, what=self.what(),
                              imps_note=o.importances_note)

    def write_best_config(self, best: dict) -> Path:
        """``results/best_config.yaml``: the best trial as a plain fine-tune config."""
        import yaml

        name = self.sweep_dir.name
        ft = trial_finetune_config(self.cfg, best["params"], out_dir=Path(best["trial_dir"]), resume=False,
                                   run_name=f"{name}-best", tracking_uri=None, parent_run_id=None)
        path = self.out / "best_config.yaml"
        path.write_text(f"# best trial {best['trial']} of sweep {name}: zo finetune --config best_config.yaml\n"
                        + yaml.safe_dump(ft.model_dump(exclude=NOT_IN_BEST_CONFIG), sort_keys=False))
        return path

    def log_metrics(self, o: Outcome) -> None:
        """The trial counts and the best trial's objectives on the parent (a resumed sweep: only what
        changed)."""
        metrics = {f"trials_{k}": v for k, v in o.counts.items()}
        best = o.best
        if best is not None:
            metrics |= {best_metric(m): best[m] for _, m, _ in self.objectives if best.get(m) is not None}
            if best.get("test_accuracy") is not None:
                metrics["best_test_accuracy"] = best["test_accuracy"]
        logged = self.parent.client.get_run(self.parent.run_id).data.metrics
        self.parent.log_metrics({k: v for k, v in metrics.items() if logged.get(k) != float(v)}, 0)

    def end_status(self, o: Outcome, run_end) -> None:
        """The parent's end: KILLED with the resume command if interrupted, FAILED if every trial failed."""
        o.failed = bool(o.rows) and not o.interrupted and o.counts["failed"] == len(o.rows)
        if o.interrupted:
            run_end.status, run_end.reason = "KILLED", resume_hint(self.cfg)
        elif o.failed:  # nothing to rank: the sweep failed, whatever was written
            first = next((r["error"] for r in o.rows if r.get("error")), "see the trials' logs")
            run_end.status, run_end.reason = "FAILED", f"every trial failed; the first: {first}"[:500]

    def ui_links(self) -> dict:
        """The parent's MLflow UI links, with the trials alone sorted by the objective as the sweep ranked them."""
        from zoplatform.tracking import children_link

        links = self.parent.ui_links()
        if links:
            _, metric, mode = self.objectives[0]
            links["trials"] = children_link(links["runs"], self.parent.run_id, objective_metric(metric),
                                            ascending=mode == "min", where="tags.`zo.kind` = 'sweep-trial'")
        return links

    def summary(self, o: Outcome, run_end) -> dict[str, Any]:
        """The sweep's JSON summary."""
        cfg, out = self.cfg, self.out

        def public(r):
            return None if r is None else {k: v for k, v in r.items() if k != "curve"}

        return {
            "sweep": self.sweep_dir.name,
            "status": "interrupted" if o.interrupted else "failed" if o.failed else "finished",
            "backend": cfg.backend, "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task,
            "model": cfg.model, "trials": cfg.trials, "counts": o.counts,
            "objectives": [{"name": n, "metric": m, "mode": d} for n, m, d in self.objectives],
            "best": public(o.best), "pareto": [public(r) for r in o.front], "importances": o.importances,
            "parent_run_id": self.parent.run_id, "experiment": cfg.experiment, "tracking_uri": self.uri,
            "mlflow_ui": self.ui_links(),
            "storage": str(self.sweep_dir), "artifacts": [str(f) for f in o.files],
            "best_config": str(out / "best_config.yaml") if o.best is not None else None,
            "results_md": str(out / "results.md"), "importances_note": o.importances_note,
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
            **({"resume_with": run_end.reason} if o.interrupted else {}),
            **({"error": run_end.reason} if o.failed else {}),
            **({"confirm": o.confirmed} if o.confirmed else {}),
        }


def human_summary(out: dict[str, Any]) -> str:
    """The end of a sweep, for a person: what ran, the best trial and its config, the confirmation's verdict with
    its interval, where the results are and the MLflow links (``--json`` prints the summary itself instead)."""
    from zoplatform.tracking import format_param

    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in out["counts"].items() if v) or "none ran"
    lines = [f"sweep {out['sweep']} {out['status']}: {sum(out['counts'].values())} of {out['trials']} trials "
             f"({counts}); {out['method']} on {out['task']} ({out['model']}), backend {out['backend']}"]
    best = out.get("best")
    if best:
        vals = ", ".join(f"{o['metric']} {format_param(best[o['metric']])}" for o in out["objectives"]
                         if best.get(o["metric"]) is not None)
        test = best.get("test_accuracy")
        params = " ".join(f"{k}={format_param(v)}" for k, v in best["params"].items())
        lines.append(f"best: {best.get('label') or best['trial']} ({vals}"
                     + (f", test_accuracy {format_param(test)}" if test is not None else "") + f"): {params}")
        if out.get("best_config"):
            lines.append(f"best config: {out['best_config']}  (zo finetune --config {out['best_config']})")
    else:
        lines.append("best: none (no trial reported its objective)")
    for c in (out.get("confirm") or {}).get("configs", []):
        p = c.get("paired")
        if not p:
            continue
        if p.get("delta_acc") is None:
            lines.append(f"confirm {c['label']} vs default: no paired seeds finished")
            continue
        lo, hi = p["ci95"]
        lines.append(f"confirm {c['label']} vs default: {100 * p['delta_acc']:+.1f} pts test accuracy "
                     f"[95% CI {100 * lo:+.1f}, {100 * hi:+.1f}] over {p['seeds']} seeds: {p['verdict']}")
    if out.get("importances_note"):
        lines.append(f"importances: not computed: {out['importances_note']}")
    lines.append(f"results: {out.get('results_md') or out['storage']}")
    links = out.get("mlflow_ui") or {}
    if "run" in links:
        lines.append(f"MLflow sweep: {links['run']}")
    if "trials" in links:
        lines.append(f"MLflow trials, best first: {links['trials']}")
    if "start_ui" in links:
        lines.append(f"  (start the UI first: {links['start_ui']})")
    if out.get("resume_with"):
        lines.append(out["resume_with"])
    return "\n".join(lines)
