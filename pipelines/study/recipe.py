"""Run, report and archive a study (``zo study run|report|archive FILE``).

*run*: the study's arms on its tasks and seeds as ``zo compare`` runs into ``<runs>/runs/<task>/<arm>/seed<k>``
(one comparison per group of arms sharing their tasks and seeds, each with the reference arm), so everything
``zo compare`` does holds: finished runs are reused, cut-off runs resume from their checkpoints, the runs are
children of one MLflow parent run in the study's experiment (where their curve PNGs, trajectories and checkpoints
go as artifacts), locally or on Ray.

*report*: per report of the study, ``<results>/<report>/results.md|json|csv`` and one ``dev_curves_<task>.png`` per
task, and the Markdown block it names; each run is read from its run directory when there is one, else from the
archive (:mod:`pipelines.study.archive`), so a fresh clone reproduces every committed number with this one command.

*archive*: the finished runs' compact record into ``<results>/runs.jsonl`` and ``predictions.npz``.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.compare import collect, markdown, plan, plots, update_readme, write_csv
from pipelines.compare import run as run_compare
from pipelines.compare.config import CompareConfig
from pipelines.compare.report import check_readme, machine_line, reference_not_above_start
from zoplatform.config import validate

from . import archive
from .schema import Study


def compare_config(study: Study, arms: list[str], tasks: list[str], seeds: list[int], reference: str, out: Path,
                   *, report_only: bool = False, tracking_uri: str | None = None) -> CompareConfig:
    """The ``zo compare`` configuration of some of the study's arms."""
    configs = {a: study.arms[a].options() for a in arms}
    return validate(CompareConfig, {
        **study.protocol.model_dump(), "methods": arms, "tasks": tasks, "seeds": seeds, "reference": reference,
        "configs": {a: o for a, o in configs.items() if o}, "backend": study.execution.backend,
        "resources": study.execution.resources, "tracking_uri": tracking_uri or study.tracking.uri,
        "experiment": study.tracking.experiment, "out": str(out), "report_only": report_only},
        f"study {study.name}")


def groups(study: Study, arms: list[str], tasks: list[str], seeds: list[int]) -> list[tuple[list, list, list]]:
    """The comparisons that make the study's runs: the arms that share their tasks and seeds, with the reference
    arm (its runs are reused), in the study's order; filtered to ``arms``, ``tasks`` and ``seeds``."""
    out: dict[tuple, list[str]] = {}
    for a in arms:
        key = (tuple(t for t in study.arm_tasks(a) if t in tasks), tuple(s for s in study.arm_seeds(a) if s in seeds))
        if key[0] and key[1]:
            out.setdefault(key, []).append(a)
    ref = study.reference
    return [([ref, *(a for a in group if a != ref)], list(t), list(s)) for (t, s), group in out.items()]


def run(study: Study, *, arms: list[str], tasks: list[str], seeds: list[int], runs_dir: Path | None = None,
        tracking_uri: str | None = None, log=print) -> dict[str, Any]:
    """Run what is missing (every comparison is planned, so validated, before the first runs)."""
    t0 = time.perf_counter()
    out = runs_dir or study.runs_dir
    todo = groups(study, arms, tasks, seeds)
    cfgs = [compare_config(study, g, t, s, study.reference, out, tracking_uri=tracking_uri) for g, t, s in todo]
    for cfg in cfgs:
        plan(cfg, out)
    results = []
    for i, cfg in enumerate(cfgs, 1):
        log(f"study {study.name} [{i}/{len(cfgs)}]: {', '.join(cfg.methods)} on {', '.join(cfg.tasks)}, seeds "
            f"{', '.join(map(str, cfg.seeds))}")
        results.append(run_compare(cfg, recipe=f"zo study run ({study.name})"))
    statuses = [r["status"] for r in results]
    status = "failed" if "failed" in statuses else "partial" if "partial" in statuses else "finished"
    return {"status": status, "study": study.name, "comparisons": len(results),
            "runs": sum(r["runs"] for r in results), "failed": sum(r["failed"] for r in results),
            "missing": sum(r["missing"] for r in results), "runs_dir": str(out),
            "parent_run_ids": sorted({r["parent_run_id"] for r in results}),
            "wall_time_s": round(time.perf_counter() - t0, 2)}


