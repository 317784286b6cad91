"""FZOO: N one-sided Rademacher queries per step, normalised by the loss std.

Dang, Guo, Zhao, Ye, Zheng, Dai, Tsang. *FZOO: Fast Zeroth-Order Optimizer for
Fine-Tuning Large Language Models towards Adam-Scale Speed.* ICLR 2026,
arXiv:2506.09034; code ``DKmiyan/FZOO`` (``trainer.py``).  Spec:
``docs/algorithms.md`` §8.

Update rule (one batch B, N directions regenerated from the step seed s, never
stored; N + 1 forward passes)::

    u_i ∈ {±1}^d  (Rademacher, stream i of s),   i = 1..N
    l_0 = L(θ; B),   l_i = L(θ + ε u_i; B)
    σ   = std(l_1, …, l_N)                      # population std (= std of l_i − l_0)
    θ  ← (1 − ηλ) θ − η/(N σ) · Σ_i (l_i − l_0) u_i     (λ = 0 on no-decay blocks)

There is no 1/ε: σ ≈ ε‖∇L‖ carries it, so E[Δθ] ≈ −η ∇L/‖∇L‖ (a zeroth-order
normalised SGD), invariant to L → aL + b for a > 0.

Provenance and departures
-------------------------
* [code] Rademacher directions, population std, no 1/ε, N + 1 forwards; the
  defaults of ``fzoo.sh`` (N 8, lr 1e-5, ε 1e-3, no weight decay).
* [recon] **σ = 0 rule**: when the N perturbed losses are all equal (the code
  divides by zero and writes NaN into θ) or a loss is not finite, the step is
  skipped — θ only restored, no update, no decay — and counted
  (``state.skipped``, ``extra["skipped"]``).  σ is exactly 0 when max = min; a
  tiny positive σ is not special-cased (normalisation is the method).
* [recon] l_0 is evaluated first; ``StepRecord.losses`` = (l_0, l_1, …, l_N),
  ``grad`` the N coefficients (l_i − l_0)/(Nσ), ``extra`` σ.
* [recon] losses are taken as fp32 values, σ and the coefficients in fp64.
* [recon] ``direction`` may be ``gaussian`` or ``pool`` (an ablation).
* N ≥ 2 is enforced (σ of one loss is 0); the paper uses 8.

Passes, rounding, and why batched evaluation was not kept (measured 2.0×
slower on CPU): ``docs/method-notes.md``, FZOO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from ..types import StepRecord
from .base import SPSAConfig, ZOMethod, as_float
from .state import State


class FZOOConfig(SPSAConfig):
    """FZOO hyperparameters (defaults: the authors' ``fzoo.sh``, docs/algorithms.md §8)."""

    lr: float = Field(1e-5, gt=0, description="learning rate η (code 1e-5; the loop's schedule scales it)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε (code 1e-3)")
    num_directions: int = Field(8, ge=2, description="N one-sided Rademacher queries per step; forward passes "
                                                     "per step = N + 1 (code 8; σ needs N ≥ 2)")
    weight_decay: float = Field(0.0, ge=0, description="λ, applied to decayed blocks only (code: none)")
    direction: Literal["rademacher", "gaussian", "pool"] = Field(
        "rademacher", description="law of u: the paper's Rademacher, or an ablation")


def population_std(values: list[float]) -> float:
    """Population standard deviation in fp64; exactly 0.0 when all values are equal."""
    if max(values) == min(values):
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


@dataclass(frozen=True, eq=False)
class FZOOState(State):
    t: int = 0  # steps taken
    skipped: int = 0  # steps whose σ was 0 or not finite (no update)


class FZOO(ZOMethod):
    """FZOO (ICLR 2026): loss-std-normalised one-sided Rademacher estimate, N + 1 forwards per step.

    Example — a 10-D quadratic:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("fzoo", lr=0.02, eps=1e-3, seed=0) < 0.1
    True
    """

    name = "fzoo"
    paper = "Dang et al., FZOO, ICLR 2026, arXiv:2506.09034"
    Config = FZOOConfig

    @property
    def forwards_per_step(self) -> int:
        return self.config.num_directions + 1

    State = FZOOState

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        n = c.num_directions
        # 1. l_0 at θ, then l_i at θ + εu_i (restored after each but the last)
        losses, pending = [as_float(closure())], []
        for i in range(n):  # the last query's restore is fused with the update below
            loss, pending = self.one_sided(blocks, seed, closure, stream=i, restore=i < n - 1)
            losses.append(loss)
        l0, perturbed = losses[0], losses[1:]
        new = state.replace(t=state.t + 1)
        # 2. σ and the σ = 0 / non-finite rule
        sigma = population_std(perturbed) if all(map(math.isfinite, losses)) else math.nan
        if not (sigma > 0.0 and math.isfinite(sigma)):
            self.perturb(blocks, seed, [-p for p in pending], stream=n - 1)  # restore only
            new = new.replace(skipped=state.skipped + 1)
            return new, StepRecord(seed, tuple(losses), lr, (0.0,) * n, {"sigma": sigma, "skipped": 1})
        coefs = [(li - l0) / (n * sigma) for li in perturbed]
        # 3. last direction: restore + decay + its update term in one pass; then the others
        betas = [1.0 - lr * c.weight_decay if b.decay else 1.0 for b in blocks]
        self.perturb(blocks, seed, [-p * beta - lr * coefs[-1] for p, beta in zip(pending, betas)], beta=betas,
                     stream=n - 1)
        for i in range(n - 1):
            self.perturb(blocks, seed, -lr * coefs[i], stream=i)
        return new, StepRecord(seed, tuple(losses), lr, tuple(coefs), {"sigma": sigma, "skipped": 0})
