"""ZO Fine-tuner: MeZO with a learned per-block perturbation scale.

Zhang, Li, Zhao, Sun, Zhang. *Learning a Zeroth-Order Optimizer for
Fine-Tuning LLMs* (ZO Fine-tuner).  ICML 2026, arXiv:2510.00419.  Spec:
``docs/algorithms.md`` §5 (5.1 policy and deployment, 5.2 meta-training, which
lives in ``meta/`` because it needs backprop; this module holds everything the
*deploying* side needs: the policy's functional definition, its file format
and the ZO method).  The official code was not consulted for this file.

Policy (§5.1).  One small MLP per block b (a block = one trainable tensor)::

    x_b = (mean θ_b, var θ_b, L⁺_{t−1}, L⁻_{t−1}, σ_b,{t−1})          5 features
    σ_b = | w2_b · tanh(W1_b x_b + b1_b) + b2_b |                     Linear(5→64) → Tanh → Linear(64→1) → |·|
    c   = sqrt(d_eff / Σ_b n_b σ_b²),   d_eff = Σ_b n_b                trace normalisation

so Σ_b n_b (cσ_b)² = d_eff: the perturbation ``cσ⊙z`` has E‖cσ⊙z‖² = d (the
covariance diag(cσ)² has the trace of the identity's), and only the *relative*
σ between blocks matters.  ``n_b`` is the block's numel, except embedding
matrices, which count ``min(rows, R_b) × hidden``: the paper's heuristic that
only the rows a batch touches matter (it uses 15·batch·world rows).

Policy kinds (``policy.json``'s ``network.kind``; a file without one is ``mlp``):

* ``mlp`` — the paper's network above (what ``zo meta-train --profile paper`` writes).
* ``scale`` — [departure, not in the paper] a constant σ_b per block, stored as
  ``sigma [B]`` (no features, no per-step block statistics).  Written by
  ``zo meta-train --profile descent`` (``meta/metatrain.py``), which fits σ to a
  closed-form expected ZO descent instead of the paper's η_u-scaled lookahead;
  the same trace normalisation c applies at deployment.

Deployment step (MeZO with per-block direction scale s_b = c·σ_b)::

    σ, c from the policy (no grad);    u_b = c σ_b z_b,  z ~ N(0, I) from the step seed
    L± = L(θ ± ε u; B)
    g  = (L⁺ − L⁻) / (2ε)
    θ_b ← θ_b − η (g u_b + λ θ_b)        (λ = 0 on biases and normalisation weights)
    state ← (L⁺, L⁻, σ)                  (the next step's inputs)

Restore and update are fused as in MeZO: θ_b ← β_b θ'_b + (ε β_b − η g)·s_b z_b
with θ' = θ − ε u and β_b = 1 − ηλ (three passes over z, through
:func:`~zoplatform.params.axpy_`'s ``scale``).  The step is a deterministic
function of (θ, state, seed, losses, lr), so a trajectory replays bit-exactly;
the per-step policy state (previous losses, previous σ) lives in the method
state, so ``ZOOptimizer.state_dict`` resumes exactly.

Without a policy (``policy=None``) σ_b ≡ 1, c = 1 exactly and the step *is*
MeZO's, bit for bit (same directions, same fused update).

Choices where the source is silent or where we differ [recon]
-------------------------------------------------------------
* First step: L⁺_{−1} = L⁻_{−1} = 0 and σ_{−1} = 1.
* var θ_b is the population variance (a 1-element block has var 0, not NaN).
* Features and the MLP run in fp32 on CPU; c is computed in fp64 (the paper
  scales n_b by 1e-6 to stay inside fp32/fp16 range; fp64 makes that moot).
* Embedding rows: ``embedding_rows`` (None = the value the policy was
  meta-trained with, or 240 = 15·16·1, the paper's rule at its deployment
  batch 16 on one device, when no policy is given).  Embedding blocks are the
  ones the policy file marks (detected by module type, ``nn.Embedding``, at
  meta-training), or those matching ``embedding_pattern``.  Tied weights
  (SmolLM2's lm_head = embed_tokens) are one block, counted as an embedding,
  as in the paper's code.
* The policy is never a pickle: safetensors weights + a JSON schema
  (:func:`save_policy` / :func:`load_policy`), matched to the blocks by name
  and shape; any mismatch is a one-line :class:`~zoplatform.errors.ConfigError`.
* Per-block features are read from every block each step (``mlp`` kind): one
  read-only pass over the weights in addition to MeZO's three direction passes.
  A ``scale`` policy needs none.

Example — a quadratic over 4 tensors (identity policy, i.e. MeZO):

>>> import torch, zoplatform
>>> xs = [torch.nn.Parameter(torch.ones(4)) for _ in range(4)]
>>> opt = zoplatform.optimizer("zo-finetuner", [(f"x{i}", x) for i, x in enumerate(xs)], lr=0.02, eps=1e-3)
>>> for _ in range(300):
...     _ = opt.step(lambda: sum((x ** 2).sum() for x in xs))
>>> bool(sum((x ** 2).sum() for x in xs) < 4.0)
True
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field

from ..errors import ConfigError
from ..params import Block
from ..policy import (  # noqa: F401 - re-exported: the policy format lives in zoplatform/policy.py
    DEFAULT_EMBEDDING_PATTERN,
    DEFAULT_EMBEDDING_ROWS,
    FEATURES,
    FORMAT,
    HIDDEN,
    KIND_MLP,
    KIND_SCALE,
    POLICY_KINDS,
    SCALE_KEYS,
    SCHEMA_FILE,
    WEIGHT_KEYS,
    WEIGHTS_FILE,
    Policy,
    _check_weights,
    block_stats,
    direction_tensor,
    effective_counts,
    embedding_block_names,
    init_policy_weights,
    load_policy,
    make_schema,
    policy_blocks,
    policy_features,
    policy_kind,
    policy_sigma,
    save_policy,
    trace_scale,
    weight_keys,
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
    """MeZO with the learned per-block scale c·σ_b of a meta-trained policy."""

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
