"""LOZO / LOZO-M: zeroth-order SGD along low-rank perturbations with a lazily resampled subspace.

Chen et al. *Enhancing Zeroth-Order Fine-Tuning for Language Models with
Low-Rank Structures.* ICLR 2025, arXiv:2410.07698; code
``optsuite/LOZO`` (``large_models/LOZOtrainer.py``, ``medium_models/src/LOZOtrainer.py``).
Spec: ``docs/algorithms.md`` §10.

Update rule (per matrix block W ∈ R^{m×n}; 1-D blocks are MeZO with z ~ N(0, I); k = 1/r with
``scale_by_rank``, else 1)::

    V ∈ R^{n×r} ~ N(0, 1), redrawn when t mod ν = 0, kept in between;  U ∈ R^{m×r} fresh each step
    c  = (L(W + εUVᵀ) − L(W − εUVᵀ)) / (2ε)
    LOZO:    W ← (1 − ηλ) W − η k c U Vᵀ
    LOZO-M:  N ← c U (first step);  β N + (1 − β) c U;  at a redraw β N V_oldᵀ V / n + (1 − β) c U
             W ← (1 − ηλ) W − η k N Vᵀ          (1-D blocks: a full-size momentum, same β rule)

Provenance and departures
-------------------------
* [code] U, V Gaussian without normalisation, the lazy V (t counted from 0),
  LOZO-M's factored momentum and its re-projection at a redraw, no 1/r
  (``scale_by_rank=False``), defaults r 2, ν 50, ε 1e-3, lr 1e-7 (OPT README).
* [paper] the 1/r of the unbiased estimate, as ``scale_by_rank=True``.
* [recon] the update uses the U of the finite difference at every step; the
  code redraws a different U at the steps where V is redrawn (§10.6-2).
* [recon] ``momentum`` β > 0 selects LOZO-M (the code's ``sgdm``); β = 0 is
  LOZO exactly.  The code has LOZO-M for RoBERTa only (β 0.9 there).
* [recon] U, V and 1-D z come from separate seeded streams per block; V is
  regenerated from the seed of its window's first step (``state.v_seed``).
* [recon] a ≥3-D block is the matrix (shape[0], numel/shape[0]); weight
  decay only on decayed blocks (the code: by parameter-name substring).

Passes, memory: ``docs/method-notes.md``, LOZO.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import Field

from ..params import axpy_, for_blocks
from ..types import StepRecord
from .base import ZOConfig, ZOMethod
from .lowrank import FactoredLaw, gaussian, matrix_shape
from .state import State

_U_STREAM = 0x10B0  # stream of U per block and step (1-D blocks use stream 0)
_V_STREAM = 0x10B1  # stream of V per block and window


class LOZOConfig(ZOConfig):
    """LOZO hyperparameters (defaults: the authors' ``run_lozo.py`` and OPT-13B README, §10.4)."""

    lr: float = Field(1e-7, gt=0, description="learning rate η (OPT-13B README 1e-7; search {1e-6, 1e-7})")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε (all scripts 1e-3)")
    rank: int = Field(2, ge=1, description="r, the rank of the perturbation UVᵀ (run_lozo.py 2)")
    step_interval: int = Field(50, ge=1, description="ν: V is redrawn every ν steps (run_lozo.py 50)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="β of LOZO-M's momentum; 0 is LOZO (code sgdm: "
                                                             "0.7 run_lozo.py, 0.9 medium_models/lozo.sh)")
    scale_by_rank: bool = Field(False, description="divide the estimate by r (the paper's unbiased form; the "
                                                   "code and its published lrs do not)")


@dataclass(frozen=True, eq=False)
class LOZOState(State):
    """LOZO's state: the step count and the seed V is drawn from (r·n numbers per matrix, regenerated, never
    stored); LOZO-M adds N per matrix (m×r, fp32) and a full-size fp32 momentum per 1-D block."""

    t: int = 0  # steps taken
    v_seed: int | None = None  # seed of the current window's V (the step seed at its first step)
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)  # LOZO-M: N (m×r) or the 1-D momentum


