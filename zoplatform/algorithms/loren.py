"""LOREN: low-rank curvature-aware ZO with an RLOO multi-query estimator.

Seung, Lee, Ko. *LOREN: Low Rank-Based Curvature-Aware Zeroth-Order
Optimization for LLM Fine-Tuning.* AAAI 2026, arXiv:2511.07971; code
``hseung88/loren`` (``model/glue_transformer_loren.py``).  Spec:
``docs/algorithms.md`` §3.

Update rule (per tensor W ∈ R^{m×n}, 1-D tensors m = 1; K one-sided queries on one batch)::

    â = tile(a, m rows),  s = ‖â‖² = m‖a‖²,  γ = 1 + √(λ/(λ+s))
    v_k = u_k − γ (â·u_k)/s · â,  u_k ~ N(0, I)        # Cov(v) = λ(λI + ââᵀ)⁻¹
    f_k = L(θ + ε v_k; B);  w_k = f_k − mean(f);  g_k = w_k v_k / (ε (K−1))
    M ← β₁ M + g_k;  θ ← θ (1 − η·wd) − η · M          (1-D tensors: g_k for M)
    ∇_a = (w_k ε² / (√(λ+s) (K−1))) · Σ_rows [ (â·u)u − â − γ((â·u)² − s)/s · â ]
    a ← a (1 − η_cov·wd) − η_cov ∇_a

``update="per_query"`` (default, the authors' code) applies g_k, the decay and
the a-update once per query, with v_k and ∇_a rebuilt at the current a;
``update="per_step"`` (the paper) applies Σ_k g_k once, at the step's a.

Provenance and departures
-------------------------
* [code] one global rank-1 term per tensor (one â·u over the whole matrix).
  **Departure from the paper's text**, whose H̃ = I_m ⊗ (ρI + aaᵀ) is
  row-wise; the row-wise reading is not implemented.
* [code] randn init of a, λ = 0.1, ε = 1e-3, lr_cov 1e-3, β₁ 0.9, momentum
  only on ≥2-D tensors, weight decay also on a, ∇_a's ε² scale.
* [paper] K = 6 (the code's CLI default is 10) and the ``per_step`` mode;
  lr 1e-6 like the other methods (the paper's grid is not recoverable).
* [recon] ≥3-D tensors use n = last dim (the code's ``size(1)`` breaks its
  row sum there); a is fp32 whatever the weights' dtype; a is drawn at the
  first step from that step's seed (stream ``_A_STREAM``), so it replays.
* ``a_init = 0`` freezes a at 0 (s = 0 ⇒ v = u): isotropic RLOO, an ablation.

Implementation (passes, memory, restore, small tensors): ``docs/method-notes.md``, LOREN.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field

from ..params import Block, add_tensor_, axpy_, direction_chunks, for_blocks, sync_, value
from ..rng import block_seed, generator
from ..types import StepRecord
from .base import ZOConfig, ZOMethod, as_float
from .state import State

_A_STREAM = 0xA11CE  # stream of a's initial draw (queries use streams 0..K−1)


class LORENConfig(ZOConfig):
    """LOREN hyperparameters (defaults: the authors' README/code, K from the paper)."""

    lr: float = Field(1e-6, gt=0, description="learning rate η (the paper's grid is not recoverable; "
                                               "1e-6 like the other methods)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε (code README 1e-3)")
    weight_decay: float = Field(0.0, ge=0, description="wd on θ (decayed blocks only) and on a (code: 0.0)")
    num_queries: int = Field(6, ge=2, description="K one-sided queries = forward passes per step; RLOO needs "
                                                  "K ≥ 2 (paper K = 6 [note]; code CLI default 10)")
    lr_cov: float = Field(1e-3, ge=0, description="η_cov, learning rate of the curvature vectors a "
                                                  "(code README 1e-3; 0 freezes a)")
    damping: float = Field(0.1, gt=0, description="λ: Cov(v) = λ(λI + ââᵀ)⁻¹ (code 0.1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="β₁ of the heavy-ball buffer on ≥2-D tensors "
                                                         "(M ← β₁M + g, no (1 − β₁); code 0.9)")
    update: Literal["per_query", "per_step"] = Field(
        "per_query", description="per_query: θ, M, a updated once per query (authors' code); "
                                 "per_step: once per step with the averaged estimate (paper)")
    a_init: float = Field(1.0, ge=0, description="scale of a's randn init (code: 1; 0: isotropic RLOO, a frozen)")


# -- tiling helpers: a flat chunk [start, start+L) of an (m, n) tensor --------------------------------
def _pieces(start: int, length: int, n: int) -> list[tuple[int, int, int]]:
    """Split a flat range into (lo, hi, col) pieces relative to the chunk: a
    partial head row (col = its first column), whole rows (col = −1), a
    partial tail row (col = 0)."""
    out, pos, col = [], 0, start % n
    if col:
        pos = min(length, n - col)
        out.append((0, pos, col))
    rows = (length - pos) // n
    if rows:
        out.append((pos, pos + rows * n, -1))
        pos += rows * n
    if pos < length:
        out.append((pos, length, 0))
    return out


def _row_sum_(c: torch.Tensor, z: torch.Tensor, start: int) -> None:
    """c += the chunk's contribution to Σ_rows u (c has n entries)."""
    n = c.numel()
    for lo, hi, col in _pieces(start, z.numel(), n):
        if col < 0:
            c.add_(z[lo:hi].view(-1, n).sum(0))
        else:
            c[col:col + hi - lo].add_(z[lo:hi])


def _add_tiled_(z: torch.Tensor, start: int, a: torch.Tensor, alpha: float) -> None:
    """z += alpha · tile(a)[start : start + len(z)]."""
    n = a.numel()
    for lo, hi, col in _pieces(start, z.numel(), n):
        if col < 0:
            z[lo:hi].view(-1, n).add_(a, alpha=alpha)
        else:
            z[lo:hi].add_(a[col:col + hi - lo], alpha=alpha)


def _add_(dst: torch.Tensor, src: torch.Tensor, alpha: float) -> None:
    """dst += alpha · src, casting src to dst's dtype when they differ (LOREN's own buffers: the
    row sums and the momentum; θ changes only through :mod:`zoplatform.params`)."""
    dst.add_(src if src.dtype == dst.dtype else src.to(dst.dtype), alpha=alpha)


def _shape(block: Block) -> tuple[int, int]:
    """(m, n): rows and row length of a block's tiling (1-D: m = 1, n = numel)."""
    p = block.param
    n = p.shape[-1] if p.dim() >= 2 else p.numel()
    return p.numel() // max(n, 1), n


@dataclass(frozen=True, eq=False)
class LORENState(State):
    """LOREN's state.  ``momentum`` is donated (:mod:`~zoplatform.algorithms.state`): a step updates the
    buffers in place and hands them to the state it returns — a copy would cost one pass over every
    matrix's size per step — so the state a step was given must not be stepped again."""

    donated = ("momentum",)
    t: int = 0  # steps taken
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)  # M per ≥2-D block (weights' dtype)
    a: dict[str, torch.Tensor] = field(default_factory=dict)  # the curvature vector a_b per block (fp32)


