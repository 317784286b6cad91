"""What a meta-trained ZO Fine-tuner policy learned: the effective perturbation
scale c·σ_b per block type (embeddings, attention q/k/v/o, MLP gate/up/down,
norms) and layer depth, against the policy's initialisation.

Artifacts (``write_policy_report``): ``policy_sigma.csv`` (one row per block)
and ``policy_sigma.png`` (heatmaps type × layer of log₂(c·σ_b) at the
initialisation and after meta-training, and c·σ_b against the block's held-out
gradient energy per element).  :func:`sigma_by_type` is the same in numbers
for the summary.  c·σ_b = 1 is MeZO's scale; the trace normalisation keeps
Σ n_b (c σ_b)² = Σ n_b, so a block above 1 takes perturbation budget from the
blocks below 1.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from meta.policy import policy_sigma_at
from zoplatform.params import Block
from zoplatform.policy import trace_scale

# (type, pattern on the parameter name); first match wins; order = row order of the heatmap
TYPES: list[tuple[str, str]] = [
    ("embeddings", r"(embed_tokens|embed_positions|wte|wpe|word_embeddings|position_embeddings|embed_in)\."),
    ("lm head", r"(lm_head|embed_out)\."),
    ("attn q", r"(q_proj|\.query)\."),
    ("attn k", r"(k_proj|\.key)\."),
    ("attn v", r"(v_proj|\.value)\."),
    ("attn qkv (fused)", r"(c_attn|qkv_proj|query_key_value)\."),
    ("attn o", r"(o_proj|out_proj|attn\.c_proj|attention\.output\.dense)\."),
    ("attn norm", r"(input_layernorm|ln_1|self_attn_layer_norm|attention\.output\.LayerNorm)\."),
    ("mlp gate", r"gate_proj\."),
    ("mlp up", r"(up_proj|fc1|c_fc|intermediate\.dense)\."),
    ("mlp down", r"(down_proj|fc2|mlp\.c_proj|output\.dense)\."),
    ("mlp norm", r"(post_attention_layernorm|ln_2|final_layer_norm|output\.LayerNorm)\."),
    ("final norm", r"(^|\.)(norm|ln_f|final_layer_norm|LayerNorm)\.(weight|bias)$"),
]
LAYER = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


def block_type(name: str) -> str:
    """The block's type (see :data:`TYPES`; ``other`` if none), `` bias`` appended for biases."""
    for t, pat in TYPES:
        if re.search(pat, name):
            if t == "final norm" and LAYER.search(name):
                continue
            return t + (" bias" if name.endswith(".bias") and "norm" not in t else "")
    return "other"


def block_layer(name: str) -> int | None:
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


SHARING = ("type_depth", "type", "block")


