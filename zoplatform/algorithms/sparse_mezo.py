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

Provenance and departures
-------------------------
* [paper] the rule, the mask recomputed from the current weights each step,
  and the random-mask ablation R-MeZO (``mask="random"``: a fresh
  Bernoulli(1 − sparsity) mask per step and tensor, from the step seed).
* [recon] **cached threshold**: h_l is refreshed every ``threshold_every``
  steps (default 100; 1 is the paper's every step), by ``kthvalue`` on a
  seeded subsample of ``threshold_sample`` entries for larger tensors.
* [recon] **one mask per step**: the first pass stores it bit-packed and the
  other two passes reuse it (the paper uses a per-layer forward hook instead,
  which needs a model-specific forward).
* [recon] only the kept entries get random numbers (compact generation), so
  z differs from MeZO's z masked; the law of the kept entries is the same.
* [recon] which tensors are masked (``masked``: every 2-D tensor by default,
  the spec's); the others are dense as in MeZO or frozen (``unmasked``).
  Weight decay acts on the whole tensor, masked or not.

Implementation, memory and timings: ``docs/method-notes.md``, Sparse MeZO.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from ..params import Block, value
from ..rng import DirectionLaw, block_seed, generator
from ..types import StepRecord
from .base import SPSAConfig, ZOMethod
from .state import State

# Stream ids that separate this method's extra randomness from the directions (stream 0).
_THRESHOLD_STREAM = 0x5A11
_RANDOM_MASK_STREAM = 0x5A12

_BIT_TABLE = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)).bitwise_and(1).bool()  # [256, 8]
_NIBBLE_MAGIC = 0x204081  # gathers the low bits of 4 bytes into bits 21..24 (no overlapping partial products)


