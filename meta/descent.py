"""The ``descent`` meta-training profile: a per-block perturbation scale fitted to
the closed-form expected descent of the deployed ZO step.

[departure] Not in the paper.  Zhang et al., *ZO Fine-tuner*, ICML 2026,
arXiv:2510.00419 train their PertNNs through a lookahead θ' = θ − η_u·cσ(ω)·z·g
(profile ``paper``, ``meta/metatrain.py``); docs/algorithms.md §5.4 measures
that this does not move the policy: ∂L(θ')/∂σ_b = −η_u·g·c·⟨∇_b L, z_b⟩ carries
the factor η_u = 1e-6 and, per step, one random direction's noise.  This
profile replaces the sampled lookahead by its expectation over the direction,
in closed form, from the first-order trajectory's gradients.

The deployed step (``zoplatform/algorithms/zo_finetuner.py``) with scales
s_b = c·σ_b, u = s⊙z, z ~ N(0, I), on a minibatch B of size m (ε → 0)::

    ĝ = ⟨∇L_B, u⟩ u,      θ' = θ − η ĝ

Expectations over z (Isserlis) and over B, with H the loss Hessian::

    E⟨∇L, ĝ⟩   = Σ_b s_b² ‖∇_b L‖²                                    (first order)
    E[ĝᵀHĝ]   = E_B[ ‖S∇L_B‖² tr(SHS) + 2 (S²∇L_B)ᵀ H (S²∇L_B) ]      (second order)

Approximations [recon]: H ≈ blockdiag(λ_b I) with n_b λ_b = tr H_bb ≈ F_b, the
empirical-Fisher (Gauss–Newton) trace of the cross-entropy loss,
F_b = E_i ‖∇_b ℓ_i‖² = P_b + V_b; and E_B ‖∇_b L_B‖² = P_b + V_b/m.  Here
P_b = ‖∇_b L‖² (population) and V_b = tr Cov_i(∇_b ℓ_i) (per-example variance)
come from two half-batch gradients g¹, g² (sizes m₁, m₂) of every meta-training
batch, unbiasedly::

    P̂_b = ⟨g¹_b, g²_b⟩,     V̂_b = (m₁(‖g¹_b‖² − P̂_b) + m₂(‖g²_b‖² − P̂_b)) / 2

so the expected one-step descent at lr η and deployment batch m is D(η) = ηA − η²Q/2 with::

    A(s) = Σ_b s_b² P_b                                               (first order)
    Q(s) = (Σ_b s_b² B_b)(Σ_b s_b² F_b) + 2 Σ_b s_b⁴ B_b F_b / n_b      (second order)
    B_b = P⁺_b + V⁺_b/m,  F_b = P⁺_b + V⁺_b                      (⁺: clipped at 0)

(n_b: the trace normalisation's effective count).  With a = A(s)/A(1) and
q = Q(s)/Q(1), the ratio D_s(η)/D_1(η) is monotone in η, so over every lr up
to σ ≡ 1's best lr η* = A(1)/Q(1) its worst case is at an end::

    min over η ∈ (0, η*] of D_s(η)/D_1(η) = min(a, 2a − q)

the **metric and objective** (lr-free, loss-scale-free, no η_u, exactly 1 at
σ ≡ 1).  Why not D at a fixed lr: when a block's signal, noise and curvature
all grow together (the common case: measured on SmolLM2-135M), moving the
perturbation budget to it acts like a larger lr — a fixed-lr objective rewards
that (and can cross the stability limit: measured, a COPA+TREC pilot gained
×300 on its training batches and lost on held-out ones); min(a, 2a − q) only
rewards a policy that beats σ ≡ 1 at every lr up to σ ≡ 1's best.

Meta-objective over the meta-training tasks t (running means of (P̂, V̂) over
the batches seen), with p_b = n_b s_b² / Σ n the block's share of the
perturbation budget (p⁰ at σ ≡ 1)::

    J(ω) = mean_t φ_t − β · KL(p ‖ p⁰)
    φ_t = log min(a_t, 2a_t − q_t)    if task t's signal is measurable (Σ_b P̂_b > 0 at t ≥ 2 over batches)
    φ_t = −max(0, log q_t)            otherwise: its cost may not rise above σ ≡ 1's

log (linearly extended below 0.05): a policy that helps one task by hurting
another is penalised (log-optimal, Kelly-like).  Measured on SmolLM2-135M at the
base weights with 64 examples per task, only TREC's population signal was
measurable (COPA, BoolQ, WiC: Σ P̂ within noise), hence the second case.  The
KL term (β = ``kl_weight``) keeps blocks whose statistics do not call for a
change at MeZO's scale.  σ_b = exp(L tanh(u_b/L)), L = ln(``sigma_bound``)
(:class:`meta.policy.ScalePolicy`), one u per group of blocks (``sharing``:
block type × third of the depth by default — per-block scales fitted the
batches' noise in held-out checks, per-type ones could not move), fp64, Adam
with a linear lr warm-up and gradient-norm clipping, ``inner_steps`` Adam steps
per meta-step (J is a deterministic function of the running statistics).
The fixed-lr ratio at ``finetune_lr`` (curvature × ``curvature_margin``) and the
best-lr ratio A²Q₁/(A₁²Q) are reported alongside, not optimised.

The first-order trajectory step reuses the full-batch gradient
(m₁g¹ + m₂g²)/m: the meta-step costs no backward pass beyond the trajectory's.
Gradients come from ``torch.autograd.grad``: the meta-update never writes θ
or θ.grad.

Meta-validation (:class:`MetaValidation`) evaluates min(a, 2a − q) on held-out
batches of the meta-training tasks (their dev split, never a test set) at the
base weights, where every fine-tune starts: ``gain_over_uniform`` = its mean
over the tasks with a measurable signal, minus 1 — exactly 0 for σ ≡ 1; per
task with ``measurable``, ``first_order_gain`` (a − 1), ``cost_ratio`` (q),
``gain_at_best_lr`` and ``gain_at_finetune_lr``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from zoplatform.params import Block

R_LOG_FLOOR = 0.05  # φ = log r above this, linear below (C¹): a barrier against unstable policies
MIN_SIGNAL_T = 2.0  # a task counts when its batches' total signal Σ P̂ is > 0 at this many standard errors


@dataclass
class GradStats:
    """Per-block gradient statistics of one batch (fp64, [B])."""

    P: torch.Tensor  # ⟨g¹_b, g²_b⟩, unbiased for ‖∇_b L‖²
    V: torch.Tensor  # per-example gradient variance trace, unbiased
    loss: float      # the batch's mean loss
    size: int        # examples


class StatsMean:
    """Running mean of :class:`GradStats` over batches (one task)."""

    def __init__(self, n_blocks: int):
        self.P = torch.zeros(n_blocks, dtype=torch.float64)
        self.V = torch.zeros(n_blocks, dtype=torch.float64)
        self.count = 0
        self.loss = 0.0
        self._signal = 0.0  # running mean and M2 (Welford) of the batches' total signal Σ_b P̂_b
        self._m2 = 0.0

    def add(self, s: GradStats) -> None:
        self.count += 1
        w = 1.0 / self.count
        self.P += w * (s.P - self.P)
        self.V += w * (s.V - self.V)
        self.loss += w * (s.loss - self.loss)
        x = float(s.P.sum())
        delta = x - self._signal
        self._signal += w * delta
        self._m2 += delta * (x - self._signal)

    def signal_t(self) -> float:
        """t-statistic of the total signal Σ_b P̂_b over the batches (inf for one batch with a positive sum)."""
        if self.count < 2:
            return math.inf if self._signal > 0 else -math.inf
        se = math.sqrt(self._m2 / (self.count - 1) / self.count)
        return self._signal / se if se > 0 else math.copysign(math.inf, self._signal)


def half_gradients(loss_fn: Callable[[Sequence], torch.Tensor], blocks: Sequence[Block], batch: Sequence,
                   *, keep_grad: bool = True) -> tuple[GradStats, list[torch.Tensor] | None]:
    """Two half-batch gradients → (:class:`GradStats`, full-batch gradient per block).

    ``torch.autograd.grad`` only: no ``.grad`` is written.  The full-batch
    gradient (m₁g¹ + m₂g²)/m is returned when ``keep_grad`` (else None).
    """
    batch = list(batch)
    m = len(batch)
    if m < 2:
        raise ValueError("half_gradients needs a batch of at least 2 examples")
    m1 = m // 2
    halves = (batch[:m1], batch[m1:])
    params = [b.param for b in blocks]
    grads, losses = [], []
    for h in halves:
        loss = loss_fn(h)
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append([torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)])
        losses.append(float(loss.detach()))
    sizes = (len(halves[0]), len(halves[1]))
    P = torch.empty(len(params), dtype=torch.float64)
    V = torch.empty(len(params), dtype=torch.float64)
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(grads[0], grads[1])):
            a64, b64 = a.double(), b.double()
            x = float((a64 * b64).sum())
            g1, g2 = float((a64 * a64).sum()), float((b64 * b64).sum())
            P[i] = x
            V[i] = 0.5 * (sizes[0] * (g1 - x) + sizes[1] * (g2 - x))
        full = None
        if keep_grad:
            full = grads[0]
            for a, b in zip(full, grads[1]):
                a.mul_(sizes[0] / m).add_(b, alpha=sizes[1] / m)
    loss = (sizes[0] * losses[0] + sizes[1] * losses[1]) / m
    return GradStats(P, V, loss, m), full


def scales_squared(sigma: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """s_b² = c²σ_b² with c² = Σ n_b / Σ n_b σ_b² (differentiable; exactly 1 at σ ≡ 1)."""
    sig2 = sigma.double() ** 2
    n = counts.double()
    return sig2 * (n.sum() / (n * sig2).sum())


def descent_from_moments(s2: torch.Tensor, P: torch.Tensor, B: torch.Tensor, T: torch.Tensor,
                         counts: torch.Tensor, *, lr: float, margin: float = 1.0) -> torch.Tensor:
    """E[L(θ) − L(θ − ηĝ)] to second order for H = blockdiag((T_b/n_b) I):
    η Σ s²P − κη²/2 [(Σ s²B)(Σ s²T) + 2 Σ s⁴ B T / n], with P_b = ⟨∇_b L, E∇_b L_B⟩,
    B_b = E‖∇_b L_B‖², T_b = tr H_bb (exact for such a quadratic when κ = 1)."""
    first = lr * (s2 * P).sum()
    second = (s2 * B).sum() * (s2 * T).sum() + 2.0 * (s2 * s2 * B * T / counts.double()).sum()
    return first - margin * 0.5 * lr * lr * second


def expected_descent(s2: torch.Tensor, P: torch.Tensor, V: torch.Tensor, counts: torch.Tensor, *, lr: float,
                     batch: int, margin: float) -> torch.Tensor:
    """D(s): the expected one-step decrease of the population loss (module docstring): the moments from
    (P, V) at deployment batch ``batch``, curvature T = F = P⁺ + V⁺ (empirical Fisher)."""
    Pp, Vp = P.clamp(min=0.0), V.clamp(min=0.0)
    return descent_from_moments(s2, P, Pp + Vp / batch, Pp + Vp, counts, lr=lr, margin=margin)


def descent_ratio(d: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """r = 1 + (D(s) − D(1))/|D(1)|: D(s)/D(1) when σ ≡ 1 descends, and 1 exactly when D(s) = D(1)."""
    den = d1.abs().clamp(min=1e-300)
    return 1.0 + (d - d1) / den


def log_floor(r: torch.Tensor) -> torch.Tensor:
    """φ(r) = log r for r ≥ R_LOG_FLOOR, linear (C¹) below."""
    r0 = R_LOG_FLOOR
    return torch.where(r >= r0, torch.log(r.clamp(min=r0)), math.log(r0) + (r - r0) / r0)


def allocation_kl(s2: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ p⁰), p_b = n_b s_b²/Σn (the perturbation budget's share), p⁰_b = n_b/Σn; 0 at σ ≡ 1."""
    n = counts.double()
    p = n * s2 / n.sum()
    return (p * torch.log(s2)).sum()


