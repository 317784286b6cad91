"""ZO-Muon: zeroth-order estimate in a random subspace, orthogonalised as Muon does.

Lang et al., ZO-Muon (zeroth-order subspace gradient orthogonalisation),
arXiv:2602.17155 (Feb 2026); code ``OPTML-Group/ZO-Muon``
(``llm/LowDimTrainer.py``, ``vit/zo_optimizer.py``).  Spec: ``docs/algorithms.md`` §11.

Update rule (per matrix block W ∈ R^{m×n}; q queries on one batch; 1-D blocks: plain ZO-SGD)::

    P ∈ R^{m×r}, PᵀP = I (Haar: QR of N(0,1), signs of diag R), redrawn when t mod ν = 0
    u_i ∈ R^{r×n} ~ N(0, 1);   L0 = L(W);   g_i = (L(W + εP u_i) − L0) / ε,   i = 1..q
    Ĝ = (1/q) Σ_i g_i u_i                          # the gradient estimate in the subspace, r×n
    W ← (1 − ηλ) W − η P msign(Ĝ)                  # msign: 5 Newton–Schulz steps (or the SVD's U Vᵀ)
    b ← (1 − ηλ) b − η₁ (1/q) Σ_i g_i z_i,  η₁ = vector_lr_scale·η   (1-D blocks)

Provenance and departures
-------------------------
* [code] Haar P per matrix, lazily redrawn; one-sided queries with the centre
  L0 (1 + q forwards, the multi-query mode); NS5 coefficients (3.4445, −4.7750,
  2.0315) on Ĝ/(‖Ĝ‖_F + 1e-7), transposed when r > n; ``muon_svd``; ``none``
  is the code's Subspace-MeZO (W ← W − ηPĜ); no momentum, no shape scale;
  r clamped to m (ViT code); defaults: the LLM README (lr 1e-2, ε 1e-3, r 64,
  ν 100, q 4, NS5).
* [recon] one P per window for every query, drawn from the seed of the window's
  first step (the code draws a different P per query at redraw steps, §11.6-1).
* [recon] NS5 and the SVD run in fp32 whatever the weights' dtype (§11.6-3).
* [code] 1-D blocks step with the main lr (the ViT code); the LLM code's
  fixed 1e-7 is ``vector_lr_scale=1e-5`` at its lr 1e-2 [recon: a ratio, so
  the lr schedule scales it too].
* [recon] ``estimator="central"``: the code's single-query central difference,
  generalised to q queries (2q forwards).
* [recon] u_i and the 1-D z_i are regenerated from (step seed, query, block),
  not stored; weight decay only on decayed blocks; P is kept in the state.

Passes, memory: ``docs/method-notes.md``, ZO-Muon.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from ..params import axpy_
from ..types import StepRecord
from .base import ZOConfig, ZOMethod, as_float
from .lowrank import FactoredLaw, gaussian, matrix_shape
from .state import State

_P_STREAM = 0x2A0B  # stream of P's Gaussian draw per block and window
_U_STREAM = 0x2A10  # u_i of query i: stream _U_STREAM + i (1-D z_i: stream i)
NS_COEFFS = (3.4445, -4.7750, 2.0315)


class ZOMuonConfig(ZOConfig):
    """ZO-Muon hyperparameters (defaults: the authors' LLM README, OPT-13B RTE, §11.4)."""

    lr: float = Field(1e-2, gt=0, description="learning rate η of the orthogonalised step (README 1e-2)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε (README 1e-3)")
    rank: int = Field(64, ge=1, description="r, the subspace dimension per matrix, clamped to m (README 64)")
    step_interval: int = Field(100, ge=1, description="ν: P is redrawn every ν steps (README 100)")
    num_queries: int = Field(4, ge=1, description="q queries per step: 1 + q forwards (forward) or 2q (central) "
                                                  "(README 4)")
    estimator: Literal["forward", "central"] = Field(
        "forward", description="forward: one-sided differences against L0 (the code's multi-query mode); "
                               "central: (L+ − L−)/(2ε) per query (its single-query mode)")
    ortho: Literal["muon", "muon_svd", "none"] = Field(
        "muon", description="msign of the estimate: 5 Newton–Schulz steps (muon), the SVD's U Vᵀ (muon_svd), "
                            "or none (Subspace-MeZO)")
    vector_lr_scale: float = Field(1.0, ge=0, description="η₁/η, the 1-D blocks' lr relative to the main lr (ViT "
                                                         "code 1; the LLM code fixes η₁ = 1e-7, i.e. 1e-5 at its "
                                                         "lr 1e-2; 0 freezes them)")


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """msign(G) ≈ U Vᵀ by the quintic Newton–Schulz iteration in fp32 (Muon's coefficients)."""
    a, b, c = NS_COEFFS
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


def svd_sign(G: torch.Tensor) -> torch.Tensor:
    """msign(G) = U Vᵀ of the thin SVD, in fp32."""
    U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    return U @ Vh


@dataclass(frozen=True, eq=False)
class ZOMuonState(State):
    """ZO-Muon's state: the step count, the seed of the current window and P per matrix (m×r fp32: r/n of the
    matrix, e.g. ≈ 1% of OPT-13B at r = 64).  No optimizer moments."""

    t: int = 0  # steps taken
    p_seed: int | None = None  # the step seed P was drawn from (the window's first step)
    basis: dict[str, torch.Tensor] = field(default_factory=dict)  # P per matrix block (fp32)


class ZOMuon(ZOMethod):
    """ZO-Muon (arXiv 2026): ZO estimate in a lazily redrawn r-dimensional subspace, orthogonalised (NS5).

    Example — a 10-D quadratic as a 2×5 matrix:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("zo-muon", shape=(2, 5), lr=0.05, eps=1e-3, rank=2, seed=0) < 1.0
    True
    """

    name = "zo-muon"
    paper = "Lang et al., ZO-Muon, arXiv:2602.17155"
    Config = ZOMuonConfig
    State = ZOMuonState

    @property
    def forwards_per_step(self) -> int:
        q = self.config.num_queries
        return 2 * q if self.config.estimator == "central" else 1 + q

    # -- the subspace and the queries' factors --------------------------------------------
    def haar_basis(self, block, seed: int) -> torch.Tensor:
        """P (m × min(r, m)), column-orthonormal: QR of an N(0, 1) draw with the signs of diag R folded in."""
        m, _ = matrix_shape(block)
        A = gaussian((m, min(self.config.rank, m)), seed, block, _P_STREAM)
        with torch.inference_mode(False):
            Q, R = torch.linalg.qr(A)
            s = torch.sign(torch.diagonal(R))
            return Q * torch.where(s == 0, torch.ones_like(s), s)

    def u_factor(self, block, seed: int, i: int, r: int) -> torch.Tensor:
        """u_i (r × n) of query i at step seed ``seed``."""
        _, n = matrix_shape(block)
        return gaussian((r, n), seed, block, _U_STREAM + i)

    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        q = c.num_queries
        redraw = state.t % c.step_interval == 0
        mats = [matrix_shape(b) is not None for b in blocks]
        basis = {b.name: self.haar_basis(b, seed) for b, is_m in zip(blocks, mats) if is_m} if redraw \
            else state.basis
        p_seed = seed if redraw else state.p_seed

        def laws(i):  # query i: P u_i on matrices, z_i (stream i) on vectors
            return [FactoredLaw(basis[b.name], self.u_factor(b, seed, i, basis[b.name].shape[1]), b) if is_m
                    else self.law for b, is_m in zip(blocks, mats)]

        # 1. the queries (θ restored after each)
        losses, gs = [], []
        if c.estimator == "forward":
            l0 = as_float(closure())
            losses.append(l0)
            for i in range(q):
                li, _ = self.one_sided(blocks, seed, closure, stream=i, law=laws(i))
                losses.append(li)
                gs.append((li - l0) / c.eps)
        else:
            for i in range(q):
                lp, lm = self.two_point(blocks, seed, closure, law=laws(i), first_law=laws(i), stream=i)
                self.perturb(blocks, seed, c.eps, law=laws(i), stream=i)
                losses += [lp, lm]
                gs.append((lp - lm) / (2.0 * c.eps))
        # 2. matrices: Ĝ = (1/q) Σ g_i u_i in the subspace, msign, one pass W ← βW − η P O
        betas = [1.0 - lr * c.weight_decay if b.decay else 1.0 for b in blocks]
        for i, b in enumerate(blocks):
            if not mats[i]:
                continue
            P = basis[b.name]
            G = sum(self.u_factor(b, seed, k, P.shape[1]) * (gs[k] / q) for k in range(q))
            O = newton_schulz(G) if c.ortho == "muon" else svd_sign(G) if c.ortho == "muon_svd" else G
            axpy_([b], seed, FactoredLaw(P, O, b), self.scratch, -lr, beta=betas[i])
        # 3. vectors: b ← βb − η₁ (1/q) Σ g_i z_i, one pass per query
        vecs = [i for i, is_m in enumerate(mats) if not is_m]
        if vecs:
            lr1 = lr * c.vector_lr_scale
            sub = [blocks[i] for i in vecs]
            for k in range(q):
                self.perturb(sub, seed, -lr1 * gs[k] / q, beta=[betas[i] for i in vecs] if k == 0 else 1.0,
                             stream=k)
        new = state.replace(t=state.t + 1, p_seed=p_seed, basis=basis)
        return new, StepRecord(seed, tuple(losses), lr, tuple(gs), {"resampled_P": int(redraw)})