def _order(study: Study) -> list[archive.Key]:
    """Every run of the study, task by task, arm by arm, seed by seed (the archive's order)."""
    planned = set(study.planned())
    return [(t, a, s) for t in study.tasks for a in study.arms for s in study.seeds if (a, t, s) in planned]


def pack(study: Study, runs_dir: Path | None = None) -> dict[str, Any]:
    """``zo study archive``: the runs on disk into the committed archive."""
    out = archive.pack(study.results_dir, runs_dir or study.runs_dir, _order(study))
    return {"study": study.name, "archive": str(study.results_dir / archive.RUNS_FILE), **out}


def _assemble(study: Study, runs_dir: Path, tree: Path) -> dict[str, int]:
    """``tree/runs/<task>/<arm>/seed<k>``: each run's directory (linked) when it has one, else its archive entry
    rebuilt; returns how many came from where."""
    entries, arrays = archive.load(study.results_dir)
    got = {"run_dirs": 0, "archive": 0, "absent": 0}
    for key in _order(study):
        task, arm, seed = key
        rel = Path("runs") / task / arm / f"seed{seed}"
        src, dst = runs_dir / rel, tree / rel
        if (src / "state.json").is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src.resolve(), target_is_directory=True)
            got["run_dirs"] += 1
        elif key in entries:
            archive.materialise(entries[key], arrays, dst)
            got["archive"] += 1
        else:
            got["absent"] += 1
    return got


def report(study: Study, study_file: str, *, runs_dir: Path | None = None, log=print) -> dict[str, Any]:
    """``zo study report``: every report of the study (see the module docstring)."""
    runs_dir = runs_dir or study.runs_dir
    for r in study.reports:  # a missing block fails before anything is written
        if r.update:
            check_readme(Path(r.update), r.block)
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="zo-study-") as tmp, _without_data(Path(tmp)):
        tree = Path(tmp)
        sources = _assemble(study, runs_dir, tree)
        for r in study.reports:
            arms = r.arms or list(study.arms)
            cfg = compare_config(study, arms, r.tasks or study.tasks, study.seeds, r.reference or study.reference,
                                 tree, report_only=True)
            written += _write_report(study, study_file, r, cfg, plan(cfg, tree), tree)
            log(f"study {study.name}: report {r.name} -> {study.results_dir / r.name}/results.md")
    return {"study": study.name, "sources": sources, "files": written}


@contextmanager
def _without_data(empty: Path):
    """A report reads no task data (the runs recorded their split sizes); on a checkout without any, the data-dir
    check of ``zo compare``'s plan is pointed at an empty folder for the report's duration."""
    from zoplatform.data import resolve_data_dir
    from zoplatform.errors import DataError

    try:
        resolve_data_dir(None)
    except DataError:
        before = os.environ.get("ZO_DATA_DIR")
        os.environ["ZO_DATA_DIR"] = str(empty)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("ZO_DATA_DIR", None)
            else:
                os.environ["ZO_DATA_DIR"] = before
    else:
        yield


def _write_report(study: Study, study_file: str, r, cfg: CompareConfig, specs, tree: Path) -> list:
    runs, agg = collect(cfg, specs)
    for run_row in runs:  # where the study keeps the run in any checkout, not this report's temporary tree
        run_row["out_dir"] = str(study.runs_dir / Path(run_row["out_dir"]).relative_to(tree))
    machine = (machine_line(cfg.device, runs) if any(x.get("hardware") for x in runs)
               else "hardware not recorded by the runs")
    md = markdown(cfg, agg, machine, reference_not_above_start(runs, cfg.reference), runs)
    out = study.results_dir / r.name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("dev_curves_*.png"):  # one figure per task: a task no longer reported goes
        old.unlink()
    (out / "results.md").write_text(md)
    write_csv(agg, out / "results.csv")
    (out / "results.json").write_text(json.dumps({"aggregate": agg, "runs": runs}, indent=1, default=str))
    files = [out / "results.md", out / "results.csv", out / "results.json"]
    for f in plots(cfg, runs, agg, out):
        if f.name.startswith("dev_curves_"):
            files.append(f)
        else:  # peak memory is in the tables; git keeps one figure per task
            f.unlink()
    if r.update:
        update_readme(Path(r.update), md, f"zo study report {study_file}", r.block)
        files.append(Path(r.update))
    return [str(f) for f in files]


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