def step_moments(st: StatsMean, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, B, F) of a task's statistics at deployment batch ``batch``: signal, batch energy, curvature."""
    Pp, Vp = st.P.clamp(min=0.0), st.V.clamp(min=0.0)
    return st.P, Pp + Vp / batch, Pp + Vp


def signal_and_cost(s2: torch.Tensor, P: torch.Tensor, B: torch.Tensor, T: torch.Tensor,
                    counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, Q): the first-order descent per unit lr, A = Σ s²P, and the second-order cost per unit lr²,
    Q = (Σ s²B)(Σ s²T) + 2 Σ s⁴ B T / n, so that D(η) = ηA − η²Q/2 (κ = 1)."""
    A = (s2 * P).sum()
    Q = (s2 * B).sum() * (s2 * T).sum() + 2.0 * (s2 * s2 * B * T / counts.double()).sum()
    return A, Q


def best_lr_ratio(A: torch.Tensor, Q: torch.Tensor, A1: torch.Tensor, Q1: torch.Tensor) -> torch.Tensor:
    """r* = D*(s)/D*(1) with D* = max_η (ηA − η²Q/2) = A²/(2Q) for A > 0; signed (a policy whose
    first-order term is negative ascends: r* < 0).  Exactly 1 when (A, Q) = (A1, Q1)."""
    a = A / A1
    return torch.sign(a) * a * a * (Q1 / Q)


@dataclass(frozen=True)
class DescentModel:
    """The closed-form descent model's deployment assumptions (batch ``batch``; ``lr`` and ``margin``
    only for the secondary fixed-lr gain)."""

    lr: float = 1e-5
    batch: int = 16
    margin: float = 2.0

    def metric_name(self) -> str:
        return (f"expected one-step ZO descent of the population loss relative to sigma=1 at the worst lr in "
                f"(0, sigma=1's best lr], min(a, 2a - q) - 1 with a, q the first- and second-order ratios "
                f"(closed form, batch {self.batch}, empirical-Fisher curvature): mean over tasks")

    def terms(self, s2: torch.Tensor, stats: Sequence[StatsMean], counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per task: ``r_star`` (best-lr ratio), ``a`` = A/A₁ (first-order gain), ``q`` = Q/Q₁
        (second-order cost vs MeZO's), ``r_lr`` (the ratio at the fixed fine-tune lr, curvature × margin),
        ``valid`` (A₁ > 0: the task's held-out signal is measurable)."""
        one = torch.ones_like(s2)
        out: dict[str, list] = {k: [] for k in ("robust", "r_star", "a", "q", "r_lr", "valid")}
        for st in stats:
            P, B, T = step_moments(st, self.batch)
            A, Q = signal_and_cost(s2, P, B, T, counts)
            A1, Q1 = signal_and_cost(one, P, B, T, counts)
            a, q = A / A1, Q / Q1
            out["robust"].append(torch.minimum(a, 2.0 * a - q))
            out["r_star"].append(best_lr_ratio(A, Q, A1, Q1))
            out["a"].append(a)
            out["q"].append(q)
            d = self.lr * A - self.margin * 0.5 * self.lr ** 2 * Q
            d1 = self.lr * A1 - self.margin * 0.5 * self.lr ** 2 * Q1
            out["r_lr"].append(descent_ratio(d, d1))
            out["valid"].append(torch.tensor(bool(A1 > 0) and st.signal_t() >= MIN_SIGNAL_T))
        return {k: torch.stack(v) for k, v in out.items()}

    def objective(self, s2: torch.Tensor, stats: Sequence[StatsMean], counts: torch.Tensor) -> torch.Tensor:
        """Mean over tasks of φ(min(a, 2a − q)) where the task's signal is measurable, and of
        −max(0, log q) where it is not: the second-order cost (from gradient energies, always measurable)
        may not rise above MeZO's on a task whose first-order gain cannot be seen."""
        t = self.terms(s2, stats, counts)
        v = t["valid"]
        phi = torch.where(v, log_floor(t["robust"]), -torch.relu(torch.log(t["q"])))
        return phi.mean()


