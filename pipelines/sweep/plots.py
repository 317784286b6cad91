"""The sweep's plots (parent-run artifacts), each titled with what was swept (``mezo on sst2 (tiny:llama)``)."""
from __future__ import annotations

from pathlib import Path

from .results import label_of, pareto_front, pick_best

STATUS_STYLE = {"finished": ("C0", "o", "finished"), "stopped_early": ("C1", "s", "stopped early (pruned)"),
                "failed": ("C3", "x", "failed"), "interrupted": ("C7", "^", "interrupted")}

MARKERS, LINES = "osD^vPX", ("-", "--", "-.", ":")


def make_plots(rows: list[dict], objectives, imps: dict[str, float], out: Path, *, what: str = "",
               imps_note: str | None = None) -> list[Path]:
    """Objective vs trial, accuracy vs forward passes (a curve per trial; the Pareto front only for several
    objectives), parameter importances (or why they are undefined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = f": {what}" if what else ""
    paths = [objective_vs_trial(plt, rows, objectives, out / "objective_vs_trial.png", suffix),
             accuracy_vs_forward_passes(plt, rows, objectives, out / "accuracy_vs_forward_passes.png", suffix),
             param_importances(plt, imps, objectives, out / "param_importances.png", suffix, imps_note)]
    return paths


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def objective_vs_trial(plt, rows, objectives, path: Path, suffix: str) -> Path:
    from matplotlib.ticker import MaxNLocator

    name, metric, mode = objectives[0]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = [(i, r) for i, r in enumerate(rows) if r.get(metric) is not None]
    for status, (colour, marker, label) in STATUS_STYLE.items():
        pts = [(i, r[metric]) for i, r in xs if r["status"] == status]
        if pts:
            ax.scatter(*zip(*pts), c=colour, marker=marker, label=label, zorder=3)
    if xs:
        i, v = zip(*[(i, r[metric]) for i, r in xs])
        best = [max(v[: j + 1]) if mode == "max" else min(v[: j + 1]) for j in range(len(v))]
        ax.step(i, best, where="post", color="C2", label="best so far")
        ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(rows) <= 20:  # the trials' names, as in the runs table
        ax.set_xticks(range(len(rows)), [label_of(r) for r in rows])
    ax.set_xlabel("trial (in start order)"), ax.set_ylabel(metric)
    ax.set_title(f"{name} ({'higher' if mode == 'max' else 'lower'} is better) per trial{suffix}", fontsize=9)
    return _save(plt, fig, path)


def accuracy_vs_forward_passes(plt, rows, objectives, path: Path, suffix: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    best = pick_best(rows, objectives)
    curves = [r for r in rows if r["curve"]]
    for k, r in enumerate(curves):  # hollow markers shrinking trial by trial: coinciding curves stay visible
        f, a = zip(*r["curve"])
        status = "" if r["status"] == "finished" else f" ({r['status'].replace('_', ' ')})"
        ax.plot(f, a, MARKERS[k % len(MARKERS)], ls=LINES[k % len(LINES)], lw=1.0, alpha=0.85, color=f"C{k % 10}",
                ms=max(3.0, 9.0 - 1.2 * (k % 6)) if len(f) <= 20 else 0, mfc="none",
                label=f"{label_of(r)}{status}")
    if best is not None and best["curve"]:
        f, a = max(best["curve"], key=lambda p: (p[1], -p[0]))  # its best evaluation
        ax.plot([f], [a], "*", ms=13, color="k", zorder=4,
                label=f"best: {label_of(best)}")
    if len(objectives) > 1:  # a front only means something for several objectives
        front = sorted(pareto_front(rows, objectives), key=lambda r: r["forward_passes"] or 0.0)
        front = [r for r in front if r.get("forward_passes") is not None and r.get("best_dev_accuracy") is not None]
        if front:
            ax.plot([r["forward_passes"] for r in front], [r["best_dev_accuracy"] for r in front], "kD--", ms=6,
                    mfc="none", label=f"Pareto front ({', '.join(n for n, _, _ in objectives)})")
    if curves:
        ax.legend(fontsize=7, ncol=max(1, (len(curves) + 11) // 12), loc="best")
    ax.set_xlabel("forward passes"), ax.set_ylabel("dev accuracy")
    ax.set_title(f"dev accuracy vs forward passes per trial{suffix}", fontsize=9)
    return _save(plt, fig, path)


def param_importances(plt, imps, objectives, path: Path, suffix: str, note: str | None) -> Path:
    _, metric, _ = objectives[0]
    if imps and len({round(v, 12) for v in imps.values()}) == 1 and len(imps) > 1:
        imps, note = {}, note or "all parameters equally important (no signal)"
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.4 * max(len(imps), 3)))
    if imps:
        names = list(imps)[::-1]
        ax.barh(names, [imps[n] for n in names])
        ax.set_xlabel(f"importance for {metric} (Optuna, PED-ANOVA)")
    else:
        import textwrap

        ax.text(0.5, 0.5, textwrap.fill(f"importances undefined: {note or 'not computed'}", 70), ha="center",
                va="center", fontsize=9, transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"parameter importances{suffix}", fontsize=9)
    return _save(plt, fig, path)
