"""HiZOO: zeroth-order SGD preconditioned by a diagonal Hessian estimate.

Zhao et al. *Second-Order Fine-Tuning without Pain for LLMs: A Hessian
Informed Zeroth-Order Optimizer.* ICLR 2025, arXiv:2402.15173; code
``Yanjun-Zhao/HiZOO`` (2025 layout, ``trainer.py``).  Spec: ``docs/algorithms.md`` §9.

Update rule (per tensor, H = diagonal Hessian estimate = Σ⁻¹, z regenerated from
the step seed; 3 forward passes on one batch)::

    u   = z ⊙ H^{-1/2},  z ~ N(0, I)
    L0  = L(θ),  L+ = L(θ + εu),  L− = L(θ − εu)
    c₂  = |L+ + L− − 2 L0| / (2ε²),   c₁ = (L+ − L−) / (2ε)
    H  ← (1 − α) H + α c₂ H ⊙ z ⊙ z                  # the step's old H perturbed θ
    θ  ← (1 − ηλ) θ − η c₁ z ⊙ H^{-1/2}               # with the updated H

Provenance and departures
-------------------------
* [code] the 2025 semantics (H = Σ⁻¹, initialised to ones; perturb with the old
  H, step with the new one), no |z² − 1| correction, constant α (``hessian_smooth``,
  default 1e-8 from the OPT-13B README), lr 1e-6, ε 1e-3, no weight decay.
* [recon] H is kept in fp32 whatever the weights' dtype (the code keeps it in
  the weights' dtype, where α = 1e-8 increments round away in fp16).
* [recon] 3 forwards: the code's 4th, post-update logging forward is not made;
  ``StepRecord.losses`` = (L0, L+, L−).
* [recon] weight decay only on decayed blocks (the code decays every tensor).
* [recon] a step whose losses are not all finite only restores θ (H and θ
  kept) and is counted (``state.skipped``); the code would write NaN into H.
* [recon] restore, H update, decay and step fused into one pass over z.
* [recon] z is Gaussian only (no ``direction``): with ±1 entries z ⊙ z ≡ 1 and
  H could not learn relative curvature.
* HiZOO-L (low-rank Hessian) is not in the public code and not implemented.

Passes, memory, numerics: ``docs/method-notes.md``, HiZOO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from pydantic import Field

from ..params import axpy_, for_blocks, value
from ..rng import DirectionLaw
from ..types import StepRecord
from .base import ZOConfig, ZOMethod, as_float
from .state import State


class HiZOOConfig(ZOConfig):
    """HiZOO hyperparameters (defaults: the authors' 2025 README, OPT-13B full fine-tuning, §9.4)."""

    lr: float = Field(1e-6, gt=0, description="learning rate η (README OPT-13B 1e-6)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε (README 1e-3)")
    hessian_smooth: float = Field(1e-8, ge=0, lt=1, description="α, the constant smoothing of the diagonal "
                                                                "Hessian estimate (README 1e-8; 0: H ≡ 1, MeZO "
                                                                "with one wasted forward)")


@dataclass(frozen=True, eq=False)
class HiZOOState(State):
    """HiZOO's state.  ``hessian`` (one fp32 tensor of every block's size: +1× the trainable weights in fp32)
    is donated (:mod:`~zoplatform.algorithms.state`): a step updates it in place and hands it on."""

    donated = ("hessian",)
    t: int = 0  # steps taken
    skipped: int = 0  # steps with a non-finite loss (θ restored, nothing updated)
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)  # H per block (fp32, the block's shape)


class _Preconditioned(DirectionLaw):
    """The law of one block in one pass: u = z ⊙ H^{-1/2}, z from ``inner``, chunk by chunk in order."""

    def __init__(self, inner: DirectionLaw, h: torch.Tensor):
        self.inner, self.name, self.h, self.pos = inner, inner.name, h.view(-1), 0

    def fill_(self, out, g):
        n = out.numel()
        start, self.pos = self.pos, (self.pos + n) % self.h.numel()
        return self.inner.fill_(out, g).mul_(torch.rsqrt(self.h[start:start + n]))


