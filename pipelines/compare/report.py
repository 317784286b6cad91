"""The comparison's results: per-run rows and aggregates (:func:`collect`), the paired analysis of finished runs,
and the tables, CSV, plots and README block.

Used by ``zo compare`` (:mod:`pipelines.compare`) and by a sweep's confirmation (:mod:`pipelines.sweep.confirm`).  A run
here is a dict with at least ``label``, ``task``, ``seed``, ``status``, ``curve`` (``state.json``'s
``history.evals``) and ``out_dir`` (where ``predictions.npz`` is, for runs made since it is saved).

Paired analysis (:func:`paired_analysis`): every label against the reference, task by task, over the seeds both
finished; the statistics are :mod:`pipelines.stats`'s.  Δ test accuracy needs both runs' per-example predictions
with the same test examples (uids); a seed without them (an older run) is left out of the accuracy columns and said
so in the row's note, never an error.  Δ final dev loss and Δ dev-loss AUC come from the dev curves.  Differences
are fractions in JSON/CSV (like ``test_accuracy_mean``) and points in the markdown.
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import stats
from pipelines.finetune.runinfo import PREDICTIONS_FILE
from zoplatform.errors import ConfigError

if TYPE_CHECKING:
    from .config import CompareConfig, RunSpec

ZERO_SHOT = "zero-shot"
BOOTSTRAP_REPLICATES = 4000


# =========================================================================== runs and aggregates
def _curve(out_dir: Path) -> list[dict]:
    state = out_dir / "state.json"
    if not state.is_file():
        return []
    return json.loads(state.read_text())["history"]["evals"]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def forwards_to_reach(curve: list[dict], target: float, key: str = "dev_accuracy") -> int | None:
    """Forward passes at the first dev evaluation with accuracy ≥ target (``key="dev_loss"``: loss ≤ target)."""
    for e in curve:
        if (e[key] <= target + 1e-12) if key == "dev_loss" else (e[key] >= target - 1e-12):
            return int(e["forwards"])
    return None


def reference_not_above_start(runs: list[dict], reference: str) -> list[str]:
    """Tasks where no finished run of the reference ended above its own first (step-0) dev accuracy: there the
    target is met at step 0 by any method that starts from the same model, so "fwd to reference" orders nothing."""
    tasks: dict[str, bool] = {}
    for r in runs:
        if r["label"] == reference and r["status"] == "done" and r["curve"]:
            flat = r["curve"][-1]["dev_accuracy"] <= r["curve"][0]["dev_accuracy"]
            tasks[r["task"]] = tasks.get(r["task"], True) and flat
    return [t for t, flat in tasks.items() if flat]


def collect(cfg: CompareConfig, specs: list[RunSpec]) -> tuple[list[dict], list[dict]]:
    """Per-run rows and per-(label, task) aggregate rows."""
    runs = []
    for s in specs:
        curve = _curve(s.out_dir)
        sm = s.summary if s.status == "done" else {}
        runs.append({"label": s.label, "method": s.config.method, "task": s.task, "seed": s.seed,
                     "status": s.status, "steps": s.config.steps,
                     "test_accuracy": sm.get("test_accuracy"),
                     "final_dev_accuracy": curve[-1]["dev_accuracy"] if curve else None,
                     "final_dev_loss": curve[-1]["dev_loss"] if curve else None,
                     "forward_passes": sm.get("forward_passes"), "wall_time_s": sm.get("wall_time_s"),
                     "peak_memory_mb": sm.get("peak_memory_mb"), "mlflow_run_id": sm.get("mlflow_run_id"),
                     "hardware": sm.get("hardware"), "num_train": sm.get("num_train"), "num_dev": sm.get("num_dev"),
                     "error": sm.get("error"), "curve": curve, "out_dir": str(s.out_dir),
                     "direction": direction_of(s.config), "precision": precision_of(s.config)})
    for key, col in (("dev_accuracy", "forwards_to_reference"), ("dev_loss", "forwards_to_reference_loss")):
        ref_final = {(r["task"], r["seed"]): r[f"final_{key}"] for r in runs
                     if r["label"] == cfg.reference and r[f"final_{key}"] is not None}
        for r in runs:
            target = ref_final.get((r["task"], r["seed"]))
            r[col] = (forwards_to_reach(r["curve"], target, key)
                      if target is not None and r["curve"] and r["label"] != ZERO_SHOT else None)
    agg = []
    for label in cfg.methods:
        for task in cfg.tasks:
            rs = [r for r in runs if r["label"] == label and r["task"] == task]
            done = [r for r in rs if r["status"] == "done"]
            acc_m, acc_s = _mean_std([r["test_accuracy"] for r in done])
            loss_m, loss_s = _mean_std([r["final_dev_loss"] for r in done])
            reached = [r["forwards_to_reference"] for r in done if r["forwards_to_reference"] is not None]
            reached_loss = [r["forwards_to_reference_loss"] for r in done if r["forwards_to_reference_loss"] is not None]
            mem = [r["peak_memory_mb"] for r in done if r["peak_memory_mb"] is not None]
            agg.append({"label": label, "method": rs[0]["method"], "task": task, "seeds": len(done),
                        "failed": sum(r["status"] == "failed" for r in rs),
                        "test_accuracy_mean": acc_m, "test_accuracy_std": acc_s,
                        "final_dev_loss_mean": loss_m, "final_dev_loss_std": loss_s,
                        "forwards_to_reference_mean": statistics.fmean(reached) if reached else None,
                        "reached_reference": f"{len(reached)}/{len(done)}",
                        "forwards_to_reference_loss_mean": statistics.fmean(reached_loss) if reached_loss else None,
                        "reached_reference_loss": f"{len(reached_loss)}/{len(done)}",
                        "wall_time_s_mean": _mean_std([r["wall_time_s"] for r in done])[0],
                        "peak_memory_mb_max": max(mem) if mem else None,
                        "steps": rs[0]["steps"], "forward_budget": cfg.budget(task)})
    paired = paired_analysis(runs, cfg.methods, cfg.tasks, cfg.reference)
    for a in agg:
        if (a["label"], a["task"]) in paired:
            a["paired"] = paired[(a["label"], a["task"])]
    return runs, agg


def paired_metrics(agg: list[dict]) -> dict[str, float]:
    """``paired.<label>.<task>.{delta_acc,ci95_lo,ci95_hi,p_value}`` of the rows with a paired accuracy."""
    out = {}
    for a in agg:
        p = a.get("paired")
        if p and p["delta_acc"] is not None:
            key = f"paired.{a['label']}.{a['task']}"
            out |= {f"{key}.delta_acc": p["delta_acc"], f"{key}.ci95_lo": p["ci95"][0],
                    f"{key}.ci95_hi": p["ci95"][1], f"{key}.p_value": p["p_value"]}
    return out


# =========================================================================== paired analysis
def load_predictions(out_dir: str | Path) -> dict | None:
    """A finished run's test predictions (``pred``, ``label``, ``uid``), or None for a run made before they were
    saved (or an unreadable file)."""
    import numpy as np

    path = Path(out_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("pred", "label", "uid")}
    except (OSError, ValueError, KeyError):
        return None


def _aligned(a: dict, b: dict):
    """(correct_a, correct_b, uids) over the same test examples in the same order, or None if the two runs were
    tested on different examples."""
    import numpy as np

    if a["uid"].shape == b["uid"].shape and np.array_equal(a["uid"], b["uid"]):
        order = np.arange(a["uid"].size)
    elif (len(set(a["uid"].tolist())) == a["uid"].size and a["uid"].size == b["uid"].size
          and set(a["uid"].tolist()) == set(b["uid"].tolist())):  # same examples, another order
        order = np.argsort(b["uid"])[np.argsort(np.argsort(a["uid"]))]
    else:
        return None
    if not np.array_equal(a["label"], b["label"][order]):
        return None
    return a["pred"] == a["label"], b["pred"][order] == b["label"][order], a["uid"]


def _final_loss(run: dict) -> float | None:
    return run["curve"][-1]["dev_loss"] if run.get("curve") else None


def _scalar_pairs(pairs: list[tuple[dict, dict]], value) -> dict | None:
    got = [(value(a), value(b)) for a, b in pairs]
    got = [(x, y) for x, y in got if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not got:
        return None
    return stats.paired_t([x for x, _ in got], [y for _, y in got], higher_is_better=False)


def paired_one(runs_a: list[dict], runs_ref: list[dict], *, seed: int = 0,
               B: int = BOOTSTRAP_REPLICATES) -> dict:
    """Runs of one label against the reference's on one task, paired by seed (finished runs only)."""
    ref = {r["seed"]: r for r in runs_ref if r["status"] == "done"}
    pairs = [(r, ref[r["seed"]]) for r in sorted(runs_a, key=lambda r: r["seed"])
             if r["status"] == "done" and r["seed"] in ref]
    out: dict[str, Any] = {"delta_acc": None, "ci95": None, "p_value": None, "verdict": None, "seeds": 0,
                           "half_width": None, "seed_share": None, "mcnemar": [], "note": None}
    notes, acc_a, acc_b, uids = [], [], [], []
    no_preds = []
    for a, b in pairs:
        pa, pb = load_predictions(a["out_dir"]), load_predictions(b["out_dir"])
        if pa is None or pb is None:
            no_preds.append(a["seed"])
            continue
        al = _aligned(pa, pb)
        if al is None:
            notes.append(f"seed {a['seed']}: tested on other examples than the reference")
            continue
        acc_a.append(al[0]), acc_b.append(al[1]), uids.append(al[2])
        out["mcnemar"].append({"seed": a["seed"], **stats.mcnemar_exact(al[0], al[1])})
    if no_preds:
        notes.insert(0, f"seed{'s' if len(no_preds) > 1 else ''} {', '.join(map(str, no_preds))} without "
                        f"{PREDICTIONS_FILE} (older run{'s' if len(no_preds) > 1 else ''})")
    if acc_a:
        r = stats.paired_accuracy(acc_a, acc_b, uids, B=B, seed=seed)
        out.update(delta_acc=r["delta"], ci95=r["ci95"], p_value=r["p_value"], verdict=r["verdict"],
                   seeds=r["seeds"], half_width=r["half_width"], seed_share=r["seed_share"])
    out["delta_final_dev_loss"] = _scalar_pairs(pairs, _final_loss)
    out["delta_dev_loss_auc"] = _scalar_pairs(pairs, lambda r: stats.loss_auc(r.get("curve") or []))
    out["note"] = "; ".join(notes) or None
    return out


