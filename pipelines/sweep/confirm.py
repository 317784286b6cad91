"""Sweeps that confirm: the best configurations and the paper default, re-run on fresh seeds and paired.

A sweep ranks its trials on one seed (``--seed``: one data sample and order, one dev set to select on), so the best
trial's lead over the space's paper default can be luck.  ``zo sweep ... --confirm-seeds N [--confirm-top K]``
answers "did tuning help?" after the search:

1. the K best trials (ranked as :func:`pipelines.sweep.pick_best` ranks them) and the space's first ``defaults``
   entry (the paper's setting) are re-run with N fresh seeds, ``seed + 1 .. seed + N`` (never the trials' own), at
   the trials' budget: the same steps, data sizes and fine-tune options, only the seed differs;
2. every run is an MLflow child run of the sweep's parent run (tags ``zo.kind=sweep-confirm``, ``zo.confirm``,
   ``zo.confirm_seed``), in ``<sweep>/confirm/<label>/seed<k>``; on ``--backend ray`` the runs are Ray tasks with
   the trials' ``--resources``, up to ``--max-concurrent`` at once (across the cluster, like the trials), on
   ``--backend optuna`` one after another in the driver; a finished run is reused and a cut-off one resumed from its
   trajectory when the sweep is resumed;
3. each configuration is paired with the default seed by seed (same seed: same data sample, order and test set) as
   ``zo compare`` pairs methods (:mod:`pipelines.compare.report`, :mod:`pipelines.stats`): Δ test accuracy with its 95%
   interval, p-value, verdict and resolvable half-width, McNemar per seed, Δ final dev loss and Δ dev-loss AUC.

The report is ``results/confirm.md`` and ``results/confirm.json`` in the sweep directory, logged to the parent
run with metrics ``confirm.<label>.{delta_acc,ci95_lo,ci95_hi,p_value}`` and tags ``confirm.<label>.verdict``, and
returned (the sweep's ``--json`` key ``confirm``).  A best configuration equal to the default is not run twice: it
is the default's runs, and its row says so.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

DEFAULT = "default"


def _full(space, params: dict) -> dict[str, Any]:
    """A point with the space's fixed knobs (the sampler returns them; a backend's record may not)."""
    return {p.name: p.value for p in space.params if p.dist == "fixed"} | dict(params)


def default_params(space) -> dict[str, Any]:
    """The space's first default as a trial's parameters."""
    import search_spaces

    return _full(space, search_spaces.to_points(space)[0])


def ranked(rows: list[dict], objectives, k: int) -> list[dict]:
    """The ``k`` best trials, best first, by :func:`pipelines.sweep.pick_best`'s pool and order."""
    from .results import pareto_front

    pool = pareto_front(rows, objectives) if len(objectives) > 1 else rows
    _, metric, mode = objectives[0]
    pool = [r for r in pool if r.get(metric) is not None and r["status"] != "failed"]
    sign = 1.0 if mode == "max" else -1.0
    return sorted(pool, key=lambda r: (sign * r[metric], -(r["forward_passes"] or 0.0)), reverse=True)[:k]


def _run_one(cfg, label: str, params: dict, seed: int, out_dir: Path, uri: str, parent_run_id: str) -> dict:
    """One confirmation run (reused if finished, resumed if cut off), as a report run record."""
    from .trial import run_trial

    summary_path = out_dir / "summary.json"
    status, summary = "done", {}
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        seeded = cfg.model_copy(update={"seed": seed})
        try:
            summary = run_trial(seeded, params, out_dir, trial_key=f"confirm-{label}-s{seed}", tracking_uri=uri,
                                parent_run_id=parent_run_id, report=lambda m: False,
                                extra_tags={"zo.kind": "sweep-confirm", "zo.confirm": label,
                                            "zo.confirm_seed": str(seed)})
        except Exception as e:  # noqa: BLE001 - a failed run leaves its seed out of the pairs, not the sweep
            status, summary = "failed", {"error": f"{type(e).__name__}: {e}"[:300]}
    return _record(cfg, label, seed, out_dir, status, summary)


def _record(cfg, label: str, seed: int, out_dir: Path, status: str, summary: dict) -> dict:
    """A confirmation run as a report run record (its dev curve from the checkpoint, if any)."""
    state = out_dir / "state.json"
    curve = json.loads(state.read_text())["history"]["evals"] if state.is_file() else []
    return {"label": label, "task": cfg.task, "seed": seed, "status": status, "curve": curve,
            "out_dir": str(out_dir), "test_accuracy": summary.get("test_accuracy"),
            "mlflow_run_id": summary.get("mlflow_run_id"), "error": summary.get("error")}


def _run_in_task(cfg, label: str, params: dict, seed: int, out_dir: Path, uri: str, parent_run_id: str,
                 threads: int) -> dict:
    """:func:`_run_one` in a Ray task: torch gets the task's CPUs, as a trial does."""
    import torch

    torch.set_num_threads(threads)
    return _run_one(cfg, label, params, seed, out_dir, uri, parent_run_id)