class HiZOO(ZOMethod):
    """HiZOO (ICLR 2025): MeZO along z ⊙ H^{-1/2} with a running diagonal Hessian estimate H, 3 forwards.

    Example — a 10-D quadratic:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("hizoo", lr=0.05, eps=1e-3, hessian_smooth=1e-2, seed=0) < 1.0
    True
    """

    name = "hizoo"
    paper = "Zhao et al., HiZOO, ICLR 2025, arXiv:2402.15173"
    Config = HiZOOConfig
    State = HiZOOState

    @property
    def forwards_per_step(self) -> int:
        return 3

    def init(self, blocks):
        """H = 1 for every block (fp32, on the block's device)."""
        with torch.inference_mode(False):
            h = {b.name: torch.ones(value(b).shape, dtype=torch.float32, device=b.param.device) for b in blocks}
        return HiZOOState(t=0, skipped=0, hessian=h)

    def laws(self, state: HiZOOState, blocks) -> list[DirectionLaw]:
        """One pass's laws, u_b = z_b ⊙ H_b^{-1/2} at the state's H."""
        return [_Preconditioned(self.law, state.hessian[b.name]) for b in blocks]

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        eps, alpha = c.eps, c.hessian_smooth
        # 1. L0 at θ, then L± at θ ± εz⊙H^{-1/2} (the old H); θ is left at θ − εu
        l0 = as_float(closure())
        lp, lm = self.two_point(blocks, seed, closure, law=self.laws(state, blocks),
                                first_law=self.laws(state, blocks))
        new = state.replace(t=state.t + 1)
        losses = (l0, lp, lm)
        if not all(map(math.isfinite, losses)):  # restore only: H and θ as they were
            self.perturb(blocks, seed, eps, law=self.laws(state, blocks))
            return new.replace(skipped=state.skipped + 1), StepRecord(seed, losses, lr, (0.0, 0.0), {"skipped": 1})
        # 2. the two scalars
        c2 = abs(lp + lm - 2.0 * l0) / (2.0 * eps * eps)
        c1 = (lp - lm) / (2.0 * eps)

        # 3. one pass over z: restore (+εz⊙H_old^{-1/2}), H update, decay and step along z⊙H_new^{-1/2}
        def fused(beta):
            def transform(start, theta, z, h_all):
                h = h_all.view(-1)[start:start + z.numel()]
                d = z * torch.rsqrt(h)  # u with the old H
                d.mul_(beta * eps)
                if alpha != 0.0:  # H ← H + α·H·(c₂z² − 1) = (1 − α)H + α c₂ H z²
                    h.addcmul_(h, z * z * c2 - 1.0, value=alpha)
                d.addcmul_(z, torch.rsqrt(h), value=-lr * c1)
                return d
            return transform

        def one(i):
            b = blocks[i]
            beta = 1.0 - lr * c.weight_decay if b.decay else 1.0
            h_all = state.hessian[b.name]  # donated: updated in place
            axpy_([b], seed, self.law, self.scratch, 1.0, beta=beta,
                  transform=lambda s, th, z, f=fused(beta), h=h_all: f(s, th, z, h))

        for_blocks(blocks, one)
        return new, StepRecord(seed, losses, lr, (c1, c2), {"skipped": 0})

    def block_table(self, state, blocks):
        """Per block: min, mean and max of its diagonal Hessian estimate H."""
        rows = []
        for b in blocks:
            h = state.hessian.get(b.name)
            if h is not None:
                h64 = h.double()
                rows.append({"block": b.name, "numel": h.numel(), "h_min": float(h64.min()),
                             "h_mean": float(h64.mean()), "h_max": float(h64.max())})
        return rows
