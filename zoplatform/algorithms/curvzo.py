"""CurvZO: curvature-guided sparse ZO with Horvitz–Thompson correction and an adaptive budget.

Wang, Chen, Tang. *CurvZO.* ICML 2026, arXiv:2603.21725.  Spec:
``docs/algorithms.md`` §4.  The official code was not consulted; the
``paper`` profile is a reconstruction from the paper's definitions.

Update rule (blocks b = parameter tensors, d_b = numel, D = Σ_b d_b, f = budget fraction of D)::

    π_b = min(1, c·√S_b),   c from Σ_b d_b·π_b = f·D               (bisection)
    m_b ~ Bernoulli(π_b) independently  (at least one block)       (Poisson sampling)
    Δ   = (L(θ + ε v) − L(θ − ε v)) / (2ε),  v_b = m_b·z_b
    g̃_b = (m_b / π_b)·Δ·z_b                                        (Horvitz–Thompson, Def. 3.1)
    θ_b ← θ_b − η·(g̃_b + λ·θ_b)        (sampled b; λ = 0 on biases and norm weights)
    S_b ← (1 − β)·S_b + β·Δ²‖z_b‖²/d_b   (sampled b)               (curvature score, EMA)
    every T_B steps:  v = S/mean S,  N_eff = (Σ√v)²/Σv,  H = entropy(v/Σv)/log N
        f ← clip(μ·f + (1 − μ)·[f_min + (f_max − f_min)(α·N_eff/N + (1 − α)(1 − H))], f_min, f_max)

Provenance and departures (``profile``)
---------------------------------------
* ``paper`` (default, §4.2): the rule above; β 0.1, f₀ 0.4, [f_min, f_max] =
  [0.1, 0.8], α 0.7, T_B 20, μ 0.9, S₀ 1.  [recon] the signal is divided by
  G, an EMA (κ 0.9) of Δ², so it is O(1) like S₀ (``score_normalise``).
* ``port`` (§4.3) [port]: a third-party port's reading — budget in tensors,
  π ∝ S with c ≤ 1/max p, credit |Δ|/G split by ‖z_b‖²/π_b².
* ``contrast`` [recon, departure]: our fix for §4.4's discrimination failure —
  the block's own share of Δ² (in-sample minus out-of-sample EMAs) as its
  score, β 0.02, π ∈ [0.05, 0.95].
* [recon] an empty Poisson draw is redrawn; the HT weight uses the realised
  π̃_b = π_b / (1 − Π(1 − π_b)), so the estimate stays unbiased.
* [recon] weight decay acts on the sampled blocks only (the spec's rule).

Why ``contrast``, the synthetic benchmark (no profile beats MeZO there) and
timings: ``docs/method-notes.md``, CurvZO.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..params import Block
from ..rng import DirectionLaw, block_seed, generator, name_key
from ..types import StepRecord
from .base import SPSAConfig, ZOMethod
from .state import State

_SAMPLE_STREAM = 0xC0F1
_SAMPLE_KEY = name_key("curvzo.poisson-sampling")
PROFILES = ("paper", "port", "contrast")


class CurvZOConfig(SPSAConfig):
    """CurvZO hyperparameters (defaults: the paper profile of §4.2 and MeZO's protocol)."""

    lr: float = Field(1e-6, gt=0, description="learning rate η ([recon] MeZO's grid {1e-6, 1e-7})")
    weight_decay: float = Field(0.0, ge=0, description="λ, applied to sampled decayed blocks")
    profile: Literal["paper", "port", "contrast"] = Field(
        "paper", description="paper (§4.2), port (§4.3, comparison) or contrast (own-share score + π floor)")
    init_budget: float = Field(0.4, gt=0, le=1, description="f₀: initial budget (fraction of coordinates; "
                                                           "of tensors in the port profile)")
    budget_min: float = Field(0.1, gt=0, le=1, description="f_min")
    budget_max: float = Field(0.8, gt=0, le=1, description="f_max")
    adaptive_budget: bool = Field(True, description="adapt f every budget_every steps (False: the paper's "
                                                    "fixed-budget ablation)")
    budget_every: int = Field(20, ge=1, description="T_B: steps between budget updates")
    budget_momentum: float = Field(0.9, ge=0, lt=1, description="μ: f ← μ·f + (1 − μ)·target")
    budget_weight: float = Field(0.7, ge=0, le=1, description="α: weight of N_eff/N against 1 − H in the target")
    score_ema: float | None = Field(None, gt=0, le=1, description="β: EMA weight of a new curvature signal; "
                                                                  "None: 0.1 (paper, port) or 0.02 (contrast)")
    score_init: float = Field(1.0, gt=0, description="S₀: initial score of every block")
    score_normalise: bool = Field(True, description="paper/contrast: divide the signal by G, an EMA of Δ² "
                                                    "([recon] the paper's 'normalised'; see the module doc)")
    credit_ema: float = Field(0.9, ge=0, lt=1, description="κ: running scale G of the feedback, G ← κ·G + (1 − κ)·x "
                                                           "(port: x = |Δ|, its credit normaliser; paper/contrast: "
                                                           "x = Δ², the score normaliser)")
    contrast_prior: float = Field(1.0, ge=0, description="contrast only: S_b = share_b + ρ·mean(share) "
                                                         "(shrinks undetected shares toward the mean)")
    pi_floor: float | None = Field(None, ge=0, lt=0.5, description="lower bound on π (upper bound 1 − floor); "
                                                                   "None: 0 for paper/port, 0.05 for contrast")


class _NormTap(DirectionLaw):
    """Wraps a direction law and accumulates ‖z‖² of what it generates."""

    def __init__(self, law: DirectionLaw):
        self.law, self.name, self.sq = law, law.name, 0.0

    def fill_(self, out, g):
        z = self.law.fill_(out, g)
        self.sq += float(torch.dot(z, z))
        return z


def meet_budget(q: torch.Tensor, d: torch.Tensor, target: float, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """π_b = clip(c·q_b, lo, hi) with c ≥ 0 chosen so that Σ_b d_b·π_b = target.

    Σ d·clip(c q) is piecewise linear and non-decreasing in c: bisection finds
    the piece, then c is solved in closed form on it, so the budget is met to
    rounding.  Blocks with q_b = 0 get ``lo``; all-zero q means uniform.
    """
    q, d = q.double(), d.double()
    if float(q.max()) <= 0.0:
        q = torch.ones_like(q)
    total = float(d.sum())
    if target >= hi * total:
        return torch.full_like(q, hi)
    if target <= lo * total:
        return torch.full_like(q, lo)

    def filled(c: float) -> float:
        return float((d * (c * q).clamp(lo, hi)).sum())

    c_lo, c_hi = 0.0, hi / float(q[q > 0].min())
    if filled(c_hi) <= target:  # zero-score blocks cap the fill: every positive one saturates
        return (c_hi * q).clamp(lo, hi)
    for _ in range(200):
        mid = 0.5 * (c_lo + c_hi)
        if filled(mid) < target:
            c_lo = mid
        else:
            c_hi = mid
        if c_hi - c_lo <= 1e-15 * c_hi:
            break
    c = c_hi
    # closed form on the linear piece that contains the solution
    cq = c * q
    free = (cq > lo) & (cq < hi)
    if bool(free.any()):
        fixed = float((d * cq.clamp(lo, hi))[~free].sum())
        c_exact = (target - fixed) / float((d * q)[free].sum())
        cand = c_exact * q
        if bool(((cand > lo) & (cand < hi) == free).all()):
            c = c_exact
    return (c * q).clamp(lo, hi)


def port_inclusion(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The port's π = c·p with p = S/ΣS and c = min(k, 1/max p) (its bisection's
    fixed point): Σπ = min(k, 1/max p) tensors — under-filled when scores are uneven."""
    p = scores.double() / scores.double().sum()
    return (min(float(k), 1.0 / float(p.max())) * p).clamp(max=1.0)


def budget_stats(scores: torch.Tensor) -> tuple[float, float]:
    """(N_eff/N, H): effective support (Σ√v)²/Σv over N and normalised entropy of v/Σv, v = S/mean S."""
    n = scores.numel()
    v = scores.double() / scores.double().mean().clamp_min(1e-300)
    n_eff = float(v.sqrt().sum() ** 2 / v.sum())
    p = v / v.sum()
    h = float(-(p * p.clamp_min(1e-300).log()).sum() / math.log(n)) if n > 1 else 1.0
    return n_eff / n, h


@dataclass(frozen=True, eq=False)
class CurvZOState(State):
    t: int = 0  # steps taken
    budget: float = 0.0  # f, the coordinate budget the next step uses
    scores: torch.Tensor | None = None  # S_b per block (fp64)
    counts: torch.Tensor | None = None  # how often each block was sampled (int64)
    trace: torch.Tensor | None = None  # rows (step, f, N_eff/N, H) at budget updates
    norm: float = 0.0  # G, the running scale of the feedback
    scores_out: torch.Tensor | None = None  # the contrast profile's E[Δ² | b ∉ S] (other profiles: None)


class Profile:
    """A CurvZO profile: how curvature scores are kept, read and turned into inclusion
    probabilities.  The step itself (sample, two-point estimate, HT update, budget) is shared."""

    name = "base"
    score_ema = 0.1  # β when the config leaves it None
    pi_floor = 0.0  # lower bound on π when the config leaves it None
    norm_init = 0.0  # G before the first signal (0: set from the first one)

    def extra_state(self, n: int, c: CurvZOConfig) -> dict:
        return {}

    def effective(self, state: CurvZOState, c: CurvZOConfig) -> torch.Tensor:
        """The scores sampling and the budget use."""
        return state.scores

    def inclusion(self, s: torch.Tensor, d: torch.Tensor, budget: float, n_blocks: int, lo: float) -> torch.Tensor:
        """π_b meeting the budget: c·√S_b clipped to [lo, 1 − lo] with Σ d_b π_b = f·D."""
        return meet_budget(s.sqrt(), d, budget * float(d.sum()), lo, 1.0 - lo)

    def update(self, state: CurvZOState, blocks, idx: list[int], zsq: list[float], pi: torch.Tensor, delta: float,
               beta: float, c: CurvZOConfig) -> dict:
        """The state fields (name → new value) a step that sampled ``idx`` and measured Δ changes."""
        raise NotImplementedError


def _normaliser(state, d2: float, c: CurvZOConfig) -> tuple[float, float]:
    """(G, 1/G): G a running mean of Δ² so the signal is O(1) like S₀ and comparable over training."""
    norm = d2 if state.norm == 0.0 else c.credit_ema * state.norm + (1.0 - c.credit_ema) * d2
    return norm, ((1.0 / norm if norm > 0 else 0.0) if c.score_normalise else 1.0)


class PaperProfile(Profile):
    """§4.2: S_b ← (1 − β)S_b + β·(Δ²/G)‖z_b‖²/d_b on the sampled blocks; π ∝ √S."""

    name = "paper"

    def update(self, state, blocks, idx, zsq, pi, delta, beta, c):
        s, d2 = state.scores.clone(), delta * delta
        norm, scale = _normaliser(state, d2, c)
        for i, sq in zip(idx, zsq):
            s[i] = (1.0 - beta) * s[i] + beta * d2 * scale * sq / blocks[i].numel
        return {"scores": s, "norm": norm}


class PortProfile(Profile):
    """§4.3: budget in tensors, π ∝ S capped (under-fills), credit |Δ|/G split by ‖z_b‖²/π_b²."""

    name = "port"
    norm_init = 1e-8

    def inclusion(self, s, d, budget, n_blocks, lo):
        return port_inclusion(s, max(1, math.floor(budget * n_blocks)))

    def update(self, state, blocks, idx, zsq, pi, delta, beta, c):
        s = state.scores.clone()
        norm = c.credit_ema * state.norm + (1.0 - c.credit_ema) * abs(delta)
        r = abs(delta) / norm
        w = torch.tensor([sq / float(pi[i]) ** 2 for i, sq in zip(idx, zsq)], dtype=torch.float64)
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / len(idx))
        for j, i in enumerate(idx):
            s[i] = (1.0 - beta) * s[i] + beta * r * float(w[j])
        return {"scores": s, "norm": norm}


class ContrastProfile(Profile):
    """Our fix (module doc): E[Δ² | b ∈ S] − E[Δ² | b ∉ S] as the block's share, π floored."""

    name = "contrast"
    score_ema = 0.02
    pi_floor = 0.05

    def extra_state(self, n, c):
        return {"scores_out": torch.full((n,), c.score_init, dtype=torch.float64)}

    def effective(self, state, c):
        share = (state.scores - state.scores_out).clamp_min(0.0)
        return share + c.contrast_prior * share.mean()

    def update(self, state, blocks, idx, zsq, pi, delta, beta, c):
        d2 = delta * delta
        norm, scale = _normaliser(state, d2, c)
        hit = torch.zeros(len(blocks), dtype=torch.bool)
        hit[idx] = True
        s, out = state.scores, state.scores_out
        return {"scores": torch.where(hit, (1.0 - beta) * s + beta * d2 * scale, s),
                "scores_out": torch.where(hit, out, (1.0 - beta) * out + beta * d2 * scale), "norm": norm}


PROFILE_CLASSES = {p.name: p for p in (PaperProfile, PortProfile, ContrastProfile)}


class CurvZO(ZOMethod):
    """CurvZO with the ``paper`` (default), ``port`` and ``contrast`` profiles (:class:`Profile` strategies).

    Example — a quadratic over 8 tensors:

    >>> from zoplatform.algorithms.demo import quadratic_loss_after
    >>> quadratic_loss_after("curvzo", steps=300, shape=(4,), blocks=8, lr=0.02, eps=1e-3) < 8.0
    True
    """

    name = "curvzo"
    paper = "Wang, Chen, Tang, CurvZO, ICML 2026, arXiv:2603.21725"
    Config = CurvZOConfig

    def __init__(self, config=None, **hyper):
        super().__init__(config, **hyper)
        c = self.config
        self.profile = PROFILE_CLASSES[c.profile]()
        if not c.budget_min <= c.init_budget <= c.budget_max:
            raise ConfigError(f"{self.name}: init_budget={c.init_budget} must lie in "
                              f"[budget_min={c.budget_min}, budget_max={c.budget_max}]")
        if self.pi_floor > c.budget_min:
            raise ConfigError(f"{self.name}: pi_floor={self.pi_floor} exceeds budget_min={c.budget_min}: "
                              "the floor alone would overfill the budget")

    @property
    def score_ema(self) -> float:
        return self.profile.score_ema if self.config.score_ema is None else self.config.score_ema

    @property
    def pi_floor(self) -> float:
        return self.profile.pi_floor if self.config.pi_floor is None else self.config.pi_floor

    # -- state ------------------------------------------------------------------
    State = CurvZOState

    def init(self, blocks):
        c, n = self.config, len(blocks)
        return CurvZOState(
            t=0,
            budget=float(c.init_budget),
            scores=torch.full((n,), c.score_init, dtype=torch.float64),
            counts=torch.zeros(n, dtype=torch.int64),
            trace=torch.zeros(0, 4, dtype=torch.float64),
            norm=self.profile.norm_init,
            **self.profile.extra_state(n, c),
        )

    def effective_scores(self, state) -> torch.Tensor:
        """The scores sampling and the budget use (the contrast profile's in − out)."""
        return self.profile.effective(state, self.config)

    # -- sampling ---------------------------------------------------------------
    def inclusion(self, state, blocks) -> torch.Tensor:
        """Target inclusion probabilities π_b (they meet the budget)."""
        d = torch.tensor([b.numel for b in blocks], dtype=torch.float64)
        s = self.effective_scores(state).clamp_min(1e-300)  # numerical guard only
        return self.profile.inclusion(s, d, state.budget, len(blocks), self.pi_floor)

    @staticmethod
    def realised(pi: torch.Tensor) -> torch.Tensor:
        """Inclusion probabilities under the ≥ 1-block rule: π / (1 − Π(1 − π))."""
        p_empty = float(torch.exp(torch.log1p(-pi.clamp(max=1.0)).sum())) if bool((pi < 1).all()) else 0.0
        return pi / (1.0 - p_empty)

    @staticmethod
    def sample(pi: torch.Tensor, seed: int) -> list[int]:
        """Poisson sampling from the step seed; an empty draw is redrawn."""
        g = generator(block_seed(seed, _SAMPLE_KEY, _SAMPLE_STREAM))
        for _ in range(100_000):
            hit = torch.rand(pi.numel(), dtype=torch.float64, generator=g) < pi
            if bool(hit.any()):
                return hit.nonzero().view(-1).tolist()
        return [int(pi.argmax())]  # only reachable with every π ≈ 0

    # -- the step ---------------------------------------------------------------
    def step(self, state, blocks, closure, seed, lr):
        c = self.config
        t = state.t
        # 1. inclusion probabilities (budget met) and the Poisson draw (≥ 1 block)
        pi = self.inclusion(state, blocks)
        pi_real = self.realised(pi)
        idx = self.sample(pi, seed)
        sub = [blocks[i] for i in idx]
        # 2. L± at θ ± ε z_S; the first pass also measures ‖z_b‖² of each sampled block
        taps = [_NormTap(self.law) for _ in sub]
        loss_plus, loss_minus = self.two_point(sub, seed, closure, first_law=taps)
        zsq = [tap.sq for tap in taps]
        # 3. projected gradient
        delta = (loss_plus - loss_minus) / (2.0 * c.eps)
        # 4. restore + decay + Horvitz–Thompson step, fused: α_b = εβ_b − ηΔ/π̃_b
        self.restore_update(sub, seed, lr, steps=[lr * delta / float(pi_real[i]) for i in idx])
        # 5. curvature scores of the sampled blocks (and the contrast profile's "out" EMA)
        counts = state.counts.clone()
        counts[idx] += 1
        new = state.replace(counts=counts, t=t + 1,
                            **self.profile.update(state, blocks, idx, zsq, pi, delta, self.score_ema, c))
        # 6. budget, every T_B steps
        frac, ent = budget_stats(self.effective_scores(new))
        if c.adaptive_budget and (t + 1) % c.budget_every == 0:
            target = c.budget_min + (c.budget_max - c.budget_min) * (
                c.budget_weight * frac + (1.0 - c.budget_weight) * (1.0 - ent))
            f = min(c.budget_max, max(c.budget_min, c.budget_momentum * state.budget
                                      + (1.0 - c.budget_momentum) * target))
            row = torch.tensor([[t + 1, f, frac, ent]], dtype=torch.float64)
            new = new.replace(budget=f, trace=torch.cat([state.trace, row]))
        total = sum(b.numel for b in blocks)
        extra = {
            "budget": state.budget,                         # f used by this step
            "n_eff": frac * len(blocks),                    # effective support of the scores
            "score_entropy": ent,                           # H ∈ [0, 1]
            "sampled_blocks": len(idx),
            "sampled_frac": sum(b.numel for b in sub) / total,  # realised coordinate fraction
        }
        return new, StepRecord(seed, (loss_plus, loss_minus), lr, (delta,), extra)

    # -- end-of-run numbers (written and drawn by pipelines/finetune/method_reports.py) ------------
    def block_table(self, state, blocks: Sequence[Block]) -> list[dict]:
        """Per block: its score, final inclusion probability π and how often it was sampled."""
        counts = state.counts.double()
        steps = max(state.t, 1)
        scores, pi = self.effective_scores(state), self.inclusion(state, blocks)
        return [{"block": b.name, "numel": b.numel, "score": float(scores[i]), "pi": float(pi[i]),
                 "sampled_count": int(counts[i]), "sampled_rate": float(counts[i]) / steps}
                for i, b in enumerate(blocks)]