def _execute(cfg, jobs: list[tuple], uri: str, parent_run_id: str, resources: dict) -> dict[tuple, dict]:
    """Run the confirmation's ``(label, params, seed, out_dir)`` jobs; returns their records by ``(label, seed)``,
    printing one progress line per finished run."""
    recs: dict[tuple, dict] = {}

    def finished(rec: dict) -> None:
        recs[(rec["label"], rec["seed"])] = rec
        acc = rec["test_accuracy"]
        print(f"[confirm {len(recs)}/{len(jobs)}] {rec['label']} seed {rec['seed']}: "
              f"{f'test {acc:.3f}' if acc is not None else rec['error']}", file=sys.stderr, flush=True)

    if cfg.backend != "ray":
        for label, params, seed, out_dir in jobs:
            finished(_run_one(cfg, label, params, seed, out_dir, uri, parent_run_id))
        return recs
    import ray

    from pipelines.raytools import run_tasks

    remote = ray.remote(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_calls=1)(_run_in_task)
    threads = max(1, int(resources["cpu"]))

    def done(job, rec, error):
        label, _, seed, out_dir = job
        finished(rec if error is None else _record(cfg, label, seed, out_dir, "failed", {"error": error}))

    run_tasks(lambda j: remote.remote(cfg, *j, uri, parent_run_id, threads), jobs, done, cfg.max_concurrent)
    return recs


def _describe(params: dict, default: dict) -> str:
    diff = {k: v for k, v in params.items() if default.get(k) != v}
    if not diff:
        return "the default"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items())


def markdown(cfg, name: str, seeds: list[int], configs: list[dict]) -> str:
    from pipelines.compare.report import paired_table

    lines = [f"Confirmation of sweep `{name}` ({cfg.method} on {cfg.task}, `{cfg.model}`): the "
             f"{len(configs) - 1} best configuration(s) and the space's first default re-run with fresh seeds "
             f"{', '.join(map(str, seeds))} (the trials used seed {cfg.seed}) at the trials' budget, {cfg.steps} "
             f"steps; test accuracy mean ± std over seeds.", "",
             "| config | trial | setting (vs the default) | seeds | test acc % |", "|---|---|---|---|---|"]
    for c in configs:
        accs = [r["test_accuracy"] for r in c["runs"] if r["test_accuracy"] is not None]
        acc = "–" if not accs else f"{100 * statistics.fmean(accs):.1f}" + (
            f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else "")
        lines.append(f"| {c['label']} | {c['trial'] or '–'} | {c['setting']} | {len(accs)} | {acc} |")
    rows = [(c["label"], cfg.task, c["paired"]) for c in configs if c["paired"] is not None]
    return "\n".join([*lines, "", *paired_table(rows, DEFAULT)]) + "\n"


def confirm(cfg, space, rows: list[dict], objectives, sweep_dir: Path, parent, uri: str,
            resources: dict) -> dict[str, Any]:
    """Re-run the best configurations and the default on fresh seeds, pair them, report; returns the summary.
    ``resources`` (the trials' ``{"cpu", "gpu"}``) is what each run asks of Ray on ``--backend ray``."""
    from pipelines.compare.report import paired_one, stable_seed

    default = default_params(space)
    seeds = [cfg.seed + 1 + j for j in range(cfg.confirm_seeds)]
    configs = [{"label": DEFAULT, "trial": None, "params": default, "same_as": None}]
    for i, r in enumerate(ranked(rows, objectives, cfg.confirm_top)):
        params = _full(space, r["params"])
        same = next((c["label"] for c in configs if c["params"] == params), None)
        configs.append({"label": f"best-{i + 1}", "trial": r["trial"], "params": params, "same_as": same})
    distinct = [c for c in configs if c["same_as"] is None]
    jobs = [(c["label"], c["params"], s, sweep_dir / "confirm" / c["label"] / f"seed{s}") for c in distinct
            for s in seeds]
    recs = _execute(cfg, jobs, uri, parent.run_id, resources)
    runs: dict[str, list[dict]] = {c["label"]: [recs[(c["label"], s)] for s in seeds] for c in distinct}
    for c in configs:
        c["runs"] = runs[c["same_as"] or c["label"]]
        c["setting"] = _describe(c["params"], default) + (
            f" (= {c['same_as']})" if c["same_as"] not in (None, DEFAULT) else "")
        c["paired"] = None if c["label"] == DEFAULT else paired_one(c["runs"], runs[DEFAULT],
                                                                    seed=stable_seed(c["label"], DEFAULT, cfg.task))
        if c["same_as"] and c["paired"] is not None:
            c["paired"]["note"] = f"the same configuration as {c['same_as']}: the same runs"
    out = sweep_dir / "results"
    out.mkdir(exist_ok=True)
    public = [{k: (v if k != "runs" else [{x: r[x] for x in ("seed", "status", "test_accuracy", "mlflow_run_id",
                                                              "error")} for r in v])
               for k, v in c.items()} for c in configs]
    result = {"seeds": seeds, "steps": cfg.steps, "reference": DEFAULT, "configs": public}
    (out / "confirm.md").write_text(markdown(cfg, sweep_dir.name, seeds, configs))
    (out / "confirm.json").write_text(json.dumps(result, indent=1, default=str))
    result["artifacts"] = [str(out / "confirm.md"), str(out / "confirm.json")]
    for f in result["artifacts"]:
        parent.log_artifact(Path(f))
    metrics, tags = {}, {}
    for c in configs:
        p = c["paired"]
        if p and p["delta_acc"] is not None:
            key = f"confirm.{c['label']}"
            metrics |= {f"{key}.delta_acc": p["delta_acc"], f"{key}.ci95_lo": p["ci95"][0],
                        f"{key}.ci95_hi": p["ci95"][1], f"{key}.p_value": p["p_value"]}
            tags[f"{key}.verdict"] = p["verdict"]
    parent.log_metrics(metrics, 0)
    if tags:
        parent.set_tags(tags)
    return result