def sharing_groups(names: Sequence[str], mode: str) -> list[int] | None:
    """Group index per block for a :class:`meta.policy.ScalePolicy`: ``block`` (None: one scale per block),
    ``type`` (one per block type), ``type_depth`` (one per block type and third of the layer stack).
    Blocks of type ``other`` are never tied (nothing says they are alike)."""
    if mode == "block":
        return None
    if mode not in SHARING:
        raise ValueError(f"sharing {mode!r} is unknown; choose one of {', '.join(SHARING)}")
    layers = [block_layer(n) for n in names]
    depth = max([x for x in layers if x is not None], default=0) + 1
    keys = []
    for i, (n, layer) in enumerate(zip(names, layers)):
        t = block_type(n)
        if t == "other":
            keys.append(("other", i))
        elif mode == "type" or layer is None:
            keys.append((t, -1))
        else:
            keys.append((t, min(2, 3 * layer // depth)))
    index = {k: j for j, k in enumerate(dict.fromkeys(keys))}
    return [index[k] for k in keys]


@torch.no_grad()
def effective_scales(policy, blocks: Sequence[Block], counts: torch.Tensor, loss: float = 0.0) -> torch.Tensor:
    """c·σ_b [B] (fp64) a deployment at ``blocks``' weights uses (see ``policy_sigma_at``)."""

    sig = policy_sigma_at(policy, blocks, loss).double()
    return sig * trace_scale(sig, counts)


def initial_policy(policy, omega0: dict[str, torch.Tensor]):
    """A copy of ``policy`` with its initial weights ``omega0`` (as ``policy.weights()`` gave them)."""
    init = copy.deepcopy(policy)
    if getattr(policy, "kind", "mlp") == "scale":
        init.set_sigma(omega0["sigma"])
    else:
        with torch.no_grad():
            for k, v in omega0.items():
                getattr(init, k).copy_(v)
    return init


def sigma_by_type(names: Sequence[str], init: torch.Tensor, learned: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per block type: geometric means of c·σ at the init and learned, and the range learned."""
    out: dict[str, dict[str, float]] = {}
    types = [block_type(n) for n in names]
    for t in dict.fromkeys(types):
        idx = [i for i, x in enumerate(types) if x == t]
        li, ll = init[idx].log(), learned[idx].log()
        out[t] = {"blocks": len(idx), "init": round(float(li.mean().exp()), 4),
                  "learned": round(float(ll.mean().exp()), 4), "learned_min": round(float(learned[idx].min()), 4),
                  "learned_max": round(float(learned[idx].max()), 4)}
    return out


def _grid(names: Sequence[str], values: torch.Tensor) -> tuple[list[str], list[str], list[list[float]]]:
    types = [block_type(n) for n in names]
    layers = [block_layer(n) for n in names]
    order = [t for t, _ in TYPES]
    rows = sorted(set(types), key=lambda t: (order.index(t.replace(" bias", "")) if t.replace(" bias", "") in order
                                             else len(order), t))
    nl = max([x for x in layers if x is not None], default=-1) + 1
    cols = [str(i) for i in range(nl)] + (["global"] if any(x is None for x in layers) else [])
    grid = [[math.nan] * len(cols) for _ in rows]
    for t, l_, v in zip(types, layers, values.tolist()):
        grid[rows.index(t)][l_ if l_ is not None else len(cols) - 1] = math.log2(v)
    return rows, cols, grid


def write_policy_report(policy, blocks: Sequence[Block], base: Sequence[torch.Tensor], counts: torch.Tensor,
                        omega0: dict[str, torch.Tensor], out_dir: Path, *, metaval=None, val_loss: float = 0.0,
                        title: str = "") -> list[Path]:
    """``policy_sigma.csv`` and ``policy_sigma.png`` (see the module docstring); c·σ at the base weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    bb = [Block(b.name, w, b.decay, b.key) for b, w in zip(blocks, base)]
    s0 = effective_scales(initial_policy(policy, omega0), bb, counts, val_loss)
    s1 = effective_scales(policy, bb, counts, val_loss)
    names = [b.name for b in blocks]
    n = counts.double()
    if metaval:
        P, V = metaval.block_energy()
        pe, ve = (P / n).tolist(), (V / n).tolist()
    else:
        pe = ve = [math.nan] * len(blocks)
    csv = out_dir / "policy_sigma.csv"
    lines = [("block,type,layer,numel,effective_count,scale_init,scale_learned,grad_energy_per_elem,"
             "grad_variance_per_elem")]
    for i, b in enumerate(blocks):
        layer = block_layer(b.name)
        lines.append(f"{b.name},{block_type(b.name)},{'' if layer is None else layer},{b.numel},{int(counts[i])},"
                     f"{float(s0[i]):.6g},{float(s1[i]):.6g},{pe[i]:.6g},{ve[i]:.6g}")
    csv.write_text("\n".join(lines) + "\n")

    rows, cols, g0 = _grid(names, s0)
    _, _, g1 = _grid(names, s1)
    finite = [abs(v) for g in (g0, g1) for r in g for v in r if not math.isnan(v)]
    vmax = max(max(finite, default=1.0), 0.1)
    fig = plt.figure(figsize=(max(10.0, 0.32 * len(cols) + 4), 3.2 + 0.55 * len(rows) * 2))
    gs = fig.add_gridspec(3, 2, height_ratios=[len(rows), len(rows), max(4, len(rows) * 0.9)])
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")  # grey: no block of this type at this depth
    for r_, (grid, label) in enumerate([(g0, "initialisation"), (g1, "meta-trained")]):
        ax = fig.add_subplot(gs[r_, :])
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_xticks(range(len(cols)), cols, fontsize=7)
        ax.set(xlabel="layer (global: blocks outside the layer stack; grey: no such block)",
               title=f"log2(c·sigma_b) per block type and layer, {label} (0 = MeZO's scale, red = more "
                     f"perturbation)")
        fig.colorbar(im, ax=ax, label="log2 c·sigma")
    ax = fig.add_subplot(gs[2, 0])
    by = sigma_by_type(names, s0, s1)
    ts = list(by)
    x = range(len(ts))
    ax.bar([i - 0.2 for i in x], [by[t]["init"] for t in ts], width=0.4, label="initialisation")
    ax.bar([i + 0.2 for i in x], [by[t]["learned"] for t in ts], width=0.4, label="meta-trained")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="MeZO (c·sigma = 1)")
    ax.set_yscale("log")
    ax.set_xticks(list(x), ts, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="geometric mean of c·sigma_b", title="per block type")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(gs[2, 1])
    if metaval and any(p > 0 for p in pe):
        types = [block_type(nm) for nm in names]
        for t in ts:
            idx = [i for i, y in enumerate(types) if y == t and pe[i] > 0]  # P̂ < 0: no signal, not drawn
            ax.scatter([pe[i] for i in idx], [float(s1[i]) for i in idx], s=10, label=t)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="held-out gradient energy per element P_b/n_b (per-task normalised)",
               ylabel="meta-trained c·sigma_b", title="scale vs where the gradient is")
        ax.legend(fontsize=6, ncol=2)
    else:  # nothing to draw on log axes (matplotlib fails on empty ones)
        why = ("no block has a positive held-out gradient energy (P_b <= 0 everywhere: no signal)" if metaval
               else "no meta-validation batches (num_dev = 0)")
        ax.text(0.5, 0.5, why, ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(f"What the ZO Fine-tuner policy learned{' — ' + title if title else ''}")
    fig.tight_layout()
    png = out_dir / "policy_sigma.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [png, csv]
