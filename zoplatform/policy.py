"""The learned perturbation policy of ZO Fine-tuner: its functional definition and its file format.

Zhang, Li, Zhao, Sun, Zhang, ICML 2026, arXiv:2510.00419, §5.1 of docs/algorithms.md.  Two kinds:
``mlp`` — the paper's network, one 5→64→1 MLP per block on (mean θ_b, var θ_b, L⁺, L⁻, σ_b) — and
``scale`` — one σ per block (the ``descent`` meta-training profile's).  A policy is saved as
``policy.safetensors`` (weights) + ``policy.json`` (base model, tensor names and shapes, feature and
normalisation spec, kind) — never a pickle — and matched to a model's blocks by name and shape.
The deploying method is :class:`zoplatform.algorithms.zo_finetuner.ZOFinetuner`; meta-training is
in ``meta/``.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .params import Block, Scratch, axpy_, trainable_named, value
from .rng import DirectionLaw

# --------------------------------------------------------------------------
# the policy: functional definition
# --------------------------------------------------------------------------
FORMAT = "zoplatform.zo-policy/1"
SCHEMA_FILE = "policy.json"
WEIGHTS_FILE = "policy.safetensors"
FEATURES = ("mean", "var", "prev_loss_plus", "prev_loss_minus", "prev_sigma")
HIDDEN = 64
WEIGHT_KEYS = ("w1", "b1", "w2", "b2")  # stacked over blocks: [B,H,F], [B,H], [B,H], [B]
KIND_MLP, KIND_SCALE = "mlp", "scale"  # policy.json network.kind (absent: mlp, the paper's network)
POLICY_KINDS = (KIND_MLP, KIND_SCALE)
SCALE_KEYS = ("sigma",)  # the scale kind: σ_b per block, [B]
DEFAULT_EMBEDDING_ROWS = 240  # 15 · batch 16 · 1 device: the paper's rule at its deployment batch
DEFAULT_EMBEDDING_PATTERN = (r"(^|\.)(embed_tokens|embed_positions|wte|wpe|word_embeddings|"
                             r"position_embeddings|embed_in)\.weight$")


def init_policy_weights(n_blocks: int, generator: torch.Generator | None = None,
                        hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """Random stacked MLP weights for ``n_blocks`` blocks, with ``nn.Linear``'s
    default init (U(±1/√fan_in)), in fp32."""
    f = len(FEATURES)

    def u(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound

    return {"w1": u((n_blocks, hidden, f), f), "b1": u((n_blocks, hidden), f),
            "w2": u((n_blocks, hidden), hidden), "b2": u((n_blocks,), hidden)}


def policy_sigma(weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """σ_b = |w2_b · tanh(W1_b x_b + b1_b) + b2_b| for every block at once.

    ``x`` is ``[B, 5]`` (see :data:`FEATURES`); returns ``[B]``.  Differentiable
    in the weights: ``meta.policy`` trains the same function.
    """
    h = torch.tanh(torch.baddbmm(weights["b1"].unsqueeze(-1), weights["w1"], x.unsqueeze(-1)).squeeze(-1))
    return ((weights["w2"] * h).sum(-1) + weights["b2"]).abs()


@torch.no_grad()
def block_stats(blocks: Sequence[Block]) -> torch.Tensor:
    """``[B, 2]`` fp32 (mean θ_b, population var θ_b) on CPU."""
    rows = []
    for b in blocks:
        var, mean = torch.var_mean(value(b).detach().float(), correction=0)  # the fp32 master in a mixed mode
        rows.append(torch.stack([mean, var]).to("cpu"))
    return torch.stack(rows)


def policy_features(stats: torch.Tensor, prev_losses: torch.Tensor, prev_sigma: torch.Tensor) -> torch.Tensor:
    """``[B, 5]`` inputs: block stats, the (global) previous L⁺ and L⁻, the block's previous σ."""
    n = stats.shape[0]
    losses = prev_losses.to(device=stats.device, dtype=stats.dtype).expand(n, 2)
    return torch.cat([stats, losses, prev_sigma.to(device=stats.device, dtype=stats.dtype).view(n, 1)], dim=1)


