"""The sweep's plots (parent-run artifacts)."""
from __future__ import annotations

from pathlib import Path

from .results import pareto_front


def make_plots(rows: list[dict], objectives, imps: dict[str, float], out: Path) -> list[Path]:
    """Objective vs trial, accuracy vs forward passes (with the Pareto front), importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    name, metric, mode = objectives[0]
    xs = [(i, r[metric]) for i, r in enumerate(rows) if r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if xs:
        i, v = zip(*xs)
        ax.scatter(i, v, c=["C0" if rows[k]["status"] == "finished" else "C1" for k in i])
        best = [max(v[: j + 1]) if mode == "max" else min(v[: j + 1]) for j in range(len(v))]
        ax.step(i, best, where="post", color="C2", label="best so far")
        ax.legend()
    ax.set_xlabel("trial (orange: stopped early / pruned)"), ax.set_ylabel(metric), ax.set_title(f"{name} vs trial")
    fig.tight_layout()
    paths.append(out / "objective_vs_trial.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        if r["curve"]:
            f, a = zip(*r["curve"])
            ax.plot(f, a, "-", lw=0.8, alpha=0.6)
    acc_fp = [("acc", "best_dev_accuracy", "max"), ("forward_passes", "forward_passes", "min")]
    front = sorted(pareto_front(rows, acc_fp), key=lambda r: r["forward_passes"])
    if front:
        ax.plot([r["forward_passes"] for r in front], [r["best_dev_accuracy"] for r in front], "k*--", ms=9,
                label="Pareto front (best dev acc, forward passes)")
        ax.legend(fontsize=8)
    ax.set_xlabel("forward passes"), ax.set_ylabel("dev accuracy"), ax.set_title("accuracy vs forward passes")
    fig.tight_layout()
    paths.append(out / "accuracy_vs_forward_passes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if imps:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(imps)))
        names = list(imps)[::-1]
        ax.barh(names, [imps[n] for n in names])
        ax.set_xlabel(f"importance for {metric} (Optuna, PED-ANOVA)"), ax.set_title("parameter importances")
        fig.tight_layout()
        paths.append(out / "param_importances.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths

