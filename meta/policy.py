"""The trainable ZO Fine-tuner policies (Zhang et al., ICML 2026, arXiv:2510.00419, §5.1).

:class:`PerturbationPolicy` (kind ``mlp``, the paper's) holds one
``Linear(5→64) → Tanh → Linear(64→1)`` MLP per block as *stacked* parameters
(``w1 [B,64,5]``, ``b1 [B,64]``, ``w2 [B,64]``, ``b2 [B]``) and evaluates them
with the library's :func:`zoplatform.policy.policy_sigma`, so
meta-training and deployment run one definition of the network.

:class:`ScalePolicy` (kind ``scale``, [departure] the ``descent`` profile's) is
one number per block: σ_b = exp(L·tanh(u_b / L)) with L = ln(``bound``), so σ_b
stays inside [1/bound, bound] and u = 0 is σ ≡ 1 exactly (MeZO).  u is fp64;
the file stores σ (fp32), so ``policy_rel_change`` = ‖σ − σ₀‖/‖σ₀‖ with σ₀ = 1.

Both are saved and loaded in the library's format (safetensors + JSON schema),
never pickled; :func:`load_any` returns the right class for a file.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zoplatform.params import Block
from zoplatform.policy import (
    HIDDEN,
    KIND_MLP,
    KIND_SCALE,
    WEIGHT_KEYS,
    Policy,
    block_stats,
    init_policy_weights,
    load_policy,
    make_schema,
    policy_features,
    policy_sigma,
    save_policy,
)


class PerturbationPolicy(torch.nn.Module):
    """Per-block PertNNs, stacked; ``forward(x [B,5]) -> σ [B]`` (kind ``mlp``).

    ``blocks`` is the layout: (name, shape, is_embedding) per block, in the
    order the feature rows come in (model order).
    """

    def __init__(self, blocks: Sequence[tuple[str, Sequence[int], bool]], *, base_model: str = "",
                 embedding_rows: int = 120, seed: int = 0, hidden: int = HIDDEN):
        super().__init__()
        self.kind = KIND_MLP
        self.layout = [(str(n), [int(s) for s in shape], bool(e)) for n, shape, e in blocks]
        self.base_model = base_model
        self.embedding_rows = int(embedding_rows)
        self.hidden = int(hidden)
        w = init_policy_weights(len(self.layout), torch.Generator().manual_seed(seed), hidden)
        for k in WEIGHT_KEYS:
            self.register_parameter(k, torch.nn.Parameter(w[k]))

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in WEIGHT_KEYS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return policy_sigma(self.weights(), x)

    # -- file format (the library's) -------------------------------------------
    def schema(self, meta: Mapping | None = None) -> dict:
        return make_schema(self.layout, base_model=self.base_model, embedding_rows=self.embedding_rows,
                           hidden=self.hidden, meta=meta)

    def save(self, directory: str | Path, meta: Mapping | None = None) -> Path:
        """``policy.safetensors`` + ``policy.json`` in ``directory``."""
        return save_policy(directory, self.weights(), self.schema(meta))

    @classmethod
    def from_policy(cls, policy: Policy) -> PerturbationPolicy:
        s = policy.schema
        m = cls([(b["name"], b["shape"], b.get("embedding", False)) for b in s["blocks"]],
                base_model=policy.base_model, embedding_rows=policy.embedding_rows,
                hidden=int(s["network"]["hidden"]))
        with torch.no_grad():
            for k in WEIGHT_KEYS:
                getattr(m, k).copy_(policy.weights[k])
        return m

    @classmethod
    def load(cls, path: str | Path) -> PerturbationPolicy:
        return cls.from_policy(load_policy(path))


class ScalePolicy(torch.nn.Module):
    """One σ_b per block (kind ``scale``); ``forward(x=None) -> σ [B]`` (fp64).

    σ_b = exp(L·tanh(u_b / L)), L = ln(bound): σ ∈ [1/bound, bound], u = 0 ⇔ σ = 1
    exactly.  ``blocks`` is the layout, as for :class:`PerturbationPolicy`.
    """

    def __init__(self, blocks: Sequence[tuple[str, Sequence[int], bool]], *, base_model: str = "",
                 embedding_rows: int = 120, bound: float = 10.0, groups: Sequence[int] | None = None,
                 sharing: str = "block"):
        super().__init__()
        if not bound > 1.0:
            raise ValueError(f"ScalePolicy: bound must be > 1, got {bound}")
        self.kind = KIND_SCALE
        self.layout = [(str(n), [int(s) for s in shape], bool(e)) for n, shape, e in blocks]
        self.base_model = base_model
        self.embedding_rows = int(embedding_rows)
        self.bound = float(bound)
        # blocks in one group share one parameter (e.g. every attention-v matrix); None: one per block
        g = list(range(len(self.layout))) if groups is None else [int(x) for x in groups]
        if len(g) != len(self.layout) or (g and min(g) < 0):
            raise ValueError(f"ScalePolicy: groups must give a group index >= 0 per block ({len(self.layout)})")
        self.sharing = sharing if groups is not None else "block"
        self.register_buffer("groups", torch.tensor(g, dtype=torch.long), persistent=False)
        self.u = torch.nn.Parameter(torch.zeros(max(g, default=-1) + 1, dtype=torch.float64))

    @property
    def log_bound(self) -> float:
        return math.log(self.bound)

    def log_sigma(self) -> torch.Tensor:
        lb = self.log_bound
        return (lb * torch.tanh(self.u / lb))[self.groups]

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.exp(self.log_sigma())

    def weights(self) -> dict[str, torch.Tensor]:
        """What the file stores: ``{"sigma": σ}`` (fp32)."""
        return {"sigma": self.forward().float()}

    @torch.no_grad()
    def set_sigma(self, sigma: torch.Tensor) -> None:
        """u from per-block σ (clipped just inside the bound, where tanh is invertible); with shared
        groups, a group takes its first block's σ."""
        lb = self.log_bound
        r = (torch.log(sigma.double()) / lb).clamp(-1 + 1e-12, 1 - 1e-12)
        u = lb * torch.atanh(r)
        first = {}
        for i, gi in enumerate(self.groups.tolist()):
            first.setdefault(gi, i)
        self.u.copy_(u[torch.tensor([first[k] for k in range(self.u.numel())], dtype=torch.long)])

    def schema(self, meta: Mapping | None = None) -> dict:
        sch = make_schema(self.layout, base_model=self.base_model, embedding_rows=self.embedding_rows,
                          meta=meta, kind=KIND_SCALE)
        sch["network"]["bound"] = self.bound
        sch["network"]["sharing"] = self.sharing  # how meta-training tied the scales (the file holds one per block)
        return sch

    def save(self, directory: str | Path, meta: Mapping | None = None) -> Path:
        return save_policy(directory, self.weights(), self.schema(meta))

    @classmethod
    def from_policy(cls, policy: Policy) -> ScalePolicy:
        s = policy.schema
        sig = policy.weights["sigma"]
        bound = float(s["network"].get("bound", max(10.0, 2.0 * float(torch.maximum(sig, 1 / sig).max()))))
        m = cls([(b["name"], b["shape"], b.get("embedding", False)) for b in s["blocks"]],
                base_model=policy.base_model, embedding_rows=policy.embedding_rows, bound=bound)
        m.set_sigma(sig)
        return m

    @classmethod
    def load(cls, path: str | Path) -> ScalePolicy:
        return cls.from_policy(load_policy(path))