def effective_counts(shapes: Sequence[Sequence[int]], embedding: Sequence[bool], embedding_rows: int) -> list[int]:
    """n_b: numel, or ``min(rows, R) × hidden`` for embedding matrices."""
    out = []
    for shape, emb in zip(shapes, embedding):
        numel = math.prod(shape)
        if emb and len(shape) >= 2:
            numel = min(int(embedding_rows), int(shape[0])) * (numel // int(shape[0]))
        out.append(int(numel))
    return out


def trace_scale(sigma: torch.Tensor, counts: torch.Tensor) -> float:
    """c = sqrt(Σ n_b / Σ n_b σ_b²) in fp64 (exactly 1.0 when σ ≡ 1)."""
    s = sigma.detach().double()
    n = counts.double()
    denom = float((n * s * s).sum())
    if not denom > 0.0 or not math.isfinite(denom):
        raise FloatingPointError(f"policy gave a degenerate σ (Σ n_b σ_b² = {denom}); cannot normalise")
    return math.sqrt(float(n.sum()) / denom)


def embedding_block_names(model: torch.nn.Module, pattern: str | None = None) -> set[str]:
    """Names of parameters owned by ``nn.Embedding`` modules (subclasses
    included, e.g. OPT's learned positions), plus names matching ``pattern``."""
    names = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Embedding):
            for p_name, _ in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    if pattern:
        rx = re.compile(pattern)
        names |= {n for n, _ in model.named_parameters() if rx.search(n)}
    return names


def direction_tensor(block: Block, seed: int, law: DirectionLaw, scratch: Scratch) -> torch.Tensor:
    """The block's full direction z_b(seed) as an fp32 tensor (what :func:`axpy_`
    adds chunk by chunk).  For meta-training, which holds full tensors anyway."""
    z = torch.zeros(block.param.shape, dtype=torch.float32, device=block.param.device)
    axpy_([Block(block.name, z, block.decay, block.key)], seed, law, scratch, 1.0)
    return z


# --------------------------------------------------------------------------
# the policy file: safetensors weights + JSON schema (never a pickle)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """A loaded policy: its schema (JSON dict) and stacked fp32 weights in schema block order."""

    schema: dict
    weights: dict[str, torch.Tensor]
    path: str = ""

    @property
    def block_names(self) -> list[str]:
        return [b["name"] for b in self.schema["blocks"]]

    @property
    def base_model(self) -> str:
        return str(self.schema.get("base_model", ""))

    @property
    def embedding_rows(self) -> int:
        return int(self.schema["normalisation"]["embedding_rows"])

    @property
    def kind(self) -> str:
        """``mlp`` (the paper's network) or ``scale`` (constant σ_b per block)."""
        return policy_kind(self.schema)

    def for_blocks(self, blocks: Sequence[Block]) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """Weights re-ordered to ``blocks`` and each block's embedding flag; a
        layout mismatch is a one-line ConfigError."""
        entries = {b["name"]: (i, b) for i, b in enumerate(self.schema["blocks"])}
        here = {b.name: tuple(b.param.shape) for b in blocks}
        missing = [n for n in here if n not in entries]
        extra = [n for n in entries if n not in here]
        shape_bad = [n for n in here if n in entries and tuple(entries[n][1]["shape"]) != here[n]]
        if missing or extra or shape_bad:
            parts = []
            if missing:
                parts.append(f"{len(missing)} trainable tensor(s) the policy does not know (first {missing[0]!r})")
            if extra:
                parts.append(f"{len(extra)} policy block(s) absent here (first {extra[0]!r})")
            if shape_bad:
                n = shape_bad[0]
                parts.append(f"shape of {n!r} is {list(here[n])} here but {entries[n][1]['shape']} in the policy")
            raise ConfigError(f"zo-finetuner: policy {self.path or '(in memory)'} was meta-trained for "
                              f"{self.base_model or 'another model'!r} ({len(entries)} blocks) and does not match "
                              f"this model's {len(blocks)} trainable tensors: {'; '.join(parts)}; "
                              f"meta-train a policy for this model (zo meta-train --model ...)")
        idx = torch.tensor([entries[b.name][0] for b in blocks], dtype=torch.long)
        weights = {k: v.index_select(0, idx) for k, v in self.weights.items()}
        flags = [bool(entries[b.name][1].get("embedding", False)) for b in blocks]
        return weights, flags


