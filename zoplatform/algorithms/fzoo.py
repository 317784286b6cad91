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
normalised SGD) and the step is invariant to L → aL + b for a > 0 (and flips
sign for a < 0).  Defaults are the code's (``fzoo.sh``): N 8, lr 1e-5, ε 1e-3,
no weight decay, constant lr (the loop's schedule).

What follows the code and what is decided here
----------------------------------------------
* [code] Rademacher directions, population std, no 1/ε, N + 1 forwards.
* [recon] **σ = 0 rule**: when the N perturbed losses are all equal (σ = 0,
  the code divides by zero and writes NaN into θ) or any of the N + 1 losses
  is not finite, the step is *skipped*: θ is only restored, no update and no
  weight decay is applied.  The skip is counted in ``state.skipped`` and
  reported as ``extra["skipped"] = 1`` (0 otherwise) in the step record, which
  the loop logs as a metric.  σ is taken as exactly 0 when max = min, so
  rounding in the mean never turns equal losses into a tiny σ and a huge step.
  A σ that is positive but tiny is *not* special-cased: normalisation is the
  method (the step length stays ≈ η·√(d/N) whatever σ is).
* [recon] **order of evaluations**: l_0 first (at θ itself, before any
  perturb/restore rounding), then l_1..l_N.  ``StepRecord.losses`` holds them
  in that call order, ``(l_0, l_1, …, l_N)``, so ``losses[0]`` (what the loop
  logs as ``train_loss``) is the unperturbed loss; ``grad`` holds the N
  coefficients (l_i − l_0)/(Nσ) (zeros on a skipped step); ``extra`` holds σ.
* [recon] **fp32 losses**: every loss is taken as an fp32 value (the scorers
  compute CE in fp32; :func:`as_float` rounds to fp32); σ and the coefficients
  are computed from them in fp64.  θ is restored by −εu, as in MeZO: to
  rounding, not bit-exactly.  With fp16 weights (the code's setting) the 2N
  perturb/restore passes of a step drift θ by whole ulps; the platform's mixed
  precision modes (``precision=bf16-mixed|fp16-mixed``) apply them to an fp32
  master copy instead, so the drift is fp32's.
* [recon] ``direction`` may be ``gaussian`` or ``pool`` instead of the paper's
  ``rademacher`` (an ablation; the rule is unchanged).
* N ≥ 2 is enforced (σ of one loss is 0); N = 2 is allowed but σ is then
  |l_1 − l_2|/2, heavy-tailed — the paper uses 8.

Implementation
--------------
Every parameter change goes through :func:`~zoplatform.params.axpy_` (stream i
of the step seed for u_i).  Per direction: perturb +εu_i, evaluate, restore
−εu_i — except the last direction, whose restore is fused with its update
term and the weight decay, θ ← β(θ − εu_N) − ηc_N u_N = βθ + (−βε − ηc_N)u_N
with β = 1 − ηλ, once all losses are known; then one update pass per
remaining direction.  Random passes per step: 3N − 1.  Memory: inference +
one scratch chunk (no optimizer state).  ``replay`` re-runs the same
arithmetic with the recorded losses, so trajectories replay bit-exactly.

Batched evaluation (the paper's ``ParallelOPTForCausalLM``: the N perturbed
models stacked along the batch, y_k = x_k Wᵀ + ε x_k U_kᵀ with seeded U_k):
**not kept: measured 2.0× slower on CPU.**  It is exact only for Linear
layers (embeddings, norms and tied heads would need batched forms of their
own), doubles the Linear FLOPs, multiplies activations by N + 1 and
materialises the N U_k of a layer at once.  Measurement (one run, medians of
5 interleaved repeats, 2 CPU threads, fp32): a stack of 16 bias-free Linear
layers 576→1536→576 (SmolLM2-135M's MLP shapes, 14.2M parameters), 16 × 64
tokens, N = 8, U_k drawn from the engine's streams (outputs equal to the
sequential ones to 8e-7 against a perturbation effect of 0.07).  Sequential
N + 1 forwards with their perturb/restore passes: 8.0 s; batched, paper form:
16.2 s (2.03×); the same with the U_k drawn beforehand: 13.5 s (1.69×: the
extra matmuls alone cost more than every perturbation pass they replace);
one bmm over the N + 1 stacked weights W + εU_k (same FLOPs as sequential):
8.3 s (1.03×).  A GPU was not available to measure; a batched path would
have to win there to be worth its restrictions.

Example — a 10-D quadratic:

>>> import torch, zoplatform
>>> x = torch.nn.Parameter(torch.ones(10))
>>> opt = zoplatform.optimizer("fzoo", [("x", x)], lr=0.02, eps=1e-3, seed=0)
>>> for _ in range(200):
...     _ = opt.step(lambda: (x ** 2).sum())
>>> bool((x ** 2).sum() < 0.1)
True
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
    """FZOO (ICLR 2026): loss-std-normalised one-sided Rademacher estimate, N + 1 forwards per step."""

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
