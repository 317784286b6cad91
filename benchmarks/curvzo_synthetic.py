"""CurvZO profiles vs MeZO on a synthetic problem with a few high-curvature blocks (algorithms.md §4.4).

Run (about 2-3 minutes on 2 CPU cores)::

    . .venv/bin/activate
    python benchmarks/curvzo_synthetic.py                    # writes benchmarks/out/curvzo_synthetic.{png,json}
    python benchmarks/curvzo_synthetic.py --steps 200 --quick  # smoke run (seconds)

Problem: ``--blocks`` (64) parameter tensors of ``--dim`` (16) entries,
f(θ) = ½ Σ_b c_b ‖θ_b‖² with c_b = 1 except ``--hot`` (2) blocks with
c_b = ``--ratio`` (1000); θ₀ ~ N(0, I) per seed of ``--seeds`` (0,1,2), identical
for every method.  Every method spends 2 forward passes per step, so steps = forward
passes / 2 and the comparison is at equal forward passes.  Each method gets
the best learning rate from one shared grid (final loss, averaged over the
last 5 % of steps; diverged runs lose).  With ``--noise σ`` each forward
pass is a stochastic quadratic: the loss of a minibatch adds σ·Σ_b √c_b ξ_bᵀθ_b
with ξ ~ N(0, I) drawn per step (same draw for L+ and L−), i.e. gradient noise
whose covariance is ∝ the curvature (Fisher ∝ Hessian), the regime CurvZO's
premise (S ≈ F_ii from the scalar feedback) is about.

Reported per method: final loss (best lr), the cold blocks' loss at the end,
forward passes to reach 10 % of the initial loss, the hot/mean score ratio
(mean score of the hot blocks / mean score over all blocks, mean of seeds at
the end, and its maximum over the run), the blocks' sampling rates and the
budget trajectory; the PNG plots loss and hot-block loss vs forward passes,
score concentration and budget vs steps.

Closing note (default run, seeds 0-2, CPU, ~2.5 min)
---------------------------------------------------
Initial loss 16,364 (seed 0), of which the cold blocks hold ~510 (mean of seeds).
``fwd→10 %``: forward passes until the loss is below 10 % of its initial value (seed 0).

    method            best lr   final loss   cold loss end   fwd→10 %   hot/mean score   hot π̂   budget
    MeZO              6.25e-6   568.7        568.1           510        –                1        –
    curvzo/paper      6.25e-6   586.7        586.0           482        1.07             0.63     0.40→0.58
    curvzo/port       6.25e-6   579.6        578.8           454        0.98             0.58     0.40→0.59
    curvzo/contrast   6.25e-6   608.1        607.5           462        2.68             0.83     0.40→0.56

* §4.4 reproduces: the faithful profiles keep the scores flat (hot/mean ≈ 1)
  and their budget rises to ≈ 0.58 because N_eff/N → 1; both end above MeZO
  at equal forward passes.
* The contrast profile (a block's own share of Δ², see curvzo.py) does find
  the hot blocks (hot/mean 2.7, drawn 83 % of steps) — and ends furthest above
  MeZO.  Every CurvZO profile brings the hot blocks down a little faster than
  MeZO (fwd→10 %), but all the remaining loss is the cold blocks', which every
  method *heats* above their initial ~510: Δ is dominated by the hot blocks'
  gradient and each sampled cold block takes Δ·z_b/π_b, noise ∝ E[Δ²]/π_b.
  Any π_b < 1 adds noise relative to MeZO's π ≡ 1; concentrating π adds most.
* With ``--noise 1`` (curvature-proportional gradient noise; seed 0 only) the
  order is the same: MeZO 563.9, port 569.4, paper 573.4, contrast 587.0
  (contrast hot/mean 3.5); the CurvZO profiles' best lr halves (3.1e-6).
* So on this problem score-based sampling saves random-direction work per
  step (``zo bench step-cost``), not forward passes; finding the high-curvature
  blocks does not by itself make the HT estimator better than MeZO's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoplatform
from zoplatform.params import blocks_from_named
from zoplatform.rng import generator, step_seed

METHODS = {  # label -> (registry name, options)
    "mezo": ("mezo", {}),
    "curvzo/paper": ("curvzo", {"profile": "paper"}),
    "curvzo/port": ("curvzo", {"profile": "port"}),
    "curvzo/contrast": ("curvzo", {"profile": "contrast"}),
}


def make_problem(n_blocks: int, dim: int, hot: int, ratio: float, seed: int):
    """Flat θ₀, per-coordinate curvature, and the hot block indices (spread over the model order)."""
    g = generator(seed)
    theta0 = torch.randn(n_blocks * dim, generator=g)
    hot_idx = sorted({int(i) for i in torch.linspace(n_blocks // 7, n_blocks - 1 - n_blocks // 5, hot).round()})
    curv = torch.ones(n_blocks)
    curv[hot_idx] = ratio
    return theta0, curv.repeat_interleave(dim), hot_idx


def run_one(label: str, lr: float, args, theta0, curv, hot_idx) -> dict:
    name, opts = METHODS[label]
    flat = torch.nn.Parameter(theta0.clone())
    named = [(f"layer{i}.weight", flat[i * args.dim:(i + 1) * args.dim]) for i in range(args.blocks)]
    method = zoplatform.make(name, lr=lr, eps=args.eps, **opts)
    blocks = blocks_from_named(named)
    state = method.init(blocks)
    sqrt_c = curv.sqrt()
    losses, hot_losses, budgets, ratios = [], [], [], []
    hot_mask = curv > curv.min()
    f0 = float(0.5 * (curv * theta0 ** 2).sum())
    diverged = False
    for t in range(args.steps):
        seed = step_seed(args.seed, t)
        if args.noise > 0:
            xi = torch.randn(flat.numel(), generator=generator(seed ^ 0xBEEF)) * (args.noise * sqrt_c)
            closure = lambda: float(0.5 * (curv * flat.detach() ** 2).sum() + (xi * flat.detach()).sum())
        else:
            closure = lambda: float(0.5 * (curv * flat.detach() ** 2).sum())
        state, rec = method.step(state, blocks, closure, seed, lr)
        loss = float(0.5 * (curv * flat.detach() ** 2).sum())  # the noiseless objective
        losses.append(loss)
        hot_losses.append(float(0.5 * (curv * flat.detach() ** 2)[hot_mask].sum()))
        if name == "curvzo":
            budgets.append(rec.extra["budget"])
            s = method.effective_scores(state)
            ratios.append(float(s[hot_idx].mean() / s.mean().clamp_min(1e-300)))
        if not math.isfinite(loss) or loss > 1e3 * f0:
            diverged = True
            break
    tail = losses[-max(1, len(losses) // 20):]
    below = [i for i, x in enumerate(losses) if x <= 0.1 * f0]
    final = math.inf if diverged else sum(tail) / len(tail)
    out = {"label": label, "lr": lr, "diverged": diverged, "final_loss": final,
           "losses": losses, "hot_losses": hot_losses, "cold_loss_end": losses[-1] - hot_losses[-1],
           "fwd_to_10pct": 2 * (below[0] + 1) if below and not diverged else None}
    if name == "curvzo":
        counts = state["counts"].double() / max(int(state["t"]), 1)
        out.update({"budgets": budgets, "hot_ratio": ratios, "hot_sample_rate": float(counts[hot_idx].mean()),
                    "cold_sample_rate": float(counts[[i for i in range(args.blocks) if i not in hot_idx]].mean())})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--hot", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=1000.0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seeds", type=str, default="0,1,2",
                    help="problem/run seeds; the lr is chosen on the mean final loss, curves are the first seed's")
    ap.add_argument("--lrs", type=str, default="1.5625e-6,3.125e-6,6.25e-6,1.25e-5,2.5e-5,5e-5")
    ap.add_argument("--methods", type=str, default=",".join(METHODS))
    ap.add_argument("--variant", action="append", default=[],
                    help="extra method LABEL=NAME[:KEY=VALUE...], e.g. floor=curvzo:profile=paper:pi_floor=0.1")
    ap.add_argument("--out", type=str, default=str(Path(__file__).resolve().parent / "out" / "curvzo_synthetic"))
    ap.add_argument("--quick", action="store_true", help="two lrs and one seed (smoke run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lrs = [float(x) for x in args.lrs.split(",")]
    labels = args.methods.split(",") if args.methods else []
    for v in args.variant:
        label, spec = v.split("=", 1)
        name, *kvs = spec.split(":")
        METHODS[label] = (name, {k: json.loads(x) if x[:1] in "0123456789-.tfn[{" else x
                                 for k, x in (kv.split("=", 1) for kv in kvs)})
        labels.append(label)
    if args.quick:
        lrs, args.seeds = lrs[1:3], args.seeds.split(",")[0]
    seeds = [int(s) for s in args.seeds.split(",")]
    problems = {s: make_problem(args.blocks, args.dim, args.hot, args.ratio, s) for s in seeds}
    theta0, curv, hot_idx = problems[seeds[0]]
    t0 = time.perf_counter()
    best: dict[str, dict] = {}
    grid: dict[str, dict[str, float]] = {}
    per_seed: dict[str, list[float]] = {}
    for label in labels:
        for lr in lrs:
            runs = []
            for s in seeds:
                args.seed = s
                runs.append(run_one(label, lr, args, *problems[s]))
            r = runs[0] | {"final_loss": sum(x["final_loss"] for x in runs) / len(runs),
                           "cold_loss_end": sum(x["cold_loss_end"] for x in runs) / len(runs),
                           "hot_ratio_end": [x["hot_ratio"][-1] for x in runs if "hot_ratio" in x]}
            grid.setdefault(label, {})[f"{lr:g}"] = r["final_loss"]
            if label not in best or r["final_loss"] < best[label]["final_loss"]:
                best[label] = r
                per_seed[label] = [x["final_loss"] for x in runs]
    wall = time.perf_counter() - t0

    problem = {k: getattr(args, k) for k in ("blocks", "dim", "hot", "ratio", "steps", "eps", "noise")}
    cold_losses = [float(0.5 * (c * th ** 2)[c == 1].sum()) for th, c, _ in problems.values()]
    problem |= {"seeds": seeds, "hot_blocks": hot_idx, "initial_loss": float(0.5 * (curv * theta0 ** 2).sum()),
                "initial_cold_loss": sum(cold_losses) / len(cold_losses)}
    summary = {"problem": problem, "lr_grid": lrs, "final_loss_by_lr": grid, "wall_s": round(wall, 1), "best": {}}
    for label, r in best.items():
        row = {"lr": r["lr"], "final_loss": r["final_loss"], "final_loss_per_seed": per_seed[label],
               "forwards_to_10pct_of_initial_loss": r["fwd_to_10pct"], "cold_blocks_loss_end": r["cold_loss_end"]}
        if "budgets" in r:
            b = r["budgets"]
            row.update({"hot_over_mean_score_final": sum(r["hot_ratio_end"]) / len(r["hot_ratio_end"]),
                        "hot_over_mean_score_max": max(r["hot_ratio"]),
                        "budget_trajectory": {str(s): round(b[s - 1], 3) for s in
                                              sorted({1, 100, 250, 500, len(b)}) if s <= len(b)},
                        "hot_sample_rate": r["hot_sample_rate"], "cold_sample_rate": r["cold_sample_rate"]})
        summary["best"][label] = row

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(best, out.with_suffix(".png"), summary["problem"])
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"initial loss {summary['problem']['initial_loss']:.0f} (seed {seeds[0]}); cold blocks' initial loss "
          f"{summary['problem']['initial_cold_loss']:.1f} (mean of seeds)")
    print("| method | best lr | final loss (mean of seeds) | cold blocks' loss at the end | fwd to 10% "
          "| hot/mean score (end) | hot/mean (max) | hot π̂ | cold π̂ | budget 1→end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, row in summary["best"].items():
        if "budget_trajectory" in row:
            bt = list(row["budget_trajectory"].values())
            print(f"| {label} | {row['lr']:g} | {row['final_loss']:.4g} | {row['cold_blocks_loss_end']:.4g} | "
                  f"{row['forwards_to_10pct_of_initial_loss']} | "
                  f"{row['hot_over_mean_score_final']:.3g} | "
                  f"{row['hot_over_mean_score_max']:.3g} | {row['hot_sample_rate']:.2f} | {row['cold_sample_rate']:.2f}"
                  f" | {bt[0]:.2f}→{bt[-1]:.2f} |")
        else:
            print(f"| {label} | {row['lr']:g} | {row['final_loss']:.4g} | {row['cold_blocks_loss_end']:.4g} | "
                  f"{row['forwards_to_10pct_of_initial_loss']} | – | – | 1 | 1 | – |")
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')} ({wall:.0f} s)")
    print(json.dumps({k: v for k, v in summary.items() if k != "final_loss_by_lr"} | {"final_loss_by_lr": grid}))
    return summary


def plot(best: dict, path: Path, problem: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(21, 4.5))
    for label, r in best.items():
        fwd = [2 * (i + 1) for i in range(len(r["losses"]))]
        ax[0].plot(fwd, r["losses"], label=f"{label} (lr {r['lr']:g})")
        ax[1].plot(fwd, r["hot_losses"], label=label)
        if "hot_ratio" in r:
            ax[2].plot(range(1, len(r["hot_ratio"]) + 1), r["hot_ratio"], label=label)
            ax[3].plot(range(1, len(r["budgets"]) + 1), r["budgets"], label=label)
    ax[0].set(xlabel="forward passes", ylabel="loss", yscale="log",
              title=f"{problem['blocks']}×{problem['dim']}, {problem['hot']} blocks ×{problem['ratio']:g} curvature"
                    + (f", noise {problem['noise']:g}" if problem["noise"] else ""))
    ax[1].set(xlabel="forward passes", ylabel="loss of the hot blocks", yscale="log",
              title="hot blocks (the part that moves)")
    ax[2].set(xlabel="step", ylabel="hot / mean score", yscale="log", title="score concentration on the hot blocks")
    ax[2].axhline(1.0, color="k", lw=0.5)
    ax[3].set(xlabel="step", ylabel="budget f", title="adaptive budget")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
