"""The comparison's pictures: ``dev_curves_<task>.png`` and ``peak_memory.png`` (split out of
:mod:`pipelines.compare.report`)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import CompareConfig

ZERO_SHOT = "zero-shot"  # as pipelines.compare.report (a zero-shot label draws a reference line)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", "-.", ":")


def memory_measure(device: str) -> str:
    """What ``peak_memory_mb`` measures on a device (zoplatform.loop.peak_memory_bytes)."""
    return "CUDA max allocated" if device.startswith("cuda") else "CPU process max RSS"


def plots(cfg: CompareConfig, runs: list[dict], agg: list[dict], out: Path) -> list[Path]:
    """``dev_curves_<task>.png`` (dev accuracy and loss vs forward passes, mean ± std over seeds) and
    ``peak_memory.png``. Every method has its own marker and line style, drawn larger first, so a method whose
    curve coincides with another's stays visible around it (and its legend entry says which it equals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    n_styles = len(cfg.methods)
    for task in cfg.tasks:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        drawn: dict[str, tuple] = {}  # label -> (xs, accuracy means, loss means): to name coinciding curves
        for i, label in enumerate(cfg.methods):
            curves = [r["curve"] for r in runs if r["label"] == label and r["task"] == task and r["curve"]
                      and r["status"] == "done"]
            if not curves:
                continue
            if label == ZERO_SHOT:  # no trajectory: the base model's dev metrics as a reference line
                for ax, key in zip(axes, ("dev_accuracy", "dev_loss")):
                    ax.axhline(statistics.fmean(c[0][key] for c in curves), ls="--", c="gray", lw=1,
                               label=f"{label} (n={len(curves)})")
                continue
            n = min(len(c) for c in curves)
            xs = [curves[0][j]["forwards"] for j in range(n)]
            means = {}
            for key in ("dev_accuracy", "dev_loss"):
                ys = [[c[j][key] for c in curves] for j in range(n)]
                means[key] = ([statistics.fmean(y) for y in ys], [statistics.stdev(y) if len(y) > 1 else 0.0
                                                                   for y in ys])
            same = [other for other, (oxs, oacc, oloss) in drawn.items()
                    if oxs == xs and oacc == means["dev_accuracy"][0] and oloss == means["dev_loss"][0]]
            name = f"{label} (n={len(curves)})" + (f" = {', '.join(same)}" if same else "")
            ms = 4 + 5 * (n_styles - 1 - i) / max(1, n_styles - 1)  # earlier labels larger: nested markers
            for ax, key in zip(axes, ("dev_accuracy", "dev_loss")):
                m, s = means[key]
                line, = ax.plot(xs, m, marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[i % len(LINESTYLES)],
                                ms=ms, mfc="none" if same else None, mew=1.4, label=name)
                ax.fill_between(xs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                                color=line.get_color(), alpha=0.12)
            drawn[label] = (xs, means["dev_accuracy"][0], means["dev_loss"][0])
        for ax, key in zip(axes, ("dev accuracy", "dev loss")):
            ax.set(xlabel="forward passes", ylabel=key, title=f"{key} vs forward passes")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.ticklabel_format(axis="y", useOffset=False)  # values, not "1e-5 + 6.801e-1" offsets
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="best")
        fig.suptitle(f"{task} ({cfg.model}), {cfg.budget(task)} forward passes per run: mean ± std over seeds")
        fig.tight_layout()
        files.append(out / f"dev_curves_{task}.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    mem: dict[str, float] = {}  # label -> max over its runs (every task)
    for a in agg:
        if a["peak_memory_mb_max"] is not None:
            mem[a["label"]] = max(mem.get(a["label"], 0.0), a["peak_memory_mb_max"])
    if mem:
        measure = memory_measure(cfg.device)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(mem) + 2), 3.8))
        bars = ax.bar(list(mem), list(mem.values()), color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in mem.values()], fontsize=8, padding=2)
        ax.set_ylabel(f"peak memory (MB)\n{measure}")
        ax.set_ylim(0, max(mem.values()) * 1.15)
        ax.set_title(f"peak memory per method, max over its runs\n{cfg.model} on {cfg.device}: {measure}",
                     fontsize=10)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        files.append(out / "peak_memory.png")
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files
