"""ZO Fine-tuner: MeZO with a learned per-block perturbation scale.

Zhang, Li, Zhao, Sun, Zhang. *Learning a Zeroth-Order Optimizer for
Fine-Tuning LLMs* (ZO Fine-tuner).  ICML 2026, arXiv:2510.00419.  Spec:
``docs/algorithms.md`` §5 (meta-training, which needs backprop, lives in
``meta/``; this module is the deploying side: the policy, its file format and
the ZO method).  The official code was not consulted for this file.

Update rule (§5.1; one MLP per block b = one trainable tensor, n_b its numel)::

    x_b = (mean θ_b, var θ_b, L⁺_{t−1}, L⁻_{t−1}, σ_b,{t−1})          5 features
    σ_b = | w2_b · tanh(W1_b x_b + b1_b) + b2_b |                     Linear(5→64) → Tanh → Linear(64→1) → |·|
    c   = sqrt(d_eff / Σ_b n_b σ_b²),   d_eff = Σ_b n_b                trace normalisation
    u_b = c σ_b z_b,  z ~ N(0, I) from the step seed;   L± = L(θ ± ε u; B)
    g   = (L⁺ − L⁻) / (2ε);   θ_b ← θ_b − η (g u_b + λ θ_b)    (λ = 0 on no-decay blocks)
    state ← (L⁺, L⁻, σ)                                          (the next step's inputs)

Without a policy (``policy=None``) σ_b ≡ 1, c = 1 and the step is MeZO's, bit for bit.

Provenance and departures
-------------------------
* [paper] the network, the features, the trace normalisation and the
  embedding heuristic (an embedding's n_b counts only min(rows, R_b) rows).
* [departure] policy kind ``scale``: a constant σ_b per block (``sigma [B]``),
  written by ``zo meta-train --profile descent``, which fits σ to a
  closed-form expected ZO descent instead of the paper's lookahead.
* [recon] first step: L⁺ = L⁻ = 0, σ = 1; var θ_b is the population variance;
  features and the MLP run in fp32, c in fp64 (the paper's 1e-6 scaling of
  n_b is moot); ``embedding_rows`` defaults to the policy's or 240 = 15·16·1.
* [recon] the policy is never a pickle: safetensors weights + a JSON schema
  (:func:`save_policy` / :func:`load_policy`), matched to the blocks by name
  and shape; a mismatch is a one-line :class:`~zoplatform.errors.ConfigError`.

Fused update, embedding blocks, cost: ``docs/method-notes.md``, ZO Fine-tuner.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from ..errors import ConfigError
from ..params import Block
from ..policy import (
    DEFAULT_EMBEDDING_PATTERN,
    DEFAULT_EMBEDDING_ROWS,
    KIND_SCALE,
    block_stats,
    effective_counts,
    load_policy,
    policy_features,
    policy_sigma,
    trace_scale,
)
from ..types import StepRecord
from .base import SPSAConfig, ZOMethod
from .state import State


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


@dataclass(frozen=True, eq=False)
class ZOFinetunerState(State):
    t: int = 0  # steps taken
    prev_losses: torch.Tensor | None = None  # (L+, L−) of the previous step (fp64), the policy's input
    sigma: torch.Tensor | None = None  # σ_b the previous step used (fp32), the policy's input
    counts: torch.Tensor | None = None  # n_b, each block's effective count in the trace normalisation (fp64)
    embedding: torch.Tensor | None = None  # each block's embedding flag (bool)
    weights: dict[str, torch.Tensor] | None = None  # the policy's weights matched to the blocks; None: σ ≡ 1


class ZOFinetuner(ZOMethod):
    """MeZO with the learned per-block scale c·σ_b of a meta-trained policy.

    Example — a quadratic over 4 tensors (identity policy, i.e. MeZO):

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("zo-finetuner", steps=300, shape=(4,), blocks=4, lr=0.02, eps=1e-3) < 4.0
    True
    """

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
        self.kind = self.policy.kind if self.policy is not None else None

    # -- state ------------------------------------------------------------------
    State = ZOFinetunerState

    def init(self, blocks: Sequence[Block]) -> ZOFinetunerState:
        """The policy matched to ``blocks`` (a layout mismatch is a one-line ConfigError) and its first inputs."""
        c = self.config
        flags, weights = None, None
        if self.policy is not None:
            weights, flags = self.policy.for_blocks(blocks)
        if c.embedding_pattern is not None or flags is None:
            rx = re.compile(c.embedding_pattern or DEFAULT_EMBEDDING_PATTERN)
            flags = [bool(rx.search(b.name)) for b in blocks]
        rows = c.embedding_rows or (self.policy.embedding_rows if self.policy else DEFAULT_EMBEDDING_ROWS)
        counts = torch.tensor(effective_counts([tuple(b.param.shape) for b in blocks], flags, rows),
                              dtype=torch.float64)
        return ZOFinetunerState(t=0, prev_losses=torch.zeros(2, dtype=torch.float64),
                                sigma=torch.ones(len(blocks), dtype=torch.float32), counts=counts,
                                embedding=torch.tensor(flags, dtype=torch.bool), weights=weights)

    # -- the policy -------------------------------------------------------------
    @torch.no_grad()
    def sigma(self, state: ZOFinetunerState, blocks: Sequence[Block]) -> torch.Tensor:
        """σ_b for this step (fp32, CPU); ones without a policy."""
        if state.weights is None:
            return torch.ones(len(blocks), dtype=torch.float32)
        if self.kind == KIND_SCALE:  # constant per block: no features, no pass over the weights
            return state.weights["sigma"].clone()
        x = policy_features(block_stats(blocks), state.prev_losses, state.sigma)
        return policy_sigma(state.weights, x)

    def scales(self, state: ZOFinetunerState, sigma: torch.Tensor) -> tuple[float, list[float]]:
        """(c, [c·σ_b]) as Python floats."""
        if state.weights is None:
            return 1.0, [1.0] * sigma.numel()
        c = trace_scale(sigma, state.counts)
        return c, [c * s for s in sigma.double().tolist()]

    # -- the step ---------------------------------------------------------------
    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        if state.counts is None or state.counts.numel() != len(blocks):
            raise RuntimeError(f"{self.name}: this state is not from init(blocks) for these {len(blocks)} blocks "
                               "(the policy is matched to the blocks there)")
        # 1. policy: σ_b from (θ_b stats, previous L±, previous σ_b); trace-normalised scale s_b = c·σ_b
        sigma = self.sigma(state, blocks)
        trace_c, s = self.scales(state, sigma)
        # 2. two evaluations on the same batch at θ ± ε s⊙z
        loss_plus, loss_minus = self.two_point(blocks, seed, closure, scale=s)
        # 3. projected gradient
        g = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 4. restore + decay + SGD step, fused: θ_b ← β_b θ'_b + (ε β_b − η g)·s_b z_b
        self.restore_update(blocks, seed, lr, g, scale=s)
        # 5. the policy's next inputs
        new = state.replace(t=state.t + 1, prev_losses=torch.tensor([loss_plus, loss_minus], dtype=torch.float64),
                            sigma=sigma.clone())
        extra = {"sigma_mean": float(sigma.mean()), "sigma_max": float(sigma.max()),
                 "sigma_min": float(sigma.min()), "trace_c": trace_c}
        return new, StepRecord(seed, (loss_plus, loss_minus), lr, (g,), extra)

    # -- end-of-run numbers (written by pipelines/finetune/method_reports.py) ----------------------
    def block_table(self, state, blocks: Sequence[Block]) -> list[dict]:
        """Per block: its effective count n_b, whether it is an embedding, the last σ_b and c·σ_b."""
        if state.counts is None:
            return []
        sigma = state.sigma
        c = trace_scale(sigma, state.counts) if state.weights is not None else 1.0
        return [{"block": b.name, "numel": b.numel, "effective_count": int(state.counts[i]),
                 "embedding": int(state.embedding[i]), "sigma": float(sigma[i]), "scale": c * float(sigma[i])}
                for i, b in enumerate(blocks)]