def load_any(path: str | Path) -> PerturbationPolicy | ScalePolicy:
    """The trainable module for a policy file, by its kind."""
    pol = load_policy(path)
    return (ScalePolicy if pol.kind == KIND_SCALE else PerturbationPolicy).from_policy(pol)


@dataclass
class PolicyState:
    """The policy's recurrent inputs: previous L⁺, L⁻ (global) and σ per block."""

    prev_losses: torch.Tensor
    prev_sigma: torch.Tensor

    @classmethod
    def fresh(cls, n: int) -> PolicyState:
        return cls(torch.zeros(2, dtype=torch.float64), torch.ones(n, dtype=torch.float32))


@torch.no_grad()
def policy_sigma_at(policy: PerturbationPolicy | ScalePolicy, blocks: Sequence[Block],
                    loss: float = 0.0) -> torch.Tensor:
    """σ [B] a deployment at these weights uses.  ``scale``: the constants.  ``mlp``
    (recurrent inputs): the second step's σ — inputs θ's block statistics,
    L⁺ = L⁻ = ``loss`` (e.g. the held-out mean loss at θ) and the first step's σ
    (itself from the fresh state L± = 0, σ = 1)."""
    if isinstance(policy, ScalePolicy):
        return policy().detach()
    stats = block_stats(blocks)
    fresh = PolicyState.fresh(len(blocks))
    first = policy(policy_features(stats, fresh.prev_losses, fresh.prev_sigma))
    losses = torch.tensor([loss, loss], dtype=torch.float64)
    return policy(policy_features(stats, losses, first)).detach()