def make_schema(blocks: Sequence[tuple[str, Sequence[int], bool]], *, base_model: str, embedding_rows: int,
                hidden: int = HIDDEN, meta: Mapping | None = None, kind: str = KIND_MLP) -> dict:
    """The JSON schema of a policy for ``blocks`` = (name, shape, is_embedding) triples.

    ``kind``: ``mlp`` (the paper's per-block PertNN on :data:`FEATURES`) or
    ``scale`` (a constant σ_b per block, no features)."""
    if kind not in POLICY_KINDS:
        raise ConfigError(f"make_schema: policy kind {kind!r} is unknown; choose one of {', '.join(POLICY_KINDS)}")
    if kind == KIND_MLP:
        features, init = list(FEATURES), {"prev_loss_plus": 0.0, "prev_loss_minus": 0.0, "prev_sigma": 1.0}
        network = {"kind": KIND_MLP, "hidden": int(hidden), "activation": "tanh", "output": "abs",
                   "weights": {"w1": "[B,H,F]", "b1": "[B,H]", "w2": "[B,H]", "b2": "[B]"}}
    else:
        features, init = [], {}
        network = {"kind": KIND_SCALE, "output": "sigma_b, constant per block (> 0)", "weights": {"sigma": "[B]"}}
    return {
        "format": FORMAT,
        "version": 1,
        "base_model": base_model,
        "blocks": [{"name": n, "shape": [int(s) for s in shape], "embedding": bool(e)} for n, shape, e in blocks],
        "features": features,
        "feature_init": init,
        "network": network,
        "normalisation": {"kind": "trace", "formula": "c = sqrt(sum_b n_b / sum_b n_b sigma_b^2)",
                          "embedding_rows": int(embedding_rows),
                          "embedding_count": "min(embedding_rows, rows) * hidden"},
        "meta": dict(meta or {}),
    }


def policy_kind(schema: Mapping) -> str:
    """``mlp`` or ``scale`` (a schema written before kinds existed is ``mlp``)."""
    net = schema.get("network") if isinstance(schema, Mapping) else None
    return str(net.get("kind", KIND_MLP)) if isinstance(net, Mapping) else KIND_MLP


def weight_keys(kind: str) -> tuple[str, ...]:
    return WEIGHT_KEYS if kind == KIND_MLP else SCALE_KEYS


def save_policy(directory: str | Path, weights: Mapping[str, torch.Tensor], schema: dict) -> Path:
    """Write ``policy.safetensors`` + ``policy.json`` into ``directory``; returns it."""
    from safetensors.torch import save_file

    kind = policy_kind(schema)
    _check_weights(weights, len(schema["blocks"]), schema, "save_policy")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: weights[k].detach().to("cpu", torch.float32).contiguous().clone() for k in weight_keys(kind)}
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": FORMAT})
    (d / SCHEMA_FILE).write_text(json.dumps(schema, indent=1))
    return d