def stable_seed(*parts: str) -> int:
    """A bootstrap seed from names (not positions), so adding a method leaves the others' figures unchanged."""
    import zlib

    return zlib.crc32("/".join(parts).encode())


def paired_analysis(runs: list[dict], labels: Sequence[str], tasks: Sequence[str], reference: str,
                    B: int = BOOTSTRAP_REPLICATES) -> dict[tuple[str, str], dict]:
    """(label, task) -> the paired comparison with the reference, for every label but the reference."""
    out = {}
    for task in tasks:
        ref = [r for r in runs if r["label"] == reference and r["task"] == task]
        for label in labels:
            if label != reference:
                mine = [r for r in runs if r["label"] == label and r["task"] == task]
                out[(label, task)] = paired_one(mine, ref, seed=stable_seed(label, reference, task), B=B)
    return out


def _pts(x, signed: bool = True, fmt: str = "{:+.1f}") -> str:
    return "–" if x is None else (fmt if signed else "{:.1f}").format(100 * x)


def _interval(d: dict | None, scale: float = 100.0, fmt: str = "{:+.1f}") -> str:
    """``Δ [lo, hi]`` (Δ alone for one seed, – for none)."""
    if not d or d.get("delta") is None:
        return "–"
    v = fmt.format(scale * d["delta"])
    if d.get("ci95") is None:
        return f"{v} (n=1)"
    lo, hi = (fmt.format(scale * x) for x in d["ci95"])
    return f"{v} [{lo}, {hi}]" + ("" if d.get("verdict") in (None, "no difference") else f" {d['verdict']}")


