"""Recipe: every method on the same tasks and seeds at an equal forward-pass budget.

``zo compare --methods mezo,curvzo --tasks sst2,rte --seeds 3 --forward-budget 600``
runs every (method, task, seed) as one ``zo finetune`` run (a child of one MLflow
parent run), then writes a results report:

- ``results.md`` / ``results.csv``: mean ± std test accuracy per method × task,
  final dev loss, forward passes to reach the reference method's (MeZO's) final
  dev accuracy, wall time, peak memory, and every method's paired verdict against
  the reference (Δ test accuracy with a 95% interval, McNemar per seed, Δ dev
  loss and dev-loss AUC: :mod:`pipelines.compare.report`, :mod:`pipelines.stats`);
- ``dev_curves_<task>.png`` (dev accuracy and dev loss vs forward passes, one
  curve per method, mean over seeds with a ±std band) and ``peak_memory.png``.

A *method label* is a registered ZO method (paper-default config), ``fo`` (the
first-order AdamW baseline), ``zero-shot`` (the base model, no training), or a
name defined in ``--configs FILE``: a YAML mapping ``label -> options`` (the
method-level options of ``zo finetune``: ``method``, ``lr``, ``eps``,
``method_options``, ``direction``, ...) or ``label -> path`` of a
``best_config.yaml`` exported by ``zo sweep``.  Options that must be equal
across methods (model, task, seed, budget, data sizes, batch size) belong to the
comparison and are taken from it.

Equal cost: a run gets ``forward_budget // forwards_per_step`` steps (MeZO and its
two-point relatives: budget/2 steps; LOREN with K queries: budget/K).  Every method
of a task gets the same budget; ``--task-budget cb=200`` gives a task its own
(e.g. a reduced one for a long-input task on a small machine).  The
first-order baseline gets as many steps as MeZO; its forward+backward steps are
counted separately and its peak memory is reported next to the others.

Each run lives in ``<out>/runs/<task>/<label>/seed<k>`` (so a label must be one
safe path component: no ``/``, ``\\`` or ``..``); the driver holds ``<out>/.lock``
for its life, so a second ``zo compare`` on the same ``--out`` is refused in one
line instead of duplicating its runs under a second parent.  A run whose
``summary.json`` exists with the same configuration is reused, one with a
checkpoint is resumed, so re-running an interrupted comparison loses nothing.
Runs go one after another in fresh processes (``--backend local``; peak memory is
then each run's own) or in parallel as Ray tasks (``--backend ray``, one fresh
worker process per run).
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.finetune.config import FO_METHODS, FinetuneConfig
from zoplatform.config import read_mapping, validate
from zoplatform.errors import ConfigError

from .config import METHOD_KEYS, OPERATIONAL, CompareConfig, RunSpec
from .execute import _threads_of, execute_local, execute_ray
from .plots import plots
from .report import (
    ZERO_SHOT,
    check_readme,
    collect,
    machine_line,
    markdown,
    paired_metrics,
    reference_not_above_start,
    update_readme,
    write_csv,
)


# =========================================================================== 1. plan and validate
def _label_options(cfg: CompareConfig, label: str) -> dict[str, Any]:
    """The method-level finetune options of a label."""
    import zoplatform

    entry = cfg.configs.get(label)
    if entry is None:
        if label == ZERO_SHOT:
            return {"method": "mezo"}
        if label in FO_METHODS or label in zoplatform.method_names():
            return {"method": label}
        known = sorted({*zoplatform.method_names(), *FO_METHODS, ZERO_SHOT, *cfg.configs})
        raise ConfigError(f"unknown method label {label!r}: use a method ({', '.join(known)}) or define it in "
                          f"--configs")
    if isinstance(entry, str):  # a zo sweep best_config.yaml (or any finetune config file)
        entry = read_mapping(entry, f"--configs: {label}: config file")
    if not isinstance(entry, dict):
        raise ConfigError(f"--configs: {label} must map to finetune options or a config file path, got {entry!r}")
    unknown = sorted(set(entry) - set(FinetuneConfig.model_fields))
    if unknown:
        raise ConfigError(f"--configs: {label}: {unknown[0]!r} is not a finetune option; method hyperparameters go "
                          f"under method_options")
    owned = sorted(set(entry) - METHOD_KEYS)
    if owned:
        print(f"note: {label}: ignoring {', '.join(owned)} (set by the comparison)", file=sys.stderr)
    opts = {k: v for k, v in entry.items() if k in METHOD_KEYS}
    opts.setdefault("method", label)
    return opts


def steps_for(method, budget: int) -> int:
    """Steps that spend ``budget`` forward passes (``method`` None = fo: as many steps as MeZO)."""
    per_step = 2 if method is None else method.forwards_per_step
    return max(1, budget // per_step)


def plan(cfg: CompareConfig, out: Path) -> list[RunSpec]:
    """Every run's validated finetune config; fails (one line) on any bad input."""
    from pipelines.finetune.config import check_inputs, resolve_policy_option
    from zoplatform.data import get_task

    for t in cfg.tasks:
        get_task(t)
    if cfg.reference not in cfg.methods:
        raise ConfigError(f"--reference {cfg.reference!r} is not among --methods ({', '.join(cfg.methods)})")
    unused = sorted(set(cfg.configs) - set(cfg.methods))
    if unused:
        print(f"note: --configs defines labels not in --methods: {', '.join(unused)}", file=sys.stderr)
    _threads(cfg.resources)  # validates --resources
    specs = []
    options = {label: _label_options(cfg, label) for label in cfg.methods}
    policies: dict[str, str] = {}
    for seed in cfg.seeds:  # seed-major: every finished seed is a complete comparison
        for task in cfg.tasks:
            for label, opts in options.items():
                base = dict(model=cfg.model, task=task, seed=seed, batch_size=cfg.batch_size,
                            num_train=cfg.num_train, num_dev=cfg.num_dev, num_test=cfg.num_test,
                            data_dir=cfg.data_dir, device=cfg.device, dtype=cfg.dtype, zero_shot=False,
                            precision=cfg.precision,
                            head_init=cfg.head_init,
                            progress=False, experiment=cfg.experiment, tracking_uri=cfg.tracking_uri,
                            run_name=f"{label} {task} s{seed}")
                ft = validate(FinetuneConfig, {**base, **opts, "steps": 1}, f"compare run {label}")
                if ft.policy is not None and ft.policy not in policies:  # a bad policy fails here, once
                    policies[ft.policy] = resolve_policy_option(ft, None).method_options["policy"]
                checked = ft if ft.policy is None else ft.model_copy(
                    update={"method_options": {**ft.method_options, "policy": policies[ft.policy]}})
                _, method, _ = check_inputs(checked)
                steps = 0 if label == ZERO_SHOT else steps_for(method, cfg.budget(task))
                eval_every = max(1, steps // cfg.eval_points) if steps else 1
                out_dir = out / "runs" / task / label / f"seed{seed}"
                ft = ft.model_copy(update={"steps": steps, "eval_every": eval_every, "out_dir": str(out_dir)})
                specs.append(RunSpec(label, task, seed, ft, out_dir))
    for s in specs:
        s.status, s.summary = _saved_status(s)
    return specs


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in OPERATIONAL}


