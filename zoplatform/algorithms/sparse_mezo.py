"""Sparse MeZO (S-MeZO): ZO-SGD on the small-magnitude weights only.

Liu, Zhu, Gong, Cheng, Hsieh, You. *Sparse MeZO: Less Parameters for Better
Performance in Zeroth-Order LLM Fine-Tuning.* arXiv:2402.15751 (NeurIPS 2025).
Spec: ``docs/algorithms.md`` §2.  The official code was not consulted; the
choices marked [recon] below are ours.

Update rule (one SPSA sample per step, z regenerated from the step seed)::

    m_l = 1[|θ_l| ≤ h_l]       h_l: per-layer quantile of |θ_l| at level 1 − sparsity
    g   = (L(θ + ε m⊙z; B) − L(θ − ε m⊙z; B)) / (2ε)
    θ  ← θ − η · (g · m⊙z + λ·θ)        (λ = 0 on biases and normalisation weights)

so only the ``1 − sparsity`` fraction of smallest-|θ| entries of each masked
tensor is perturbed and updated (sparsity 0.8: the 20 % smallest).

Implementation
--------------
* **Dynamic mask, cached threshold** [recon].  The mask is recomputed from the
  *current* weights at every step; only the scalar threshold ``h_l`` per tensor
  is state, refreshed every ``threshold_every`` steps by ``kthvalue`` on |θ_l|
  (on a fixed-size seeded subsample of ``threshold_sample`` entries for larger
  tensors: the quantile's standard error is √(p(1−p)/n) ≈ 0.16 % of the
  entries at the default 65,536).  ``threshold_every=1`` re-derives h_l every
  step like the paper; the default 100 avoids a per-step quantile over every
  matrix while weights move by O(η) per step.
* **One mask for the whole step, exactly.**  The perturbation moves the masked
  entries (θ → θ ± εm⊙z), so re-evaluating ``|θ| ≤ h`` in the second and third
  passes would not reproduce the base mask.  The first pass therefore stores
  the mask *bit-packed* (1 bit per entry, uint8) and the −2ε and restore+update
  passes unpack it; the bits are freed when the step ends.  Transient memory:
  numel/8 bytes per masked tensor, i.e. 3.1 % of fp32 (6.25 % of bf16)
  weights during a step and nothing between steps — MeZO's footprint plus
  that.  (The paper's alternative, a per-layer forward hook that never writes
  W during the evaluations, needs a model-specific forward; this keeps the
  model-agnostic closure interface.)
* **Which tensors are masked** (``masked``): ``"matrices"`` (every 2-D tensor:
  linear weights and embeddings; the spec's default), ``"decayed"`` (every
  decayed tensor) or ``"all"``.  The others are perturbed densely as in MeZO
  (``unmasked="dense"``) or left untouched (``unmasked="frozen"``).
* **Random-mask ablation** (``mask="random"``, the paper's R-MeZO): the same
  density, a fresh Bernoulli(1 − sparsity) mask per step and tensor drawn from
  the step seed.  It is regenerated identically in each pass, so it stores
  nothing.
* Restore and update are fused as in MeZO (three passes over the directions):
  θ ← (1 − ηλ)·θ' + (ε(1 − ηλ) − ηg)·m⊙z, θ' = θ − εm⊙z.  Weight decay acts on
  the whole tensor, masked or not.

Example — one step touches only the 20 % smallest-|θ| entries:

>>> import torch, zoplatform
>>> x = torch.nn.Parameter(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))
>>> x0 = x.detach().clone()
>>> opt = zoplatform.optimizer("sparse-mezo", [("x", x)], lr=0.01, eps=1e-3, sparsity=0.8)
>>> _ = opt.step(lambda: ((x - 1.0) ** 2).sum())
>>> changed = x.detach() != x0
>>> int(changed.sum())
20
>>> bool(x0.abs()[changed].max() <= x0.abs()[~changed].min())
True
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..config import StrictModel
from ..params import Block, axpy_
from ..rng import block_seed, generator
from ..types import StepRecord
from .base import ZOMethod, as_float

# Stream ids that separate this method's extra randomness from the directions (stream 0).
_THRESHOLD_STREAM = 0x5A11
_RANDOM_MASK_STREAM = 0x5A12

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_BIT_TABLE = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)).bitwise_and(1).float()  # [256, 8]


class SparseMeZOConfig(StrictModel):
    """S-MeZO hyperparameters (defaults: MeZO's protocol, §1.2, and the paper's best sparsity, §2)."""

    lr: float = Field(1e-6, gt=0, description="learning rate η (the paper tunes a larger one than MeZO's)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε")
    weight_decay: float = Field(0.0, ge=0, description="λ, applied to decayed blocks only")
    direction: Literal["gaussian", "rademacher", "pool"] = Field("gaussian", description="law of z")
    chunk_size: int = Field(1 << 20, ge=1024, multiple_of=8,
                            description="elements generated per chunk (a multiple of 8: masks are bit-packed)")
    sparsity: float = Field(0.8, ge=0.0, lt=1.0,
                            description="fraction of each masked tensor NOT perturbed (paper: 0.5-0.8, best 0.8)")
    mask: Literal["magnitude", "random"] = Field(
        "magnitude", description="magnitude: |θ| ≤ per-tensor quantile (S-MeZO); random: Bernoulli (R-MeZO ablation)")
    masked: Literal["matrices", "decayed", "all"] = Field(
        "matrices", description="which tensors are masked: 2-D ones, decayed ones, or every tensor")
    unmasked: Literal["dense", "frozen"] = Field(
        "dense", description="tensors that are not masked: perturbed densely (MeZO) or left untouched")
    threshold_every: int = Field(100, ge=1, description="refresh the thresholds h_l every N steps (1 = every step)")
    threshold_sample: int = Field(1 << 16, ge=1024,
                                  description="quantile on a seeded subsample of this many entries for larger tensors")


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """Bool [n] -> uint8 [ceil(n/8)], bit j of byte i = mask[8i + j]."""
    pad = (-mask.numel()) % 8
    if pad:
        mask = torch.cat([mask, mask.new_zeros(pad)])
    return (mask.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS.to(mask.device)).sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [ceil(n/8)] -> float 0/1 [n] (one gather through a 256×8 table)."""
    table = _BIT_TABLE if packed.device.type == "cpu" else _BIT_TABLE.to(packed.device)
    return table.index_select(0, packed.int()).view(-1)[:n]