def paired_table(rows: list[tuple[str, str, dict]], reference: str) -> list[str]:
    """Markdown lines of the paired comparison: ``rows`` = (label, task, paired_one(...))."""
    lines = [f"Paired against `{reference}` over the seeds both finished (same data sample, order and test "
             f"examples per seed); Δ = method − `{reference}` in accuracy points (JSON/CSV: fractions), 95% "
             f"intervals from a hierarchical paired bootstrap over seeds and test examples "
             f"(`pipelines/stats.py`); verdict at 95%; *resolves ±* is the interval's half-width, the smallest "
             f"difference this design can call, and *seed var* the share of its variance that more seeds would "
             f"reduce (the rest is the shared test set's); McNemar: seeds whose exact test has p < 0.05; dev-loss "
             f"columns: paired t intervals over seeds (lower is better), AUC = dev loss averaged over the run's "
             f"forward passes.", "",
             "| method | task | seeds | Δ test acc (pts) [95% CI] | p | verdict | resolves ± | seed var | McNemar "
             "p<0.05 | Δ final dev loss | Δ dev-loss AUC |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for label, task, p in rows:
        acc = "–" if p["delta_acc"] is None else _interval({"delta": p["delta_acc"], "ci95": p["ci95"]})
        pv = "–" if p["p_value"] is None else (f"{p['p_value']:.3f}" if p["p_value"] >= 0.001 else "<0.001")
        share = "–" if p["seed_share"] is None else f"{100 * p['seed_share']:.0f}%"
        mc = "–" if not p["mcnemar"] else f"{sum(m['p_value'] < 0.05 for m in p['mcnemar'])}/{len(p['mcnemar'])}"
        seeds = str(p["seeds"]) if p["seeds"] else "–"
        lines.append(f"| {label} | {task} | {seeds} | {acc} | {pv} | {p['verdict'] or '–'} | "
                     f"{_pts(p['half_width'], signed=False)} | {share} | {mc} | "
                     f"{_interval(p['delta_final_dev_loss'], 1.0, '{:+.3f}')} | "
                     f"{_interval(p['delta_dev_loss_auc'], 1.0, '{:+.3f}')} |")
        if p.get("note"):
            notes.append(f"{label} on {task}: {p['note']}")
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return lines


# =========================================================================== tables, CSV, plots, README
def _pm(m, s, n: int, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    """``mean ± std`` (just the value for one seed, – for none)."""
    if n == 0 or m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    v = fmt.format(scale * m)
    return v if n == 1 else f"{v} ± {fmt.format(scale * s)}"


def _pct(a: dict) -> str:
    return _pm(a["test_accuracy_mean"], a["test_accuracy_std"], a["seeds"], 100.0)


def _num(x, fmt="{:.0f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _small_tasks(cfg: CompareConfig, runs: Sequence[dict] | None = None) -> str:
    """The tasks whose train split is too small for the requested sizes (finetune fits them): the sizes the
    finished runs recorded (so a report needs no data), else the data dir's."""
    from pipelines.finetune.sampling import split_sizes
    from zoplatform.data import resolve_data_dir

    fitted = {r["task"]: (r["num_train"], r["num_dev"]) for r in runs or () if r.get("num_train") is not None}
    if not fitted:
        data_dir = resolve_data_dir(cfg.data_dir)
        fitted = {t: split_sizes(t, data_dir, cfg.num_train, cfg.num_dev) for t in cfg.tasks}
    fitted = {t: fitted[t] for t in cfg.tasks if t in fitted}
    return "".join(f" ({t}: {n} train / {d} dev, its train split is small)" for t, (n, d) in fitted.items()
                   if n != cfg.num_train)


def direction_of(ft) -> str:
    """The direction law a run draws: its ``direction``, else its method's default (LOREN: its own sampler)."""
    import zoplatform

    if ft.method in ("fo", ZERO_SHOT) or ft.steps == 0:
        return "-"
    if ft.direction:
        return ft.direction
    return getattr(zoplatform.make(ft.method, lr=1e-6).config, "direction", None) or "own"


def precision_of(ft) -> str:
    from zoplatform.precision import DTYPE_NAMES

    return ft.precision or DTYPE_NAMES[ft.dtype]


def settings_line(runs: list[dict], labels: Sequence[str]) -> str:
    """How the rows were run: direction law and precision, one phrase when every row shares them, else per
    label (``-``: no ZO directions, as fo and zero-shot)."""
    per = {}
    for label in labels:
        rs = [r for r in runs if r["label"] == label]
        per[label] = (", ".join(sorted({r["direction"] for r in rs})), ", ".join(sorted({r["precision"] for r in rs})))
    zo = {v for v in per.values() if v[0] != "-"}
    if len(zo) == 1 and len({v[1] for v in per.values()}) == 1:
        d, p = zo.pop()
        return f"Every row: {d} directions (where a method draws them), precision {p}."
    return "Direction law / precision per row: " + "; ".join(f"{k} {d}/{p}" for k, (d, p) in per.items()) + "."


def markdown(cfg: CompareConfig, agg: list[dict], machine: str, flat_tasks: Sequence[str] = (),
             runs: list[dict] | None = None) -> str:
    """The report: accuracy matrix, then the per-(method, task) details; ``flat_tasks`` are those where the
    reference did not improve on its step-0 dev accuracy (see :func:`reference_not_above_start`)."""
    own = "".join(f"; {t}: {b} ({b // 2} steps)" for t, b in cfg.task_budgets.items())
    lines = [f"Model `{cfg.model}`, {machine}; budget {cfg.forward_budget} forward passes per run "
             f"(two-point methods: {cfg.forward_budget // 2} steps{own}), batch {cfg.batch_size}, seeds "
             f"{', '.join(map(str, cfg.seeds))}, {cfg.num_train} train examples{_small_tasks(cfg, runs)}; "
             f"mean ± std over seeds." + (f" {settings_line(runs, cfg.methods)}" if runs else ""), "",
             "Test accuracy (%):", "",
             "| method | " + " | ".join(cfg.tasks) + " |", "|---|" + "---|" * len(cfg.tasks)]
    for label in cfg.methods:
        cells = []
        for task in cfg.tasks:
            a = next(x for x in agg if x["label"] == label and x["task"] == task)
            cells.append(_pct(a) + ("" if a["seeds"] in (0, len(cfg.seeds)) else f" (n={a['seeds']})"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Details (forward passes to reach `{cfg.reference}`'s final dev accuracy, and its final dev "
                  f"loss, per seed: mean over the seeds that reach it):", "",
              "| method | task | steps | test acc % | final dev loss | fwd to ref acc | reached | fwd to ref loss | "
              "reached | wall s | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        loss = _pm(a["final_dev_loss_mean"], a["final_dev_loss_std"], a["seeds"], fmt="{:.3f}")
        lines.append(f"| {a['label']} | {a['task']} | {a['steps']} | {_pct(a)} | {loss} | "
                     f"{_num(a['forwards_to_reference_mean'])} | {a['reached_reference']} | "
                     f"{_num(a.get('forwards_to_reference_loss_mean'))} | {a.get('reached_reference_loss', '–')} | "
                     f"{_num(a['wall_time_s_mean'])} | {_num(a['peak_memory_mb_max'])} |")
    paired = [(a["label"], a["task"], a["paired"]) for a in agg if a.get("paired")]
    if flat_tasks:
        lines += ["", f"On {', '.join(flat_tasks)}, `{cfg.reference}` ended no higher than its step-0 dev accuracy, "
                      "so every method reaches that target at 0 forward passes and the column orders nothing there."]
    if paired:
        lines += ["", *paired_table(paired, cfg.reference)]
    return "\n".join(lines) + "\n"


def _flat(row: dict) -> dict:
    """Nested dicts as ``outer.inner`` columns, 2-element intervals as ``_lo``/``_hi``, lists of dicts dropped."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out |= {f"{k}.{kk}": vv for kk, vv in _flat(v).items()}
        elif k.endswith("ci95"):
            out[f"{k}_lo"], out[f"{k}_hi"] = v if v else (None, None)
        elif not (isinstance(v, list) and v and isinstance(v[0], dict)):
            out[k] = v
    return out


def write_csv(agg: list[dict], path: Path) -> Path:
    rows = [_flat(a) for a in agg]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path



def readme_markers(block: str = "results") -> tuple[str, str]:
    """The comment lines around a README's generated block named ``block``."""
    return f"<!-- {block}:start -->", f"<!-- {block}:end -->"


README_START, README_END = readme_markers()  # the Results block's


def check_readme(path: Path, block: str = "results") -> None:
    """Raise ConfigError unless ``path`` is a file holding the ``block`` markers (checked before any run)."""
    start, end = readme_markers(block)
    if not path.is_file():
        raise ConfigError(f"--update-readme: {path} does not exist")
    text = path.read_text()
    if start not in text or end not in text:
        raise ConfigError(f"--update-readme: {path} has no {start} ... {end} block (--readme-block {block})")


def update_readme(path: Path, body: str, recipe: str, block: str = "results") -> None:
    """Replace the README's generated block ``block`` (default: Results) between its markers."""
    check_readme(path, block)
    start, end = readme_markers(block)
    head, rest = path.read_text().split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n<!-- generated by: {recipe} -->\n\n{body}\n{end}{tail}")


def machine_line(device: str, runs: Sequence[dict] = ()) -> str:
    """The report header's machine: the hardware the finished runs recorded (with run counts when they differ:
    wall times compare only within one), else — runs from before summaries recorded it — this machine's."""
    import platform

    hw = Counter(r.get("hardware") for r in runs if r.get("status") == "done")
    if any(hw):
        def runs_of(h):
            return f"{hw[h]} run{'s' if hw[h] > 1 else ''}"

        parts = [f"{h} ({runs_of(h)})" for h in sorted(h for h in hw if h)]
        if hw[None]:
            parts.append(f"hardware not recorded ({runs_of(None)})")
        if len(parts) == 1:
            return f"runs on {next(h for h in hw if h)}"
        return f"runs on {', '.join(parts)}: wall times compare only within one"
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


