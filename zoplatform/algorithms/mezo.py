"""MeZO: memory-efficient zeroth-order SGD (SPSA with seed-replayed directions).

Malladi, Gao, Nichani, Damian, Lee, Chen, Arora. *Fine-Tuning Language Models
with Just Forward Passes.* NeurIPS 2023, arXiv:2305.17333; code
``princeton-nlp/MeZO``.  Spec: ``docs/algorithms.md`` §1.

Update rule (one SPSA sample per step, directions regenerated from the step
seed s, never stored)::

    z ~ N(0, I)   (regenerated from s)
    g  = (L(θ + εz; B) − L(θ − εz; B)) / (2ε)          # projected gradient
    θ ← θ − η · (g·z + λ·θ)    (λ = 0 for biases and normalisation weights)

Provenance and departures
-------------------------
* [code] the rule, the defaults (lr 1e-6, ε 1e-3, no weight decay) and the
  seed trick (z regenerated, never stored).
* [recon] restore and update fused into one pass (three passes over z per
  step instead of the code's four): the same rule, up to fp rounding.
* [recon] the no-decay set is found by module type (normalisation modules),
  not by the code's parameter-name substring.

Notes: ``docs/method-notes.md``, MeZO.
"""
from __future__ import annotations

from ..types import StepRecord
from .base import SPSAConfig, ZOMethod


class MeZOConfig(SPSAConfig):
    """MeZO hyperparameters (defaults: the paper's OPT setting, §1.2: lr 1e-6, ε 1e-3, no weight decay)."""


class MeZO(ZOMethod):
    """MeZO (NeurIPS 2023): two-point SPSA, restore and update fused.

    Example — a 10-D quadratic:

    >>> import torch, zoplatform
    >>> x = torch.nn.Parameter(torch.ones(10))
    >>> opt = zoplatform.optimizer("mezo", [x], lr=0.05, eps=1e-3, seed=0)
    >>> for _ in range(200):
    ...     _ = opt.step(lambda: (x ** 2).sum())
    >>> bool((x ** 2).sum() < 1.0)
    True
    """

    name = "mezo"
    paper = "Malladi et al., NeurIPS 2023, arXiv:2305.17333"
    Config = MeZOConfig

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        # 1. two evaluations on the same batch at θ ± εz
        loss_plus, loss_minus = self.two_point(blocks, seed, closure)
        # 2. projected gradient (a scalar)
        g = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 3. restore + decay + SGD step, fused into one pass over z
        self.restore_update(blocks, seed, lr, g)
        return state, StepRecord(seed, (loss_plus, loss_minus), lr, (g,))