def _check_weights(weights: Mapping[str, torch.Tensor], n: int, schema: Mapping, where: str) -> None:
    kind = policy_kind(schema)
    if kind == KIND_MLP:
        net = schema.get("network")
        hidden = net.get("hidden") if isinstance(net, Mapping) else None
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ConfigError(f"{where}: policy.json network.hidden={hidden!r} is invalid: an 'mlp' policy needs a "
                              f"positive integer hidden width (network: {net!r})"[:300])
        f = len(FEATURES)
        want = {"w1": (n, hidden, f), "b1": (n, hidden), "w2": (n, hidden), "b2": (n,)}
    else:
        want = {"sigma": (n,)}
    for k, shape in want.items():
        if k not in weights:
            raise ConfigError(f"{where}: policy weights lack {k!r} (a {kind!r} policy needs "
                              f"{', '.join(weight_keys(kind))})")
        if tuple(weights[k].shape) != shape:
            raise ConfigError(f"{where}: policy weight {k!r} has shape {list(weights[k].shape)}, "
                              f"expected {list(shape)} for {n} blocks")
    bad = [k for k in want if not bool(torch.isfinite(weights[k]).all())]
    if bad:
        raise ConfigError(f"{where}: policy weights {', '.join(bad)} hold NaN or inf; the policy file is damaged")
    if kind == KIND_SCALE:
        sig = weights["sigma"].detach().double()
        if not bool(torch.isfinite(sig).all()) or not bool((sig > 0).all()):
            raise ConfigError(f"{where}: a 'scale' policy needs finite sigma > 0 for every block "
                              f"(min {float(sig.min()):.3g})")


def load_policy(path: str | Path) -> Policy:
    """Read a policy directory (or its ``policy.json`` / ``policy.safetensors``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    d = p if p.is_dir() else p.parent
    if not p.exists():
        raise ConfigError(f"zo-finetuner: policy path {str(path)!r} does not exist (give a policy directory "
                          f"holding {SCHEMA_FILE} and {WEIGHTS_FILE}, or resolve a models:/ URI first)")
    if p.is_file() and p.name not in (SCHEMA_FILE, WEIGHTS_FILE):
        raise ConfigError(f"zo-finetuner: {p} is not a policy file; a policy is a directory with {SCHEMA_FILE} "
                          f"and {WEIGHTS_FILE} (pickled .pth/.pt policies are not loaded)")
    for name in (SCHEMA_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise ConfigError(f"zo-finetuner: policy directory {d} lacks {name}")
    try:
        schema = json.loads((d / SCHEMA_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"zo-finetuner: {d / SCHEMA_FILE} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(schema, dict) or schema.get("format") != FORMAT:
        got = schema.get("format") if isinstance(schema, dict) else type(schema).__name__
        raise ConfigError(f"zo-finetuner: {d / SCHEMA_FILE} is not a zoplatform policy "
                          f"(format {got!r}, expected {FORMAT!r})")
    kind = policy_kind(schema)
    if kind not in POLICY_KINDS:
        raise ConfigError(f"zo-finetuner: {d / SCHEMA_FILE} has policy kind {kind!r}; this version reads "
                          f"{', '.join(POLICY_KINDS)}")
    expected = list(FEATURES) if kind == KIND_MLP else []
    if list(schema.get("features", [])) != expected:
        raise ConfigError(f"zo-finetuner: {d / SCHEMA_FILE} uses features {schema.get('features')}, "
                          f"this version computes {expected} for a {kind!r} policy")
    try:
        weights = load_file(str(d / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"zo-finetuner: {d / WEIGHTS_FILE} is not a readable safetensors file "
                          f"({str(e).splitlines()[0][:120]})") from None
    if not isinstance(schema.get("blocks"), list) or not schema["blocks"]:
        raise ConfigError(f"zo-finetuner: {d / SCHEMA_FILE} lists no blocks (it must name the tensors it was "
                          f"trained for)")
    _check_weights(weights, len(schema["blocks"]), schema, f"zo-finetuner: {d}")
    return Policy(schema, {k: weights[k].float() for k in weight_keys(kind)}, str(d))



def policy_blocks(named: Iterable[tuple[str, torch.Tensor]], embedding: set[str]) -> list[tuple[str, list[int], bool]]:
    """(name, shape, is_embedding) of trainable, de-duplicated tensors in model
    order: the layout a policy is saved for (same rule as ``blocks_from_named``)."""
    return [(n, list(p.shape), n in embedding) for n, p in trainable_named(named)]