class SparseMeZOConfig(SPSAConfig):
    """S-MeZO hyperparameters (defaults: MeZO's protocol, §1.2, and the paper's best sparsity, §2)."""

    lr: float = Field(1e-6, gt=0, description="learning rate η (the paper tunes a larger one than MeZO's)")
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
    """Bool [n] -> uint8 [ceil(n/8)], bit j of byte i = mask[8i + j].

    Four mask bytes are read as one int32 x (little endian) and
    (x · 0x204081) >> 21 & 0xF collects their low bits: the partial products
    land on distinct bit positions, so nothing carries into the nibble."""
    pad = (-mask.numel()) % 8
    b = mask.view(torch.uint8)
    if pad:
        b = torch.cat([b, b.new_zeros(pad)])
    nib = ((b.view(torch.int32).to(torch.int64) * _NIBBLE_MAGIC) >> 21).bitwise_and_(0xF).view(-1, 2)
    return (nib[:, 0] | (nib[:, 1] << 4)).to(torch.uint8)


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [ceil(n/8)] -> bool [n] (one gather through a 256×8 table)."""
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

    The first pass builds each block's mask (magnitude: |θ| ≤ h_l on the base
    θ; random: Bernoulli from (seed, block key)) and keeps it bit-packed; the
    −2ε and restore+update passes unpack it.  Also holds the per-step
    chunk-sized buffers of the compact generation (allocated per step, so they
    never outlive an ``inference_mode`` region).
    """

    def __init__(self, kind: str, keep: float, thresholds: torch.Tensor, seed: int, chunk: int):
        self.kind, self.keep, self.thresholds, self.seed, self.chunk = kind, keep, thresholds, seed, chunk
        self.packed: dict[int, torch.Tensor] = {}
        self._bufs: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._bits: dict[torch.device, torch.Tensor] = {}
        self._offsets: dict[int, tuple[torch.device, int]] = {}

    def reserve(self, blocks, active: list[int]) -> None:
        """One contiguous uint8 buffer for all masked blocks' bits (per device): a
        single allocation instead of one per tensor among the chunk temporaries,
        which would fragment the heap and raise peak RSS."""
        sizes: dict[torch.device, int] = {}
        for i in active:
            dev = blocks[i].param.device
            self._offsets[i] = (dev, sizes.get(dev, 0))
            sizes[dev] = sizes.get(dev, 0) + (blocks[i].numel + 7) // 8
        self._bits = {dev: torch.empty(n, dtype=torch.uint8, device=dev) for dev, n in sizes.items()}

    def bits_for(self, i: int, block: Block) -> torch.Tensor:
        dev, off = self._offsets[i]
        return self._bits[dev][off: off + (block.numel + 7) // 8]

    def release(self) -> None:
        """Free the step's mask bits and buffers."""
        self.packed.clear()
        self._bits, self._bufs = {}, {}

    def buffers(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(compact draws, chunk+1 fp32; ranks, chunk int32) on ``device``, one pair per thread."""
        key = (device, threading.get_ident())
        if key not in self._bufs:
            self._bufs[key] = (torch.empty(self.chunk + 1, dtype=torch.float32, device=device),
                               torch.empty(self.chunk, dtype=torch.int32, device=device))
        return self._bufs[key]

    def chunk_rule(self, i: int, block: Block, first: bool):
        """(θ chunk, flat offset) -> bool mask of the chunk, for block ``i`` in one pass."""
        if not first:
            packed = self.packed[i]
            return lambda theta, start: _unpack(packed[start // 8: (start + theta.numel() + 7) // 8], theta.numel())
        packed = self.packed[i] = self.bits_for(i, block)
        if self.kind == "random":
            g = generator(block_seed(self.seed, block.key, _RANDOM_MASK_STREAM), block.param.device)
            make = lambda theta: torch.rand(theta.numel(), generator=g, device=theta.device) < self.keep
        else:
            h = float(self.thresholds[i])
            make = lambda theta: theta.abs() <= h

        def build(theta, start):
            m = make(theta)
            bits = _pack(m)
            packed[start // 8: start // 8 + bits.numel()] = bits
            return m

        return build


class _MaskedLaw(DirectionLaw):
    """Direction law of one masked block in one pass: z = m ⊙ z̃ where only the
    kept entries are drawn, in order, from the inner law (compact generation).

    A chunk's k kept entries take the next k draws of the block's stream:
    rank = cumsum(m) gives each kept entry its draw and index_select scatters
    them (draw 0 is a zero for the entries off the mask).  The mask is the
    same in the three passes, so the draws are too.  At sparsity 0.8 this
    generates a fifth of MeZO's random numbers.
    """

    def __init__(self, inner: DirectionLaw, block: Block, rule, masks: _StepMasks):
        self.inner, self.name, self.rule, self.masks = inner, inner.name, rule, masks
        self.flat = value(block).view(-1)
        self.pos = 0
        self.kept = 0  # entries drawn by this law (the first pass's count is the step's)

    def fill_(self, out, g):
        n = out.numel()
        start, self.pos = self.pos, self.pos + n
        # axpy_ draws a chunk's direction before it writes that chunk, so this is θ as the pass found it
        m = self.rule(self.flat[start:start + n], start)
        draws, ranks = self.masks.buffers(out.device)
        rank = torch.cumsum(m, 0, dtype=torch.int32, out=ranks[:n])
        k = int(rank[-1]) if n else 0
        self.kept += k
        draws[0] = 0.0
        self.inner.fill_(draws[1:k + 1], g)
        return torch.index_select(draws[:k + 1], 0, rank.mul_(m), out=out)


@dataclass(frozen=True, eq=False)
class SparseMeZOState(State):
    t: int = 0  # steps taken
    thresholds: torch.Tensor | None = None  # h_l per block (fp64); NaN = not computed yet or block not masked


class SparseMeZO(ZOMethod):
    """S-MeZO (``mask="magnitude"``) and its random-mask ablation R-MeZO (``mask="random"``).

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

    State = SparseMeZOState

    def init(self, blocks):
        return SparseMeZOState(t=0, thresholds=torch.full((len(blocks),), math.nan, dtype=torch.float64))

    def refresh_thresholds(self, state: SparseMeZOState, blocks, seed: int) -> torch.Tensor:
        """Per-tensor thresholds h_l from the current weights (a new tensor)."""
        c = self.config
        h = state.thresholds.clone()
        for i, b in enumerate(blocks):
            if self.is_masked(b):
                h[i] = magnitude_threshold(b.param, 1.0 - c.sparsity, c.threshold_sample,
                                           block_seed(seed, b.key, _THRESHOLD_STREAM))
        return h

    def _laws(self, blocks, active, masks: _StepMasks, first: bool) -> list[DirectionLaw]:
        """The active blocks' direction laws for one pass: masked (compact) for masked blocks."""
        return [_MaskedLaw(self.law, blocks[i], masks.chunk_rule(i, blocks[i], first), masks)
                if self.is_masked(blocks[i]) else self.law for i in active]

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        t = state.t
        active = [i for i, b in enumerate(blocks) if self.is_masked(b) or c.unmasked == "dense"]
        # 0. thresholds h_l: refreshed from the current weights every `threshold_every` steps
        thresholds = state.thresholds
        if c.mask == "magnitude" and t % c.threshold_every == 0:
            thresholds = self.refresh_thresholds(state, blocks, seed)
        masks = _StepMasks(c.mask, 1.0 - c.sparsity, thresholds, seed, self.scratch.chunk)
        masks.reserve(blocks, [i for i in active if self.is_masked(blocks[i])])
        sub = [blocks[i] for i in active]
        # 1-2. L± at θ ± ε m⊙z: the first pass fixes the step's mask (kept bit-packed), the second unpacks it
        first = self._laws(blocks, active, masks, first=True)
        loss_plus, loss_minus = self.two_point(sub, seed, closure, first_law=first,
                                               law=self._laws(blocks, active, masks, first=False))
        kept = sum(law.kept for law in first if isinstance(law, _MaskedLaw))
        # 3. projected gradient
        g = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 4. restore + decay + SGD step on the masked coordinates, one fused pass
        self.restore_update(sub, seed, lr, g, law=self._laws(blocks, active, masks, first=False))
        masks.release()  # the step's mask bits and buffers are freed here
        # the fraction of trainable coordinates perturbed this step (dense blocks count fully)
        dense = sum(blocks[i].numel for i in active if not self.is_masked(blocks[i]))
        total = sum(b.numel for b in blocks) or 1
        extra = {"perturbed_frac": (kept + dense) / total}
        return state.replace(t=t + 1, thresholds=thresholds), StepRecord(seed, (loss_plus, loss_minus), lr, (g,), extra)
