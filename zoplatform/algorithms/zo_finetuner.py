"""ZO Fine-tuner: MeZO with a learned per-block perturbation scale.

Zhang, Li, Zhao, Sun, Zhang. *Learning a Zeroth-Order Optimizer for
Fine-Tuning LLMs* (ZO Fine-tuner).  ICML 2026, arXiv:2510.00419.  Spec:
``docs/algorithms.md`` §5 (5.1 policy and deployment, 5.2 meta-training, which
lives in ``meta/`` because it needs backprop; this module holds everything the
*deploying* side needs: the policy's functional definition, its file format
and the ZO method).  The official code was not consulted for this file.

Policy (§5.1).  One small MLP per block b (a block = one trainable tensor)::

    x_b = (mean θ_b, var θ_b, L⁺_{t−1}, L⁻_{t−1}, σ_b,{t−1})          5 features
    σ_b = | w2_b · tanh(W1_b x_b + b1_b) + b2_b |                     Linear(5→64) → Tanh → Linear(64→1) → |·|
    c   = sqrt(d_eff / Σ_b n_b σ_b²),   d_eff = Σ_b n_b                trace normalisation

so Σ_b n_b (cσ_b)² = d_eff: the perturbation ``cσ⊙z`` has E‖cσ⊙z‖² = d (the
covariance diag(cσ)² has the trace of the identity's), and only the *relative*
σ between blocks matters.  ``n_b`` is the block's numel, except embedding
matrices, which count ``min(rows, R_b) × hidden``: the paper's heuristic that
only the rows a batch touches matter (it uses 15·batch·world rows).

Policy kinds (``policy.json``'s ``network.kind``; a file without one is ``mlp``):

* ``mlp`` — the paper's network above (what ``zo meta-train --profile paper`` writes).
* ``scale`` — [departure, not in the paper] a constant σ_b per block, stored as
  ``sigma [B]`` (no features, no per-step block statistics).  Written by
  ``zo meta-train --profile descent`` (``meta/metatrain.py``), which fits σ to a
  closed-form expected ZO descent instead of the paper's η_u-scaled lookahead;
  the same trace normalisation c applies at deployment.

Deployment step (MeZO with per-block direction scale s_b = c·σ_b)::

    σ, c from the policy (no grad);    u_b = c σ_b z_b,  z ~ N(0, I) from the step seed
    L± = L(θ ± ε u; B)
    g  = (L⁺ − L⁻) / (2ε)
    θ_b ← θ_b − η (g u_b + λ θ_b)        (λ = 0 on biases and normalisation weights)
    state ← (L⁺, L⁻, σ)                  (the next step's inputs)

Restore and update are fused as in MeZO: θ_b ← β_b θ'_b + (ε β_b − η g)·s_b z_b
with θ' = θ − ε u and β_b = 1 − ηλ (three passes over z, through
:func:`~zoplatform.params.axpy_`'s ``scale``).  The step is a deterministic
function of (θ, state, seed, losses, lr), so a trajectory replays bit-exactly;
the per-step policy state (previous losses, previous σ) lives in the method
state, so ``ZOOptimizer.state_dict`` resumes exactly.

Without a policy (``policy=None``) σ_b ≡ 1, c = 1 exactly and the step *is*
MeZO's, bit for bit (same directions, same fused update).

Choices where the source is silent or where we differ [recon]
-------------------------------------------------------------
* First step: L⁺_{−1} = L⁻_{−1} = 0 and σ_{−1} = 1.
* var θ_b is the population variance (a 1-element block has var 0, not NaN).
* Features and the MLP run in fp32 on CPU; c is computed in fp64 (the paper
  scales n_b by 1e-6 to stay inside fp32/fp16 range; fp64 makes that moot).
* Embedding rows: ``embedding_rows`` (None = the value the policy was
  meta-trained with, or 240 = 15·16·1, the paper's rule at its deployment
  batch 16 on one device, when no policy is given).  Embedding blocks are the
  ones the policy file marks (detected by module type, ``nn.Embedding``, at
  meta-training), or those matching ``embedding_pattern``.  Tied weights
  (SmolLM2's lm_head = embed_tokens) are one block, counted as an embedding,
  as in the paper's code.
* The policy is never a pickle: safetensors weights + a JSON schema
  (:func:`save_policy` / :func:`load_policy`), matched to the blocks by name
  and shape; any mismatch is a one-line :class:`~zoplatform.errors.ConfigError`.
* Per-block features are read from every block each step (``mlp`` kind): one
  read-only pass over the weights in addition to MeZO's three direction passes.
  A ``scale`` policy needs none.

Example — a quadratic over 4 tensors (identity policy, i.e. MeZO):

>>> import torch, zoplatform
>>> xs = [torch.nn.Parameter(torch.ones(4)) for _ in range(4)]
>>> opt = zoplatform.optimizer("zo-finetuner", [(f"x{i}", x) for i, x in enumerate(xs)], lr=0.02, eps=1e-3)
>>> for _ in range(300):
...     _ = opt.step(lambda: sum((x ** 2).sum() for x in xs))
>>> bool(sum((x ** 2).sum() for x in xs) < 4.0)
True
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from ..errors import ConfigError
from ..params import Block, Scratch, axpy_, trainable_named, value
from ..rng import DirectionLaw
from ..types import StepRecord
from .base import SPSAConfig, ZOMethod

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
        hidden, f = int(schema["network"]["hidden"]), len(FEATURES)
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
    _check_weights(weights, len(schema["blocks"]), schema, f"zo-finetuner: {d}")
    return Policy(schema, {k: weights[k].float() for k in weight_keys(kind)}, str(d))


# --------------------------------------------------------------------------
# the deploying method
# --------------------------------------------------------------------------
class ZOFinetunerConfig(SPSAConfig):
    """ZO Fine-tuner deployment hyperparameters (defaults: the paper's script, §5.1)."""

    lr: float = Field(1e-7, gt=0, description="learning rate η (paper script 1e-7; the loop's schedule scales it)")
    policy: str | None = Field(None, description="policy directory (policy.json + policy.safetensors); "
                                                 "None: identity policy σ ≡ 1, i.e. exactly MeZO")
    policy_version: str | None = Field(None, description="provenance only (logged, not used): the registry "
                                                         "version models:/NAME/VERSION the policy was resolved from")
    base_model: str | None = Field(None, description="if set, refuse a policy meta-trained for another base model")
    embedding_rows: int | None = Field(None, ge=1, description="rows an embedding matrix counts as in the trace "
                                                               "normalisation; None: the policy's value (240 "
                                                               "without a policy)")
    embedding_pattern: str | None = Field(None, description="regex on block names marking embeddings; None: the "
                                                            "policy's flags (nn.Embedding at meta-training), or "
                                                            "the built-in name rule without a policy")


class ZOFinetuner(ZOMethod):
    """MeZO with the learned per-block scale c·σ_b of a meta-trained policy."""

    name = "zo-finetuner"
    paper = "Zhang, Li, Zhao, Sun, Zhang, ZO Fine-tuner, ICML 2026, arXiv:2510.00419"
    Config = ZOFinetunerConfig

    def __init__(self, config=None, **hyper):
        super().__init__(config, **hyper)
        c = self.config
        if c.embedding_pattern is not None:
            try:
                re.compile(c.embedding_pattern)
            except re.error as e:
                raise ConfigError(f"{self.name}: embedding_pattern={c.embedding_pattern!r} is not a regex: {e}") \
                    from None
        # the file is read (and checked) here, so a bad policy fails before any model loads
        self.policy = load_policy(c.policy) if c.policy else None
        if self.policy is not None and c.base_model and self.policy.base_model != c.base_model:
            raise ConfigError(f"{self.name}: policy {self.policy.path} was meta-trained for "
                              f"{self.policy.base_model!r}, not for base_model={c.base_model!r}")
        self.weights: dict[str, torch.Tensor] | None = None
        self.counts: torch.Tensor | None = None
        self.kind = self.policy.kind if self.policy is not None else None

    # -- state ------------------------------------------------------------------
    def init(self, blocks: Sequence[Block]) -> dict:
        c = self.config
        flags = None
        if self.policy is not None:
            self.weights, flags = self.policy.for_blocks(blocks)
        if c.embedding_pattern is not None or flags is None:
            rx = re.compile(c.embedding_pattern or DEFAULT_EMBEDDING_PATTERN)
            flags = [bool(rx.search(b.name)) for b in blocks]
        rows = c.embedding_rows or (self.policy.embedding_rows if self.policy else DEFAULT_EMBEDDING_ROWS)
        self.embedding = flags
        self.counts = torch.tensor(effective_counts([tuple(b.param.shape) for b in blocks], flags, rows),
                                   dtype=torch.float64)
        n = len(blocks)
        return {"t": 0, "prev_losses": torch.zeros(2, dtype=torch.float64),
                "sigma": torch.ones(n, dtype=torch.float32)}

    # -- the policy -------------------------------------------------------------
    @torch.no_grad()
    def sigma(self, state: dict, blocks: Sequence[Block]) -> torch.Tensor:
        """σ_b for this step (fp32, CPU); ones without a policy."""
        if self.weights is None:
            return torch.ones(len(blocks), dtype=torch.float32)
        if self.kind == KIND_SCALE:  # constant per block: no features, no pass over the weights
            return self.weights["sigma"].clone()
        x = policy_features(block_stats(blocks), state["prev_losses"], state["sigma"])
        return policy_sigma(self.weights, x)

    def scales(self, sigma: torch.Tensor) -> tuple[float, list[float]]:
        """(c, [c·σ_b]) as Python floats."""
        if self.weights is None:
            return 1.0, [1.0] * sigma.numel()
        c = trace_scale(sigma, self.counts)
        return c, [c * s for s in sigma.double().tolist()]

    # -- the step ---------------------------------------------------------------
    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        if self.counts is None or self.counts.numel() != len(blocks):
            raise RuntimeError(f"{self.name}: call init(blocks) before step (the policy is matched to the blocks)")
        # 1. policy: σ_b from (θ_b stats, previous L±, previous σ_b); trace-normalised scale s_b = c·σ_b
        sigma = self.sigma(state, blocks)
        trace_c, s = self.scales(sigma)
        # 2. two evaluations on the same batch at θ ± ε s⊙z
        loss_plus, loss_minus = self.two_point(blocks, seed, closure, scale=s)
        # 3. projected gradient
        g = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 4. restore + decay + SGD step, fused: θ_b ← β_b θ'_b + (ε β_b − η g)·s_b z_b
        self.restore_update(blocks, seed, lr, g, scale=s)
        # 5. the policy's next inputs
        new = {"t": int(state["t"]) + 1, "prev_losses": torch.tensor([loss_plus, loss_minus], dtype=torch.float64),
               "sigma": sigma.clone()}
        extra = {"sigma_mean": float(sigma.mean()), "sigma_max": float(sigma.max()),
                 "sigma_min": float(sigma.min()), "trace_c": trace_c}
        return new, StepRecord(seed, (loss_plus, loss_minus), lr, (g,), extra)

    # -- end-of-run artifacts ---------------------------------------------------
    def report(self, state, blocks: Sequence[Block], out_dir) -> list:
        """``zo_finetuner_sigma.csv``: last σ_b, c·σ_b and n_b per block."""
        if self.counts is None:
            return []
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sigma = state["sigma"]
        c = trace_scale(sigma, self.counts) if self.weights is not None else 1.0
        lines = ["block,numel,effective_count,embedding,sigma,scale"]
        lines += [f"{b.name},{b.numel},{int(self.counts[i])},{int(self.embedding[i])},{float(sigma[i]):.6g},"
                  f"{c * float(sigma[i]):.6g}" for i, b in enumerate(blocks)]
        path = out / "zo_finetuner_sigma.csv"
        path.write_text("\n".join(lines) + "\n")
        return [path]


def policy_blocks(named: Iterable[tuple[str, torch.Tensor]], embedding: set[str]) -> list[tuple[str, list[int], bool]]:
    """(name, shape, is_embedding) of trainable, de-duplicated tensors in model
    order: the layout a policy is saved for (same rule as ``blocks_from_named``)."""
    return [(n, list(p.shape), n in embedding) for n, p in trainable_named(named)]