def _saved_status(spec: RunSpec) -> tuple[str, dict]:
    """done (summary of the same config), resume (a ZO checkpoint of it), restart (an unfinished ``fo`` run,
    which has no checkpoint) or new; a different run in the directory is an error."""
    state = spec.out_dir / "state.json"
    if not state.is_file():
        return "new", {}
    saved = json.loads(state.read_text()).get("config", {})
    want = _comparable(spec.config.model_dump())
    defaults = {k: f.get_default(call_default_factory=True) for k, f in FinetuneConfig.model_fields.items()}
    have = _comparable(defaults | saved)  # options added since the run was made have their defaults
    diff = sorted(k for k in want if have.get(k) != want[k])
    if diff:
        k = diff[0]
        raise ConfigError(f"{spec.out_dir} holds a run with another {k} ({have.get(k)!r}, this comparison wants "
                          f"{want[k]!r}); use a new --out")
    summary_path = spec.out_dir / "summary.json"
    if summary_path.is_file():
        return "done", json.loads(summary_path.read_text())
    if spec.config.method in FO_METHODS:  # backprop keeps no checkpoint (its weights and AdamW state): run it again
        return "restart", {}
    return "resume", {}


def _threads(resources: str) -> int:
    from pipelines.raytools import parse_resources

    return max(1, int(parse_resources(resources)["cpu"]))