class LOZO(ZOMethod):
    """LOZO (ICLR 2025): MeZO with rank-r perturbations UVᵀ, V lazily redrawn; ``momentum`` > 0 gives LOZO-M.

    Example — a 10-D quadratic as a 2×5 matrix:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("lozo", shape=(2, 5), lr=0.05, eps=1e-3, rank=1, step_interval=5, seed=0) < 1.0
    True
    """

    name = "lozo"
    paper = "Chen et al., LOZO, ICLR 2025, arXiv:2410.07698"
    Config = LOZOConfig
    State = LOZOState

    # -- the factors ------------------------------------------------------------------
    def u_factor(self, block, seed: int) -> torch.Tensor:
        """U_b (m×r) of the step with seed ``seed``."""
        m, _ = matrix_shape(block)
        return gaussian((m, self.config.rank), seed, block, _U_STREAM)

    def v_factor(self, block, v_seed: int) -> torch.Tensor:
        """V_b (n×r) of the window whose first step had seed ``v_seed``."""
        _, n = matrix_shape(block)
        return gaussian((n, self.config.rank), v_seed, block, _V_STREAM)

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        redraw = state.t % c.step_interval == 0
        v_seed = seed if redraw else state.v_seed
        mats = [matrix_shape(b) is not None for b in blocks]
        U = {b.name: self.u_factor(b, seed) for b, is_m in zip(blocks, mats) if is_m}
        V = {b.name: self.v_factor(b, v_seed) for b, is_m in zip(blocks, mats) if is_m}

        def laws():
            return [FactoredLaw(U[b.name], V[b.name].T, b) if is_m else self.law for b, is_m in zip(blocks, mats)]

        # 1. L± at W ± εUVᵀ (1-D blocks: ± εz); θ is left at θ − εu
        lp, lm = self.two_point(blocks, seed, closure, law=laws(), first_law=laws())
        g = (lp - lm) / (2.0 * c.eps)
        k = 1.0 / c.rank if c.scale_by_rank else 1.0
        record = StepRecord(seed, (lp, lm), lr, (g,), {"resampled_V": int(redraw)})
        new = state.replace(t=state.t + 1, v_seed=v_seed)
        if c.momentum == 0.0:
            # 2. LOZO: restore + decay + step along the same UVᵀ, one pass
            self.restore_update(blocks, seed, lr, steps=[lr * g * (k if is_m else 1.0) for is_m in mats], law=laws())
            return new, record
        # 2'. LOZO-M: the momentum, then restore + decay + step along N Vᵀ in one pass per block
        beta = c.momentum
        mom = {}
        for b, is_m in zip(blocks, mats):
            if not is_m:
                continue
            old = state.momentum.get(b.name)
            if old is None:  # first step: N = cU
                mom[b.name] = U[b.name] * g
            elif redraw:  # re-project N V_oldᵀ onto the new V (VᵀV ≈ nI)
                v_old = self.v_factor(b, state.v_seed)
                proj = (v_old.T @ V[b.name]) / v_old.shape[0]
                mom[b.name] = (old @ proj).mul_(beta).add_(U[b.name], alpha=(1.0 - beta) * g)
            else:
                mom[b.name] = (old * beta).add_(U[b.name], alpha=(1.0 - beta) * g)
        betas = [1.0 - lr * c.weight_decay if b.decay else 1.0 for b in blocks]

        def one(i):
            b = blocks[i]
            if mats[i]:  # θ ← β(θ' + εUVᵀ) − ηk N Vᵀ = βθ' + (βεU − ηkN) Vᵀ
                left = U[b.name] * (betas[i] * c.eps) - mom[b.name] * (lr * k)
                axpy_([b], seed, FactoredLaw(left, V[b.name].T, b), self.scratch, 1.0, beta=betas[i])
                return
            old = state.momentum.get(b.name)
            with torch.inference_mode(False):
                buf = torch.zeros(b.param.shape, dtype=torch.float32, device=b.param.device) if old is None \
                    else old.clone()
            flat = buf.view(-1)

            def transform(start, theta, z):  # m ← βm + (1 − β)cz (first step: cz); d = βεz − ηm
                mc = flat[start:start + z.numel()]
                if old is None:
                    mc.add_(z, alpha=g)
                else:
                    mc.mul_(beta).add_(z, alpha=(1.0 - beta) * g)
                return torch.mul(z, betas[i] * c.eps).sub_(mc, alpha=lr)

            axpy_([b], seed, self.law, self.scratch, 1.0, beta=betas[i], transform=transform)
            mom[b.name] = buf

        for_blocks(blocks, one)
        return new.replace(momentum=mom), record