class LOREN(ZOMethod):
    """LOREN (AAAI 2026) with the authors' per-query update or the paper's per-step update.

    Example — a 10-D quadratic:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("loren", lr=0.05, eps=1e-3, seed=0) < 1.0
    True
    """

    name = "loren"
    paper = "Seung, Lee, Ko, LOREN, AAAI 2026, arXiv:2511.07971"
    Config = LORENConfig

    @property
    def forwards_per_step(self) -> int:
        return self.config.num_queries

    # -- state ------------------------------------------------------------------
    State = LORENState

    def init(self, blocks):
        """Momentum buffers (weights' dtype) for every ≥2-D block; a is drawn at the first step."""
        with torch.inference_mode(False):  # the dtype θ's arithmetic runs in (the fp32 master in a mixed mode)
            momentum = {b.name: torch.zeros_like(value(b), memory_format=torch.contiguous_format)
                        for b in blocks if b.param.dim() >= 2}
        return LORENState(t=0, momentum=momentum, a={})

    def _init_a(self, state: LORENState, blocks, seed: int) -> dict[str, torch.Tensor]:
        """``state.a`` with the missing a_b = a_init · randn(n_b) drawn from (first step seed, block key) —
        never the global RNG (a new dict; the state's is not changed)."""
        a = dict(state.a)
        for b in blocks:
            if b.name not in a:
                _, n = _shape(b)
                g = generator(block_seed(seed, b.key, _A_STREAM))
                with torch.inference_mode(False):
                    a[b.name] = torch.randn(n, generator=g, dtype=torch.float32).mul_(self.config.a_init) \
                        .to(b.param.device)
        return a

    # -- the sampler's scalars ----------------------------------------------------
    def _coefs(self, a: torch.Tensor, c: torch.Tensor, m: int) -> tuple[float, float, float]:
        """(d = â·u, s = ‖â‖², γ/s) for one block and query; s = 0 (a = 0) gives v = u."""
        a64 = a.double()
        d = float(a64 @ c.double())
        s = m * float(a64 @ a64)
        if s <= 0.0:
            return d, 0.0, 0.0
        gamma = 1.0 + math.sqrt(self.config.damping / (self.config.damping + s))
        return d, s, gamma / s

    def _grad_a(self, a: torch.Tensor, c: torch.Tensor, m: int, w: float) -> torch.Tensor:
        """Row-summed score-function gradient ∇_a for one query (fp64), before the 1/(K−1)."""
        c_ = self.config
        d, s, gs = self._coefs(a, c, m)
        if s <= 0.0:
            return torch.zeros_like(c, dtype=torch.float64)
        a64 = a.double()
        bracket = d * c.double() - m * a64 - (gs * (d * d - s) * m) * a64
        return bracket * (w * c_.eps ** 2 / math.sqrt(c_.damping + s))

    # -- passes over one block (θ written by params.axpy_ / add_tensor_; the working copy by sync_) --
    def _perturb(self, b: Block, a: torch.Tensor, seed: int, k: int, alpha: float,
                 c: torch.Tensor | None = None, coef: float | None = None) -> float:
        """θ += alpha·v_k.  Pass 1 adds alpha·u_k (and fills c = Σ_rows u_k when
        given); then the â part, −alpha·γ(â·u)/s·â, is one broadcast over rows.
        Restore (``coef`` given, alpha < 0) applies the two parts in reverse order.
        Returns γ(â·u)/s (the coefficient of â in v_k)."""
        m, _ = _shape(b)
        if coef is not None and coef != 0.0:  # restore: â part first (reverse order)
            add_tensor_([b], [a], -alpha * coef, sync=False)

        def row_sum(start, theta, z):
            _row_sum_(c, z, start)
            return z

        axpy_([b], seed, self.law, self.scratch, alpha, transform=None if c is None else row_sum, stream=k,
              work_alpha=None)
        if coef is None:
            d, _, gs = self._coefs(a, c, m)
            coef = gs * d
            if coef != 0.0:
                add_tensor_([b], [a], -alpha * coef, sync=False)
        return coef

    def _v(self, a: torch.Tensor, coef: float):
        """The chunk transform u_k → v_k = u_k − γ(â·u)/s·â (in the scratch chunk)."""
        def v(start, theta, z):
            if coef != 0.0:
                _add_tiled_(z, start, a, -coef)
            return z
        return v

    def _apply(self, b: Block, a: torch.Tensor, seed: int, k: int, coef: float, cg: float,
               mom: torch.Tensor | None, lr: float, beta: float) -> None:
        """Per-query update of one block: v_k formed in the scratch chunk, then
        M ← β₁M + cg·v_k, θ ← β·θ − η·M  (1-D: θ ← β·θ − η·cg·v_k)."""
        b1 = self.config.momentum
        v = self._v(a, coef)
        if mom is None:
            axpy_([b], seed, self.law, self.scratch, -lr * cg, beta=beta, transform=v, stream=k, work_alpha=None)
            return
        mflat = mom.view(-1)

        def momentum(start, theta, z):  # M chunk ← β₁M + cg·v_k: what θ's chunk then moves by (× −η)
            mc = mflat[start:start + z.numel()]
            mc.mul_(b1)
            _add_(mc, v(start, theta, z), cg)
            return mc

        axpy_([b], seed, self.law, self.scratch, -lr, beta=beta, transform=momentum, stream=k, work_alpha=None)

    def _accumulate(self, b: Block, a: torch.Tensor, seed: int, k: int, coef: float, alpha: float,
                    target: torch.Tensor) -> None:
        """target += alpha·v_k (per-step mode; target: the momentum buffer)."""
        tflat = target.view(-1)
        v = self._v(a, coef)
        for start, theta, z in direction_chunks(b, seed, self.law, self.scratch, stream=k):
            _add_(tflat[start:start + z.numel()], v(start, theta, z), alpha)

    # -- the step ---------------------------------------------------------------------
    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        K = c.num_queries
        a0 = self._init_a(state, blocks, seed)
        momentum = state.momentum  # donated: updated in place (LORENState)
        # 1. K one-sided queries at θ + εv_k (a fixed at the step's value); keep Σ_rows u_k per block
        rowsums: list[list[torch.Tensor]] = []
        losses = []
        n_blocks = len(blocks)
        for k in range(K):
            cs = [torch.zeros(_shape(b)[1], dtype=torch.float32, device=b.param.device) for b in blocks]
            coefs = [0.0] * n_blocks

            def perturb(i, k=k, cs=cs, coefs=coefs):
                coefs[i] = self._perturb(blocks[i], a0[blocks[i].name], seed, k, c.eps, c=cs[i])

            def restore(i, k=k, coefs=coefs):
                self._perturb(blocks[i], a0[blocks[i].name], seed, k, -c.eps, coef=coefs[i])

            for_blocks(blocks, perturb)
            sync_(blocks)  # mixed precision: the working copies see θ + εv_k
            losses.append(as_float(closure()))
            for_blocks(blocks, restore)
            rowsums.append(cs)
        # 2. RLOO weights: w_k = f_k − mean(f);  g_k = w_k v_k / (ε(K−1))
        fmean = sum(losses) / K
        w = [f - fmean for f in losses]
        cg = [wk / (c.eps * (K - 1)) for wk in w]
        betas = [1.0 - lr * c.weight_decay if b.decay else 1.0 for b in blocks]
        a_decay = 1.0 - c.lr_cov * c.weight_decay
        # 3. updates of θ, M and a
        if c.update == "per_query":
            a = dict(a0)

            def query_update(i, k):
                b = blocks[i]
                m, _ = _shape(b)
                ak, ck = a[b.name], rowsums[k][i]
                d, _, gs = self._coefs(ak, ck, m)  # with the current a, as the code does
                self._apply(b, ak, seed, k, gs * d, cg[k], momentum.get(b.name), lr, betas[i])
                if c.lr_cov != 0.0 or a_decay != 1.0:
                    grad = self._grad_a(ak, ck, m, w[k]) / (K - 1)
                    a[b.name] = (ak.double() * a_decay - c.lr_cov * grad).float()

            for k in range(K):
                for_blocks(blocks, lambda i, k=k: query_update(i, k))
        else:
            a = {}

            def step_update(i):
                b = blocks[i]
                m, _ = _shape(b)
                ab, mom = a0[b.name], momentum.get(b.name)
                coefs = []
                for k in range(K):
                    d, _, gs = self._coefs(ab, rowsums[k][i], m)
                    coefs.append(gs * d)
                if mom is not None:  # M ← β₁M + Σ_k g_k ; θ ← βθ − ηM
                    mom.mul_(c.momentum)
                    for k in range(K):
                        self._accumulate(b, ab, seed, k, coefs[k], cg[k], mom)
                    add_tensor_([b], [mom], -lr, beta=betas[i], sync=False)
                else:  # θ ← βθ − η Σ_k g_k
                    add_tensor_([b], [None], 0.0, beta=betas[i], sync=False)
                    if lr != 0.0:
                        for k in range(K):
                            if cg[k] != 0.0:
                                axpy_([b], seed, self.law, self.scratch, -lr * cg[k], transform=self._v(ab, coefs[k]),
                                      stream=k, work_alpha=None)
                if c.lr_cov != 0.0 or a_decay != 1.0:
                    grad = sum(self._grad_a(ab, rowsums[k][i], m, w[k]) for k in range(K)) / (K - 1)
                    a[b.name] = (ab.double() * a_decay - c.lr_cov * grad).float()
                else:
                    a[b.name] = ab

            for_blocks(blocks, step_update)
        sync_(blocks)  # mixed precision: the working copies get the updated θ
        new = state.replace(t=state.t + 1, a={**a0, **a})
        return new, StepRecord(seed, tuple(losses), lr, tuple(cg), {"loss_mean": fmean})

    # -- end-of-run numbers (written and drawn by pipelines/finetune/method_reports.py) ------------
    def block_table(self, state, blocks: Sequence[Block]) -> list[dict]:
        """Per matrix block with a curvature vector a: its shape, ‖a‖/√n and s = m‖a‖²."""
        rows = []
        for b in blocks:
            a = state.a.get(b.name)
            if a is None:
                continue
            m, n = _shape(b)
            sq = float(a.double() @ a.double())
            rows.append({"block": b.name, "m": m, "n": n, "rms_a": math.sqrt(sq / n), "s": m * sq})
        return rows
