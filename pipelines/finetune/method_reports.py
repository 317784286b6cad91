"""A method's end-of-run artifacts: its per-block table (``ZOMethod.block_table``, the library's numbers) as CSV,
and for CurvZO and LOREN a plot of it.  The drawing lives here, in the pipelines, so the library imports no
matplotlib.  :func:`write` returns the paths, which the fine-tune recipe logs to the run."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CSV_NAMES = {"curvzo": "curvzo_blocks.csv", "loren": "loren_a.csv", "zo-finetuner": "zo_finetuner_sigma.csv"}


def _cell(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_csv(rows: list[dict], path: Path) -> Path:
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "".join(",".join(_cell(r[c]) for c in cols) + "\n" for r in rows))
    return path


def write(method, state, blocks: Sequence, out_dir, run: str | None = None) -> list[Path]:
    """The method's table (CSV) and plot under ``out_dir``; ``run`` names the run in the plot's title (e.g.
    ``curvzo on sst2 (smollm2-135m)``).  [] for a method without per-block numbers."""
    rows = method.block_table(state, blocks)
    if not rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = write_csv(rows, out_dir / CSV_NAMES.get(method.name, f"{method.name}_blocks.csv"))
    draw = {"curvzo": plot_curvzo, "loren": plot_loren}.get(method.name)
    return [draw(method, state, rows, out_dir, run), csv] if draw else [csv]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curvzo(method, state, rows: list[dict], out_dir: Path, run: str | None) -> Path:
    """``curvzo_blocks.png``: sampled fraction and final π per block, block scores, and the budget trace (or, on a
    run too short for a budget update, the budget every step used and why it did not move)."""
    plt = _pyplot()
    c = method.config
    steps = max(int(state["t"]), 1)
    fig, ax = plt.subplots(3, 1, figsize=(10, 9))
    x = range(len(rows))
    ax[0].bar(x, [r["sampled_rate"] for r in rows], width=1.0, color="tab:blue")
    ax[0].plot(x, [r["pi"] for r in rows], "k.", ms=3, label="final π")
    what = f"{run}, profile {c.profile}" if run else f"CurvZO ({c.profile})"
    ax[0].set(ylabel="sampled fraction of steps", xlabel="block index (model order)",
              title=f"{what}: sampled fraction per block after {steps} steps")
    ax[0].legend(loc="upper right")
    mean = max(sum(r["score"] for r in rows) / len(rows), 1e-300)
    ax[1].bar(x, [r["score"] / mean for r in rows], width=1.0, color="tab:orange")
    ax[1].set(ylabel="score / mean score", xlabel="block index (model order)", title="block scores (log)")
    ax[1].set_yscale("log")
    tr = state["trace"]
    if tr.numel():
        ax[2].plot(tr[:, 0].tolist(), tr[:, 1].tolist(), "o-", ms=3, label="budget f")
        ax[2].plot(tr[:, 0].tolist(), tr[:, 2].tolist(), "s-", ms=3, label="N_eff / N")
        ax[2].plot(tr[:, 0].tolist(), tr[:, 3].tolist(), "^-", ms=3, label="entropy H")
        ax[2].set_xlim(0, max(steps, float(tr[-1, 0])))
        title = f"budget updates (every T_B = {c.budget_every} steps)"
    else:
        why = (f"no budget update yet (every T_B = {c.budget_every} steps; this run: {steps} steps)"
               if c.adaptive_budget else "fixed budget (adaptive_budget = false)")
        ax[2].plot([0, steps], [state["budget"]] * 2, "-", label=f"budget f = {state['budget']:.3g} (every step)")
        ax[2].text(0.5, 0.5, why, transform=ax[2].transAxes, ha="center", va="center", fontsize=10,
                   color="dimgray")
        ax[2].set(xlim=(0, steps), ylim=(0, 1))
        title = "budget f per step" + (f" (updated every T_B = {c.budget_every} steps)" if c.adaptive_budget else "")
    ax[2].legend(loc="best", fontsize=8)
    ax[2].xaxis.get_major_locator().set_params(integer=True)
    ax[2].set(xlabel="step", ylabel="fraction", title=title)
    fig.tight_layout()
    png = out_dir / "curvzo_blocks.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_loren(method, state, rows: list[dict], out_dir: Path, run: str | None) -> Path:
    """``loren_a.png``: ‖a‖/√n per matrix block."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(rows)), [r["rms_a"] for r in rows], width=1.0)
    ax.set(xlabel="block index (model order)", ylabel="‖a‖/√n",
           title=f"{run + ': ' if run else 'LOREN '}curvature vectors a per block after {state.get('t', 0)} steps")
    fig.tight_layout()
    png = out_dir / "loren_a.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