class DescentStepper:
    """One ``descent`` meta-step: half-batch gradients → task statistics →
    ``inner_steps`` Adam steps on J(ω); returns the full-batch gradient for the
    trajectory's FO step."""

    def __init__(self, scorer, policy, blocks: Sequence[Block], counts: torch.Tensor, n_tasks: int, *,
                 model: DescentModel, kl_weight: float, lr: float, inner_steps: int = 5, warmup_steps: int = 10,
                 grad_clip: float = 1.0):
        self.scorer, self.policy, self.blocks, self.counts = scorer, policy, list(blocks), counts.double()
        self.model, self.kl_weight = model, float(kl_weight)
        self.stats = [StatsMean(len(self.blocks)) for _ in range(n_tasks)]
        self.opt = torch.optim.Adam(policy.parameters(), lr=lr)
        self.base_lr, self.inner, self.warmup, self.clip = float(lr), int(inner_steps), int(warmup_steps), grad_clip
        self.calls = 0

    def objective(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(J, per-task terms, KL) at the current ω on the running statistics of the tasks seen so far."""
        seen = [s for s in self.stats if s.count]
        s2 = scales_squared(self.policy(), self.counts)
        kl = allocation_kl(s2, self.counts)
        return self.model.objective(s2, seen, self.counts) - self.kl_weight * kl, \
            self.model.terms(s2, seen, self.counts), kl

    def __call__(self, batch: Sequence, task: int, update: bool = True) -> tuple[list[torch.Tensor], dict]:
        stats, grads = half_gradients(self.scorer.loss, self.blocks, batch)
        self.stats[task].add(stats)
        self.calls += 1
        for grp in self.opt.param_groups:  # linear warm-up of the policy's lr
            grp["lr"] = self.base_lr * min(1.0, self.calls / max(self.warmup, 1))
        grad_norm = 0.0
        for _ in range(self.inner if update else 0):
            self.opt.zero_grad(set_to_none=True)
            J, _, _ = self.objective()
            (-J).backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.clip))
            self.opt.step()
        with torch.no_grad():
            J, terms, kl = self.objective()
            r = terms["robust"]
            sig = self.policy().detach()
            c = float(torch.sqrt(self.counts.sum() / (self.counts * sig.double() ** 2).sum()))
        metrics = {"meta_objective": float(J), "meta_loss": -float(J), "train_gain": float(r.mean()) - 1.0,
                   "kl": float(kl), "fo_loss": stats.loss, "trace_c": c, "sigma_mean": float(sig.mean()),
                   "sigma_min": float(sig.min()), "sigma_max": float(sig.max()), "policy_grad_norm": grad_norm,
                   "grad_energy": float(stats.P.sum()), "grad_variance": float(stats.V.sum())}
        return grads, metrics


class MetaValidation:
    """Held-out batches of the meta-training tasks, their gradient statistics
    taken once (at the weights the model has when this is built: the base
    weights), and the policy's gain over σ ≡ 1 on them."""

    def __init__(self, scorer, blocks: Sequence[Block], sets: Mapping[str, Sequence], batch_size: int,
                 counts: torch.Tensor, model: DescentModel, progress: bool = False):
        from tqdm.auto import tqdm

        self.model, self.counts = model, counts.double()
        self.tasks: list[str] = []
        self.stats: list[StatsMean] = []
        jobs = [(t, list(ex)[i:i + batch_size]) for t, ex in sets.items() for i in range(0, len(ex), batch_size)]
        jobs = [(t, b) for t, b in jobs if len(b) >= 2]
        acc: dict[str, StatsMean] = {}
        for t, b in tqdm(jobs, disable=not progress, desc="meta-val stats", dynamic_ncols=True):
            s, _ = half_gradients(scorer.loss, blocks, b, keep_grad=False)
            acc.setdefault(t, StatsMean(len(blocks))).add(s)
        for t, st in acc.items():
            self.tasks.append(t)
            self.stats.append(st)
        self.batches = {t: st.count for t, st in acc.items()}

    def __bool__(self) -> bool:
        return bool(self.stats)

    @torch.no_grad()
    def evaluate(self, sigma: torch.Tensor) -> dict:
        """``{"gain_over_uniform", "per_task": {task: r − 1}}`` for per-block σ (c applied here)."""
        s2 = scales_squared(sigma, self.counts)
        t = self.model.terms(s2, self.stats, self.counts)
        r, v = t["robust"], t["valid"]
        per = {name: float(x) - 1.0 for name, x in zip(self.tasks, r)}
        mean = float(r[v].mean() if bool(v.any()) else r.mean()) - 1.0  # over the tasks with a measurable signal
        return {"gain_over_uniform": mean, "per_task": per,
                "gain_at_best_lr": {name: float(x) - 1.0 for name, x in zip(self.tasks, t["r_star"])},
                "first_order_gain": {name: float(x) - 1.0 for name, x in zip(self.tasks, t["a"])},
                "cost_ratio": {name: float(x) for name, x in zip(self.tasks, t["q"])},
                "gain_at_finetune_lr": {name: float(x) - 1.0 for name, x in zip(self.tasks, t["r_lr"])},
                "measurable": {name: bool(x) for name, x in zip(self.tasks, t["valid"])}}

    def block_energy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over tasks of (P_b, V_b) normalised per task by Σ_b P⁺_b + V⁺_b/batch: what σ should follow."""
        P = torch.zeros_like(self.counts)
        V = torch.zeros_like(self.counts)
        for st in self.stats:
            z = float((st.P.clamp(min=0) + st.V.clamp(min=0) / self.model.batch).sum()) or 1.0
            P += st.P / z / len(self.stats)
            V += st.V / z / len(self.stats)
        return P, V
