"""The sweep recipe: validate, open the driver state, run the trials on one backend, then the results."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from zoplatform.errors import ConfigError

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


def run(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a sweep; returns the JSON summary (:func:`human_summary` says it in a
    few lines)."""
    t0 = time.perf_counter()
    # 1. validate: nothing below starts before this passes -----------------------
    space, resources, objectives, sweep_dir = check_inputs(cfg)
    state_path = sweep_dir / "sweep.json"
    resume = cfg.resume
    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep {sweep_dir.name!r} in {sweep_dir.parent} (no {state_path})")
    lock = lock_sweep_dir(sweep_dir)  # held for the driver's life: a second driver on this sweep is refused
    try:
        return _run_locked(cfg, t0, space, resources, objectives, sweep_dir, state_path, resume)
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


def _run_locked(cfg: SweepConfig, t0: float, space, resources, objectives, sweep_dir: Path, state_path: Path,
                resume: bool) -> dict[str, Any]:
    from zoplatform.tracking import children_link, ending, set_note
    from zoplatform.tracking.mlflow import MlflowTracker, resolve_tracking_uri

    if resume and not state_path.is_file():
        raise ConfigError(f"--resume: no sweep {sweep_dir.name!r} in {sweep_dir.parent} (no {state_path})")
    if not resume and state_path.is_file():
        raise ConfigError(f"sweep {sweep_dir.name!r} already exists in {sweep_dir.parent}; pass --resume to "
                          f"continue it, or --name for a new sweep")
    if resume and cfg.backend == "ray" and not (sweep_dir / "tuner.pkl").is_file():
        raise ConfigError(f"--resume: {sweep_dir} holds no Ray Tune experiment to restore; start a new sweep "
                          f"with another --name")
    from zoplatform.models import PACKAGED, prepare_packaged

    if cfg.model in PACKAGED:  # once on the driver, not by every trial at the same time
        prepare_packaged(cfg.model)
    uri = resolve_tracking_uri(cfg.tracking_uri)

    # 2. driver state: sweep dir, MLflow experiment and parent run ----------------
    saved = json.loads(state_path.read_text()) if resume else {}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parent = MlflowTracker(tracking_uri=uri, experiment=cfg.experiment, run_name=parent_name(cfg),
                           run_id=saved.get("parent_run_id"), system_metrics=False)
    persisted = cfg.model_dump(exclude=NOT_PERSISTED)
    parent.start({**persisted, "space": space.raw, "space_source": space.source},
                 tags={"zo.kind": "sweep", "zo.sweep": sweep_dir.name, "backend": cfg.backend,
                       "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task, "model": cfg.model,
                       "objectives": ",".join(cfg.objectives)})
    if not resume:
        state_path.write_text(json.dumps({"config": persisted, "parent_run_id": parent.run_id,
                                          "tracking_uri": uri, "created": time.time()}, indent=1, default=str))
    else:
        parent.set_tags({"zo.resumed": str(int(time.time()))})
        parent.set_name(parent_name(cfg))  # a parent made under the older naming (the sweep dir's name)
    ctx = {"tracking_uri": uri, "parent_run_id": parent.run_id, "trials_dir": str(sweep_dir / "trials"),
           "searched": searched(space)}

    started_ray = False
    try:
        with ending(parent, resume_hint(cfg)) as run_end:
            # 3-4. the trials, on one backend --------------------------------------
            if cfg.backend == "ray":
                from pipelines import raytools

                from .ray_backend import run_ray

                started_ray = raytools.connect()
                rows, interrupted = run_ray(cfg, space, resources, objectives, sweep_dir, ctx, resume)
            else:
                rows, interrupted = run_optuna(cfg, space, objectives, sweep_dir, ctx, resume)

            # 5. results: table, best config, plots, importances -> parent-run artifacts
            out = sweep_dir / "results"
            out.mkdir(exist_ok=True)
            best = pick_best(rows, objectives)
            front = pareto_front(rows, objectives) if len(objectives) > 1 else []
            imps_note = None
            try:
                imps = importances(rows, space, objectives)
            except Exception as e:  # noqa: BLE001 - too few or constant trials: no importances, say why
                imps, imps_note = {}, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                parent.set_tags({"zo.importances": f"not computed: {imps_note}"[:500]})
                print(f"parameter importances not computed: {imps_note}", file=sys.stderr, flush=True)
            counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "stopped_early", "failed",
                                                                         "interrupted")}
            what = f"{cfg.method} on {cfg.task} ({cfg.model})"
            tally = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
            about = (f"{len(rows)} trials ({tally}) of {cfg.steps} steps each; backend {cfg.backend}, scheduler "
                     f"{cfg.scheduler}; sweep dir `{sweep_dir}`. Each trial is a child run named `t<N> "
                     f"<hyperparameters> {cfg.method} {cfg.task}`, its objective logged at every evaluation as "
                     f"`{objective_metric(objectives[0][1])}`.")
            md = results_markdown(rows, space, objectives, title=f"sweep {what}", best=best, front=front,
                                  about=about, importances_note=imps_note)
            (out / "results.md").write_text(md)
            note = results_markdown(rows, space, objectives, title=None, best=best, front=front, about=about,
                                    importances_note=imps_note)
            files = [out / "results.md", write_table(rows, space, out / "results.csv", objectives)]
            (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items()} for r in rows], indent=1))
            files.append(out / "results.json")
            if best is not None:
                ft = trial_finetune_config(cfg, best["params"], out_dir=Path(best["trial_dir"]), resume=False,
                                           run_name=f"{sweep_dir.name}-best", tracking_uri=None, parent_run_id=None)
                best_cfg = ft.model_dump(exclude=NOT_IN_BEST_CONFIG)
                import yaml

                (out / "best_config.yaml").write_text(
                    f"# best trial {best['trial']} of sweep {sweep_dir.name}: zo finetune --config best_config.yaml\n"
                    + yaml.safe_dump(best_cfg, sort_keys=False))
                files.append(out / "best_config.yaml")
            files += make_plots(rows, objectives, imps, out, what=what, imps_note=imps_note)
            confirmed = None
            if cfg.confirm_seeds and not interrupted:  # did tuning help? pipelines/sweep/confirm.py
                from pipelines.sweep.confirm import confirm

                confirmed = confirm(cfg, space, rows, objectives, sweep_dir, parent, uri, resources)
                note += "\n### Did tuning help? (`confirm.md`)\n\n" + (out / "confirm.md").read_text()
            for f in files:
                parent.log_artifact(f)
            metrics = {f"trials_{k}": v for k, v in counts.items()}
            if best is not None:
                metrics |= {best_metric(m): best[m] for _, m, _ in objectives if best.get(m) is not None}
                if best.get("test_accuracy") is not None:
                    metrics["best_test_accuracy"] = best["test_accuracy"]
            logged = parent.client.get_run(parent.run_id).data.metrics  # a resumed sweep: log only what changed
            parent.log_metrics({k: v for k, v in metrics.items() if logged.get(k) != float(v)}, 0)
            set_note(parent, note)  # the table first: the run's name is its title
            links = parent.ui_links()
            if links:  # the trials alone, sorted by the objective as the sweep ranked them
                _, metric, mode = objectives[0]
                links["trials"] = children_link(links["runs"], parent.run_id, objective_metric(metric),
                                                ascending=mode == "min", where="tags.`zo.kind` = 'sweep-trial'")
            failed = bool(rows) and not interrupted and counts["failed"] == len(rows)
            if interrupted:
                run_end.status, run_end.reason = "KILLED", resume_hint(cfg)
            elif failed:  # nothing to rank: the sweep failed, whatever was written
                first = next((r["error"] for r in rows if r.get("error")), "see the trials' logs")
                run_end.status, run_end.reason = "FAILED", f"every trial failed; the first: {first}"[:500]

            def public(r):
                return None if r is None else {k: v for k, v in r.items() if k != "curve"}

            return {
                "sweep": sweep_dir.name,
                "status": "interrupted" if interrupted else "failed" if failed else "finished",
                "backend": cfg.backend, "scheduler": cfg.scheduler, "method": cfg.method, "task": cfg.task,
                "model": cfg.model, "trials": cfg.trials, "counts": counts,
                "objectives": [{"name": n, "metric": m, "mode": d} for n, m, d in objectives],
                "best": public(best), "pareto": [public(r) for r in front], "importances": imps,
                "parent_run_id": parent.run_id, "experiment": cfg.experiment, "tracking_uri": uri,
                "mlflow_ui": links,
                "storage": str(sweep_dir), "artifacts": [str(f) for f in files],
                "best_config": str(out / "best_config.yaml") if best is not None else None,
                "results_md": str(out / "results.md"), "importances_note": imps_note,
                "wall_time_s": round(time.perf_counter() - t0, 2),
                **({"resume_with": run_end.reason} if interrupted else {}),
                **({"error": run_end.reason} if failed else {}),
                **({"confirm": confirmed} if confirmed else {}),
            }
    finally:
        if started_ray:
            import ray

            ray.shutdown()



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