# =========================================================================== 2. execute
def run(cfg: CompareConfig, recipe: str = "zo compare") -> dict[str, Any]:
    """Plan, run what is missing, report.  Returns the JSON summary."""
    from zoplatform.models import PACKAGED, prepare_packaged
    from zoplatform.tracking.mlflow import resolve_tracking_uri

    t0 = time.perf_counter()
    out = Path(cfg.out)
    specs = plan(cfg, out)
    from pipelines.raytools import parse_resources

    resources = parse_resources(cfg.resources)
    if cfg.update_readme:
        check_readme(Path(cfg.update_readme), cfg.readme_block)
    uri = resolve_tracking_uri(cfg.tracking_uri)
    with lock_out(out):  # for the driver's life: a second comparison on this --out is refused, not interleaved
        if cfg.model in PACKAGED and not cfg.report_only:
            prepare_packaged(cfg.model)
        return _drive(cfg, recipe, out, specs, resources, uri, t0)


@contextmanager
def lock_out(out: Path):
    """Hold ``<out>/.lock`` (:class:`pipelines.locks.OutDirLock`); another live holder: one-line ConfigError."""
    from pipelines.locks import OutDirLock

    lock = OutDirLock(out)
    try:
        lock.__enter__()
    except ConfigError:
        try:
            holder = lock.path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise ConfigError(f"--out {out} is in use by another zo compare ({holder}); wait for it to end or "
                          f"choose another --out") from None
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