def magnitude_threshold(param: torch.Tensor, keep: float, sample: int, seed: int) -> float:
    """h such that about a ``keep`` fraction of |param| is ≤ h: the ⌈keep·n⌉-th
    smallest |θ| (of a seeded uniform subsample of ``sample`` entries when
    the tensor is larger)."""
    flat = param.detach().view(-1)
    n = flat.numel()
    if n > sample:
        idx = torch.randint(0, n, (sample,), generator=generator(seed, flat.device), device=flat.device)
        vals = flat[idx].abs()
    else:
        vals = flat.abs()
    if vals.dtype in (torch.float16, torch.bfloat16):  # exact in fp32, so h is exact in the weights' dtype
        vals = vals.float()
    k = min(vals.numel(), max(1, math.ceil(keep * vals.numel())))
    return float(vals.kthvalue(k).values)


class _StepMasks:
    """The mask of one step, identical in its three passes.

    Magnitude: built from the base θ in the first pass and kept bit-packed;
    random: regenerated from (seed, block key) in each pass.
    """

    def __init__(self, kind: str, keep: float, thresholds: torch.Tensor, seed: int):
        self.kind, self.keep, self.thresholds, self.seed = kind, keep, thresholds, seed
        self.packed: dict[int, torch.Tensor] = {}
        self._kept: list[torch.Tensor] = []  # per-chunk counts of perturbed entries (first pass)

    @property
    def kept(self) -> int:
        """Entries perturbed this step (one sync, after the first pass)."""
        return int(sum(int(k) for k in self._kept))

    def rule(self, i: int, block: Block, first: bool):
        if self.kind == "random":
            g = generator(block_seed(self.seed, block.key, _RANDOM_MASK_STREAM), block.param.device)

            def random_rule(theta, start):
                m = torch.rand(theta.numel(), generator=g, device=theta.device) < self.keep
                if first:
                    self._kept.append(m.sum())
                return m

            return random_rule
        if first:
            h = float(self.thresholds[i])
            packed = self.packed[i] = torch.empty((block.numel + 7) // 8, dtype=torch.uint8,
                                                  device=block.param.device)

            def build_rule(theta, start):
                m = theta.abs() <= h
                bits = _pack(m)
                packed[start // 8: start // 8 + bits.numel()] = bits
                self._kept.append(m.sum())
                return m

            return build_rule
        packed = self.packed[i]
        return lambda theta, start: _unpack(packed[start // 8: (start + theta.numel() + 7) // 8], theta.numel())


class SparseMeZO(ZOMethod):
    """S-MeZO (``mask="magnitude"``) and its random-mask ablation R-MeZO (``mask="random"``)."""

    name = "sparse-mezo"
    paper = "Liu et al., Sparse MeZO, arXiv:2402.15751 (NeurIPS 2025)"
    Config = SparseMeZOConfig

    # -- which blocks are masked ------------------------------------------------
    def is_masked(self, block: Block) -> bool:
        kind = self.config.masked
        if kind == "matrices":
            return block.param.dim() == 2
        if kind == "decayed":
            return block.decay
        return True

    def init(self, blocks):
        # thresholds: NaN = not computed yet (or block not masked); t: steps taken
        return {"t": 0, "thresholds": torch.full((len(blocks),), math.nan, dtype=torch.float64)}

    def refresh_thresholds(self, state: dict, blocks, seed: int) -> torch.Tensor:
        """Per-tensor thresholds h_l from the current weights (a new tensor)."""
        c = self.config
        h = state["thresholds"].clone()
        for i, b in enumerate(blocks):
            if self.is_masked(b):
                h[i] = magnitude_threshold(b.param, 1.0 - c.sparsity, c.threshold_sample,
                                           block_seed(seed, b.key, _THRESHOLD_STREAM))
        return h

    def _pass(self, blocks, active, masks: _StepMasks, seed, alphas, betas, first: bool) -> None:
        """One pass over the active blocks' (masked) directions: θ_b ← β_b θ_b + α_b m_b⊙z_b."""
        for i in active:
            b = blocks[i]
            rule = masks.rule(i, b, first) if self.is_masked(b) else None
            axpy_([b], seed, self.law, self.scratch, alphas[i], beta=betas[i], mask=rule)

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        t = int(state["t"])
        active = [i for i, b in enumerate(blocks) if self.is_masked(b) or c.unmasked == "dense"]
        # 0. thresholds h_l: refreshed from the current weights every `threshold_every` steps
        thresholds = state["thresholds"]
        if c.mask == "magnitude" and t % c.threshold_every == 0:
            thresholds = self.refresh_thresholds(state, blocks, seed)
        masks = _StepMasks(c.mask, 1.0 - c.sparsity, thresholds, seed)
        n = len(blocks)
        # 1. L+ at θ + ε m⊙z  (the first pass fixes the step's mask)
        self._pass(blocks, active, masks, seed, [c.eps] * n, [1.0] * n, first=True)
        loss_plus = as_float(closure())
        # 2. L− at θ − ε m⊙z  (same mask, unpacked)
        self._pass(blocks, active, masks, seed, [-2.0 * c.eps] * n, [1.0] * n, first=False)
        loss_minus = as_float(closure())
        # 3. projected gradient
        g = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 4. restore + decay + SGD step on the masked coordinates, one fused pass
        betas = [1.0 - lr * c.weight_decay if b.decay else 1.0 for b in blocks]
        alphas = [c.eps * beta - lr * g for beta in betas]
        self._pass(blocks, active, masks, seed, alphas, betas, first=False)
        masks.packed.clear()  # the step's mask bits are freed here
        # the fraction of trainable coordinates perturbed this step (dense blocks count fully)
        dense = sum(blocks[i].numel for i in active if not self.is_masked(blocks[i]))
        total = sum(b.numel for b in blocks) or 1
        extra = {"perturbed_frac": (masks.kept + dense) / total}
        return {"t": t + 1, "thresholds": thresholds}, StepRecord(seed, (loss_plus, loss_minus), lr, (g,), extra)