def _drive(cfg: CompareConfig, recipe: str, out: Path, specs: list[RunSpec], resources: dict, uri: str,
           t0: float) -> dict[str, Any]:
    """The locked part of :func:`run`: the parent run, the missing runs, the report."""
    from zoplatform.tracking import compare_runs_link, ending, print_links, set_note
    from zoplatform.tracking.mlflow import MlflowTracker

    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "compare.json"
    saved = json.loads(state_path.read_text()) if state_path.is_file() else {}
    name = parent_name(cfg)
    reopened = saved.get("parent_run_id") if saved.get("tracking_uri") == uri else None
    parent = MlflowTracker(tracking_uri=uri, experiment=cfg.experiment, run_name=name, run_id=reopened,
                           system_metrics=False)  # another store, or one without it: a new parent run
    persisted = cfg.model_dump(exclude={"update_readme", "readme_block", "report_only"})
    parent.start({**persisted, "runs": len(specs)},
                 tags={"zo.kind": "compare", "model": cfg.model, "methods": ",".join(cfg.methods),
                       "tasks": ",".join(cfg.tasks), "backend": cfg.backend, "out": str(out)})
    if reopened:
        parent.set_name(name)  # a parent made under the older naming (the --out folder's name)
    links = parent.ui_links()
    print_links(links, "comparison")
    state_path.write_text(json.dumps({"config": persisted, "parent_run_id": parent.run_id, "tracking_uri": uri},
                                     indent=1))
    todo = [] if cfg.report_only else [s for s in specs if s.status != "done"]
    n_done = [len(specs) - len(todo)]

    def progress(spec: RunSpec):
        n_done[0] += 1
        acc = spec.summary.get("test_accuracy")
        msg = f"test {acc:.3f}" if acc is not None else spec.summary.get("error", "")
        print(f"[{n_done[0]}/{len(specs)}] {spec.task} {spec.label} seed {spec.seed}: {spec.status} {msg}",
              file=sys.stderr, flush=True)

    with ending(parent, "interrupted; rerun the same command to continue (finished runs are reused)") as run_end:
        done = sum(s.status == "done" for s in specs)
        again = sum(s.status == "restart" for s in specs)
        note = f" ({again} interrupted fo run(s) start again: backprop keeps no checkpoint)" if again else ""
        print(f"compare: {len(specs)} runs, {done} already done, {len(todo)} to run{note}, backend {cfg.backend}",
              file=sys.stderr, flush=True)
        if cfg.backend == "ray":
            execute_ray(todo, parent.run_id, uri, resources, progress)
        else:
            execute_local(todo, parent.run_id, uri, _threads_of(resources), progress)
        runs, agg = collect(cfg, specs)
        md = markdown(cfg, agg, machine_line(cfg.device, runs), reference_not_above_start(runs, cfg.reference), runs)
        (out / "results.md").write_text(md)
        files = [out / "results.md", write_csv(agg, out / "results.csv")]
        (out / "results.json").write_text(json.dumps({"aggregate": agg, "runs": runs}, indent=1, default=str))
        files.append(out / "results.json")
        files += plots(cfg, runs, agg, out)
        for f in files:
            parent.log_artifact(f)
        parent.log_metrics(parent_metrics(agg) | paired_metrics(agg), 0)
        set_note(parent, parent_note(name, len(specs), md))
        parent.set_tags({f"paired.{a['label']}.{a['task']}.verdict": a["paired"]["verdict"] for a in agg
                         if a.get("paired") and a["paired"]["verdict"]})
        if cfg.update_readme:
            update_readme(Path(cfg.update_readme), md, recipe, cfg.readme_block)
        kids = [r["mlflow_run_id"] for r in runs if r.get("mlflow_run_id")]
        if links and kids:  # the child runs side by side (params and metrics in one table)
            links["children"] = compare_runs_link(uri, parent.experiment_id, kids)
        failed = [r for r in runs if r["status"] == "failed"]
        missing = [r for r in runs if r["status"] in ("new", "resume", "restart")]
        if failed:
            run_end.status = "FAILED"
            run_end.reason = f"{len(failed)} run(s) failed; rerun the same command to retry them"
        outcome = "failed" if failed else "partial" if missing else "finished"
        return {"status": outcome, "runs": len(specs), "failed": len(failed), "missing": len(missing),
                "aggregate": agg, "parent_run_id": parent.run_id, "tracking_uri": uri, "out": str(out),
                "mlflow_ui": links,
                "artifacts": [str(f) for f in files], "wall_time_s": round(time.perf_counter() - t0, 2)}


def parent_name(cfg: CompareConfig) -> str:
    """The parent run's name: what it compares (``compare mezo,fzoo on sst2,mr (smollm2-135m)``)."""
    return f"compare {','.join(cfg.methods)} on {','.join(cfg.tasks)} ({cfg.model})"


def parent_note(name: str, n_runs: int, md: str) -> str:
    """The parent run's description: its name, then results.md with the accuracy table first (the UI shows a
    description's first lines until "Show more")."""
    blocks = md.split("\n\n")
    if len(blocks) > 2 and blocks[1].startswith("Test accuracy"):
        blocks = blocks[1:3] + blocks[:1] + blocks[3:]
    return f"**{name}** ({n_runs} runs; this is its results.md)\n\n" + "\n\n".join(blocks)


def parent_metrics(agg: list[dict]) -> dict[str, float]:
    """The parent's summary values (step 0): per (label, task) the mean (and, over several seeds, the std) of the
    test accuracy and the mean final dev loss; per label the peak memory (max over its runs)."""
    out: dict[str, float] = {}
    for a in agg:
        key = f"{a['label']}/{a['task']}"
        values = [("test_accuracy", a["test_accuracy_mean"]), ("final_dev_loss", a["final_dev_loss_mean"])]
        if a["seeds"] > 1:
            values.append(("test_accuracy_std", a["test_accuracy_std"]))
        for name, v in values:
            if v is not None and not math.isnan(v):
                out[f"{name}/{key}"] = v
        if a["peak_memory_mb_max"] is not None:
            out[f"peak_memory_mb/{a['label']}"] = max(out.get(f"peak_memory_mb/{a['label']}", 0.0),
                                                      a["peak_memory_mb_max"])
    return out
