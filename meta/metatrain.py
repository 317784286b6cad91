"""Meta-training of the ZO Fine-tuner policy ("learning to learn", §5.2).

Zhang, Li, Zhao, Sun, Zhang, *ZO Fine-tuner*, ICML 2026, arXiv:2510.00419.
Spec: ``docs/algorithms.md`` §5.2.  Needs first-order memory, once per base
model; the policy it returns is then reused frozen by the ``zo-finetuner``
method on any task.

Two profiles share the trajectory (FO SGD with restarts), the task mixture,
the meta-validation and the policy file format:

* ``paper`` — the paper's meta-step below, faithfully.  It does **not** learn
  (§5.4): the meta-gradient carries η_u = 1e-6, so ω stays at its random
  initialisation (‖ω−ω₀‖/‖ω₀‖ = 7.5e-5 after 100 steps on SmolLM2-135M/COPA).
* ``descent`` — [departure] a per-block scale σ_b fitted to the closed-form
  expected descent of the deployed ZO step (``meta/descent.py``), from the
  trajectory's own gradients; no η_u, no sampled directions.

Meta-validation (both profiles): before the trajectory starts, gradient
statistics of held-out batches of every meta-training task (its dev split,
sampled from the train split; never a test set) at the base weights; after
every epoch the policy's σ at the base weights is scored by the gain over
σ ≡ 1 of the expected one-step ZO descent at the fine-tune lr
(:class:`meta.descent.MetaValidation`), with the policy's movement
‖ω−ω₀‖/‖ω₀‖.  ``select="best"`` keeps the epoch with the highest gain if it
beats the initial policy's (epoch 0), else the initial policy: never a policy
meta-validation scored below its start (``MetaResult.selection`` says which).

Algorithm of the ``paper`` profile (per batch B of the FO trajectory θ_t)::

    σ = PertNN_ω(mean θ_b, var θ_b, L⁺_{t−1}, L⁻_{t−1}, σ_{t−1})      (grad to ω)
    c = sqrt(Σ n_b / Σ n_b σ_b²)                                      (detached)
    z ~ N(0, I) per block from the step seed (the library's streams)
    L± = L(θ ± ε c σ z; B)                                            (no grad)
    g  = (L⁺ − L⁻) / (2ε)                                             (detached)
    θ' = θ − η_u · g · c · σ(ω) · z                                   (only σ carries grad)
    meta_loss = L(θ'; B);  backprop to ω;  SGD(ω, lr_mlp) step
    θ ← FO step: SGD(θ, lr_llm, momentum 0.8) on L(θ; B)                (the "trajectory")
    every ``restart`` epochs: θ ← base weights, fresh momentum, the FO lr
    decays linearly from lr_llm to 0 over each restart period

θ' is evaluated with ``torch.func.functional_call`` on a dict built from the
current (detached) θ tensors: the model is never copied and θ receives no
gradient from the meta step (checked every step).  The meta-gradient is
first-order in σ's effect on θ' only: like the paper's code it ignores how
L⁺ − L⁻ depends on σ.

Task mixtures (multi-task meta-training): each step takes a single-task batch
(prompts and candidate sets differ per task).  ``mixture="round_robin"``
(default) cycles through the tasks in the given order, each task walking its
own seeded epoch permutations; ``"proportional"`` draws the task of each step
with probability ∝ its train-set size (from the step seed, so reproducible).

[recon] choices: the policy state (previous losses, σ) is reset at every
restart; the model runs in ``eval()`` mode for every pass (dropout off, as the
ZO passes require); an epoch is ``ceil(Σ_t |train_t| / batch_size)`` steps
unless ``steps_per_epoch`` is given; embedding rows default to 15·batch_size
(the paper's 15·batch·world on one device).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from meta.descent import DescentModel, DescentStepper, MetaValidation
from meta.policy import PerturbationPolicy, PolicyState, ScalePolicy, policy_sigma_at
from meta.report import effective_scales, initial_policy, sharing_groups, sigma_by_type, write_policy_report
from zoplatform.config import StrictModel
from zoplatform.params import Block, Scratch, model_blocks
from zoplatform.policy import (
    block_stats,
    direction_tensor,
    effective_counts,
    embedding_block_names,
    policy_features,
    trace_scale,
)
from zoplatform.rng import generator, make_law, step_seed
from zoplatform.types import Example


class MetaTrainConfig(StrictModel):
    """Meta-training knobs; defaults are the paper's single-task script (Llama-3.2-1B on COPA)."""

    tasks: list[str] = Field(default_factory=lambda: ["copa"], min_length=1,
                             description="meta-training task(s); several = a task mixture")
    epochs: int = Field(15, ge=1, description="epochs of the FO trajectory")
    restart: int = Field(5, ge=1, description="reset θ to the base weights every this many epochs")
    steps_per_epoch: int | None = Field(None, ge=1, description="default: ceil(total train examples / batch_size)")
    num_train: int = Field(1000, ge=1, description="train examples per task (capped by the task's train split)")
    num_dev: int = Field(50, ge=0, description="dev examples per task (mean dev loss of θ logged per epoch; 0: off)")
    batch_size: int = Field(8, ge=1, le=65536, description="meta-batch (also at most every task's train "
                                                             "examples: pipelines/meta_train.py checks)")
    lr_mlp: float = Field(0.1, gt=0, description="SGD learning rate of the policy ω")
    eta_u: float = Field(1e-6, gt=0, description="η_u: the virtual ZO step size inside the meta-loss")
    lr_llm: float = Field(0.01, gt=0, description="FO SGD learning rate of the trajectory θ (linear decay per "
                                                  "restart); default 0.01 (paper) or 1e-3 (descent)")
    momentum: float = Field(0.8, ge=0, lt=1, description="FO SGD momentum")
    eps: float = Field(1e-3, gt=0, description="ε of the two-point estimate")
    seed: int = Field(0, ge=0, description="data order, ZO directions and policy init")
    direction: Literal["gaussian", "rademacher", "pool"] = Field("gaussian", description="law of the ZO directions "
                                                                                 "(paper profile)")
    chunk_size: int = Field(1 << 20, ge=1024, description="elements per chunk of the direction generation")
    embedding_rows: int | None = Field(None, ge=1, description="rows an embedding counts as in the normalisation; default: 15 · batch_size")
    embedding_pattern: str | None = Field(None, description="regex of extra embedding names "
                                                               "(nn.Embedding modules are always detected)")
    mixture: Literal["round_robin", "proportional"] = Field(
        "round_robin", description="task of each step in a mixture: in turn, or drawn by train-set size")
    profile: Literal["paper", "descent"] = Field(
        "descent", description="paper: the paper's η_u lookahead (does not learn, §5.4); descent: a per-block "
                               "scale fitted to the closed-form expected ZO descent (meta/descent.py)")
    select: Literal["best", "last"] = Field("best", description="keep the epoch with the best meta-val gain "
                                                                "(the initial policy if no epoch beats it), "
                                                                "or the last epoch")
    # -- the descent profile's knobs (and the meta-val metric's deployment assumptions, both profiles) --
    finetune_lr: float = Field(1e-5, gt=0, description="η of the deployment the expected descent is computed at "
                                                       "(use the lr you fine-tune with)")
    finetune_batch: int = Field(16, ge=1, description="deployment batch size (minibatch noise of the ZO step)")
    curvature_margin: float = Field(2.0, gt=0, description="κ: inflation of the empirical-Fisher curvature")
    kl_weight: float = Field(1.0, ge=0, description="β: weight of KL(p‖p⁰) of the perturbation budget's shares")
    sigma_bound: float = Field(10.0, gt=1, description="σ_b ∈ [1/bound, bound] (descent profile)")
    sharing: Literal["type_depth", "type", "block"] = Field(
        "type_depth", description="descent: blocks sharing one scale — per block type and third of the depth "
                                  "(default), per type, or none (block)")
    policy_lr: float = Field(0.05, gt=0, description="Adam learning rate of the descent policy's log-scales")
    inner_steps: int = Field(5, ge=1, description="Adam steps on the closed-form objective per meta-step")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up of policy_lr over this many meta-steps")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip of the policy's Adam steps")

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data):
        # the paper's FO lr (0.01) sends SmolLM2-135M's SGD trajectory to losses of 10-20 within a few steps
        # (measured), and the descent profile's statistics must describe states a fine-tune visits
        if isinstance(data, dict) and data.get("lr_llm") is None:
            data = {**data, "lr_llm": 0.01 if data.get("profile", "descent") == "paper" else 1e-3}
        return data

    @model_validator(mode="after")
    def _descent_batches(self):
        if self.profile == "descent" and self.batch_size < 2:
            raise ValueError(f"profile 'descent' splits each batch in two halves: batch_size must be >= 2, "
                             f"got {self.batch_size}")
        return self

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, v):
        v = [t.strip().lower() for t in v if t.strip()]
        if not v:
            raise ValueError("needs at least one task")
        if len(set(v)) != len(v):
            raise ValueError(f"tasks must be distinct, got {v}")
        return v


# The paper's two scripts.  "multi": SST-2 + COPA + SQuAD in fp16 in the paper;
# SQuAD is generative (not a task here), so the preset mixes SST-2 and COPA in fp32.
PRESETS: dict[str, dict[str, Any]] = {
    "single": {"tasks": ["copa"], "lr_mlp": 0.1, "epochs": 15, "restart": 5, "eta_u": 1e-6, "lr_llm": 0.01,
               "batch_size": 8, "num_train": 1000, "num_dev": 50, "eps": 1e-3},
    "multi": {"tasks": ["sst2", "copa"], "lr_mlp": 0.05, "epochs": 6, "restart": 2, "eta_u": 1e-6, "lr_llm": 0.05,
              "batch_size": 8, "num_train": 1000, "num_dev": 50, "eps": 1e-3},
}


class _Objective(torch.nn.Module):
    """``forward(batch) = scorer.loss(batch)`` with the LM as submodule ``lm``, so
    ``functional_call`` can swap the LM's tensors for a dict of our own."""

    def __init__(self, model: torch.nn.Module, scorer):
        super().__init__()
        self.lm = model
        self._scorer = [scorer]  # a list: not registered as a submodule

    def forward(self, batch):
        return self._scorer[0].loss(batch)


class MetaStepper:
    """One meta step (σ → L± → θ' → meta-loss → ω update) on the current θ."""

    def __init__(self, model, scorer, policy: PerturbationPolicy, blocks: Sequence[Block], counts: torch.Tensor,
                 *, eps: float, eta_u: float, lr_mlp: float, direction: str = "gaussian",
                 chunk_size: int = 1 << 20):
        self.objective = _Objective(model, scorer)
        self.policy, self.blocks, self.counts = policy, list(blocks), counts
        self.eps, self.eta_u = eps, eta_u
        self.law, self.scratch = make_law(direction), Scratch(chunk_size)
        self.opt = torch.optim.SGD(policy.parameters(), lr=lr_mlp)

    def loss_at(self, tensors: Mapping[str, torch.Tensor], batch: Sequence[Example]) -> torch.Tensor:
        """L(θ̃; batch) with the blocks replaced by ``tensors`` (others, and tied aliases, follow)."""
        from torch.func import functional_call

        return functional_call(self.objective, {f"lm.{k}": v for k, v in tensors.items()}, (list(batch),))

    def __call__(self, batch: Sequence[Example], state: PolicyState, seed: int,
                 update: bool = True) -> tuple[PolicyState, dict[str, float]]:
        blocks = self.blocks
        for b in blocks:  # so that "θ received no gradient" below is checkable (the FO step sets its own)
            b.param.grad = None
        # 1. σ(ω) from the current θ and the recurrent state; c detached
        x = policy_features(block_stats(blocks), state.prev_losses, state.prev_sigma)
        sigma = self.policy(x)
        c = trace_scale(sigma.detach(), self.counts)
        s = (c * sigma.detach().double()).tolist()
        zs = [direction_tensor(b, seed, self.law, self.scratch) for b in blocks]
        # 2. two-point estimate at θ ± ε c σ z (no grad anywhere)
        with torch.no_grad():
            lp = float(self.loss_at({b.name: b.param + (self.eps * s[i]) * zs[i] for i, b in enumerate(blocks)},
                                    batch))
            lm = float(self.loss_at({b.name: b.param - (self.eps * s[i]) * zs[i] for i, b in enumerate(blocks)},
                                    batch))
        g = (lp - lm) / (2.0 * self.eps)
        # 3. virtual ZO step θ' = θ − η_u g c σ(ω) z: θ detached, only σ carries grad
        k = self.eta_u * g * c
        theta_prime = {b.name: b.param.detach() - (k * sigma[i]) * zs[i] for i, b in enumerate(blocks)}
        meta_loss = self.loss_at(theta_prime, batch)
        # 4. backprop to ω only
        self.opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        leaked = [b.name for b in blocks if b.param.grad is not None]
        assert not leaked, f"meta step leaked gradient into θ: {leaked[:3]}"
        grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.policy.parameters()
                                         if p.grad is not None)))
        if update:
            self.opt.step()
        sig = sigma.detach()
        metrics = {"meta_loss": float(meta_loss.detach()), "loss_plus": lp, "loss_minus": lm,
                   "projected_grad": g, "trace_c": c, "sigma_mean": float(sig.mean()),
                   "sigma_min": float(sig.min()), "sigma_max": float(sig.max()), "policy_grad_norm": grad_norm}
        return PolicyState(torch.tensor([lp, lm], dtype=torch.float64), sig.clone()), metrics


@dataclass
class MetaResult:
    policy: PerturbationPolicy | ScalePolicy
    history: dict[str, list[float]] = field(default_factory=dict)
    dev: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_s: float = 0.0
    artifacts: list[Path] = field(default_factory=list)
    # ‖ω − ω₀‖ / ‖ω₀‖: how far meta-training moved the policy from its initialisation (the kept epoch's)
    policy_change: float = 0.0
    profile: str = "paper"
    # per epoch (epoch 0 = the initial policy): gain over σ ≡ 1 on the held-out batches, per task, movement
    meta_val: list[dict[str, Any]] = field(default_factory=list)
    meta_val_metric: str = ""
    best_epoch: int | None = None
    initial_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    # per block type: geometric mean of c·σ at the initialisation and learned (meta.report.sigma_by_type)
    sigma_by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    # which epoch was kept and why, in words ("" without meta-validation); epoch 0 = the initial policy kept
    selection: str = ""


def batch_schedule(sizes: Sequence[int], batch_size: int, seed: int, mixture: str):
    """``next_batch(step) -> (task index, example indices)``; a pure function of
    (sizes, seed, step history) — each task walks its own seeded permutations."""
    from zoplatform.loop import batch_indices

    counters = [0] * len(sizes)
    total = float(sum(sizes))

    def next_batch(step: int) -> tuple[int, list[int]]:
        if mixture == "round_robin":
            t = step % len(sizes)
        else:
            u = float(torch.rand(1, generator=generator(step_seed(seed ^ 0x313C, step)), dtype=torch.float64))
            acc, t = 0.0, len(sizes) - 1
            for i, n in enumerate(sizes):
                acc += n / total
                if u < acc:
                    t = i
                    break
        idx = batch_indices(sizes[t], batch_size, seed + 7919 * t, counters[t])
        counters[t] += 1
        return t, idx

    return next_batch


def meta_train(model, scorer, train_sets: Mapping[str, Sequence[Example]], cfg: MetaTrainConfig, *,
               dev_sets: Mapping[str, Sequence[Example]] | None = None, tracker=None, base_model: str = "",
               out_dir: str | Path | None = None, progress: bool = False,
               on_step: Callable[[int, dict], None] | None = None) -> MetaResult:
    """Meta-train a policy for ``model`` (fp32, trainable parameters = the blocks).

    ``model`` is left at the end of the trajectory (not the base weights).
    ``dev_sets``: held-out examples per task — the dev loss of θ per epoch and
    the meta-validation batches (taken at the base weights, before any step).
    ``tracker``: a zoplatform Tracker (metrics per step, flushed per epoch).
    """
    from tqdm.auto import tqdm

    run = _MetaRun(model, scorer, train_sets, cfg, dev_sets=dev_sets, tracker=tracker, base_model=base_model,
                   progress=progress)
    bar = tqdm(total=cfg.epochs * run.steps_per_epoch, disable=not progress, desc=f"meta ({cfg.profile})",
               dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        if epoch % cfg.restart == 0:
            run.restart()
        for _ in range(run.steps_per_epoch):
            m = run.train_step(epoch)
            if on_step is not None:
                on_step(run.step, m)
            bar.update(1)
            bar.set_postfix(meta=f"{m['meta_loss']:.4g}", sigma=f"{m['sigma_mean']:.3g}", refresh=False)
        run.end_epoch(epoch)
    bar.close()
    return run.finish(out_dir)


class _MetaRun:
    """One meta-training run's state: the blocks and their base weights, the policy and its stepper, the FO
    trajectory (optimizer, restart counter, policy state) and the meta-validation with the best epoch so far."""

    def __init__(self, model, scorer, train_sets, cfg: MetaTrainConfig, *, dev_sets, tracker, base_model,
                 progress):
        self.t0 = time.perf_counter()
        model.eval()
        blocks = model_blocks(model)
        if not blocks:
            raise ValueError("meta_train: the model has no trainable parameters")
        self.cfg, self.scorer, self.blocks, self.tracker, self.base_model = cfg, scorer, blocks, tracker, base_model
        emb = embedding_block_names(model, cfg.embedding_pattern)
        layout = [(b.name, list(b.param.shape), b.name in emb) for b in blocks]
        rows = cfg.embedding_rows or 15 * cfg.batch_size
        self.counts = torch.tensor(effective_counts([s for _, s, _ in layout], [e for *_, e in layout], rows),
                                   dtype=torch.float64)
        self.names = [t for t in cfg.tasks if t in train_sets]
        self.sets = [list(train_sets[t]) for t in self.names]
        self.dev_sets = dev_sets
        descent = DescentModel(lr=cfg.finetune_lr, batch=cfg.finetune_batch, margin=cfg.curvature_margin)
        self.policy, self.stepper = self._policy_and_stepper(model, layout, rows, descent)
        self.base = [b.param.detach().clone() for b in blocks]
        self.omega0 = {k_: v.detach().clone() for k_, v in self.policy.weights().items()}
        # meta-validation statistics at the base weights (held-out batches of the meta-training tasks)
        val_sets = {n: list(dev_sets[n]) for n in self.names if dev_sets and dev_sets.get(n)} if dev_sets else {}
        self.metaval = MetaValidation(scorer, blocks, val_sets, cfg.batch_size, self.counts, descent,
                                      progress=progress) if val_sets else None
        self.result = MetaResult(self.policy, profile=cfg.profile, initial_weights=self.omega0)
        self.result.meta_val_metric = descent.metric_name()
        mv = self.metaval
        self.val_loss = float(sum(st.loss * st.count for st in mv.stats) / sum(st.count for st in mv.stats)) \
            if mv else 0.0
        sizes = [len(s) for s in self.sets]
        self.steps_per_epoch = cfg.steps_per_epoch or math.ceil(sum(sizes) / cfg.batch_size)
        self.period = cfg.restart * self.steps_per_epoch
        self.next_batch = batch_schedule(sizes, cfg.batch_size, cfg.seed, cfg.mixture)
        self.state = PolicyState.fresh(len(blocks))
        self.fo_opt = None
        self.k = 0
        self.step = 0
        row0 = self.validate(0)
        # select="best" starts from the initial policy: an epoch is kept only if it beats it (never a worse policy)
        self.best: tuple[float, int, dict] | None = None if row0 is None else (
            row0["gain_over_uniform"], 0, self._policy_copy())

    def _policy_and_stepper(self, model, layout, rows, descent):
        cfg, blocks = self.cfg, self.blocks
        if cfg.profile == "paper":
            policy: PerturbationPolicy | ScalePolicy = PerturbationPolicy(layout, base_model=self.base_model,
                                                                          embedding_rows=rows, seed=cfg.seed)
            return policy, MetaStepper(model, self.scorer, policy, blocks, self.counts, eps=cfg.eps,
                                       eta_u=cfg.eta_u, lr_mlp=cfg.lr_mlp, direction=cfg.direction,
                                       chunk_size=cfg.chunk_size)
        policy = ScalePolicy(layout, base_model=self.base_model, embedding_rows=rows, bound=cfg.sigma_bound,
                             groups=sharing_groups([n for n, *_ in layout], cfg.sharing), sharing=cfg.sharing)
        return policy, DescentStepper(self.scorer, policy, blocks, self.counts, len(self.names), model=descent,
                                      kl_weight=cfg.kl_weight, lr=cfg.policy_lr, inner_steps=cfg.inner_steps,
                                      warmup_steps=cfg.warmup_steps, grad_clip=cfg.grad_clip)

    def _policy_copy(self) -> dict:
        return {k_: v.detach().clone() for k_, v in self.policy.state_dict().items()}

    def validate(self, epoch: int) -> dict[str, Any] | None:
        """Score the policy's σ at the base weights on the meta-validation batches (None without them)."""
        if not self.metaval:
            return None
        sig = policy_sigma_at(self.policy, base_blocks(self.blocks, self.base), self.val_loss)
        row = {"epoch": epoch, **self.metaval.evaluate(sig),
               "policy_rel_change": relative_change(self.policy.weights(), self.omega0)}
        self.result.meta_val.append(row)
        if self.tracker is not None:
            self.tracker.log_metrics({"meta_val_gain": row["gain_over_uniform"],
                                      "policy_rel_change": row["policy_rel_change"],
                                      **{f"meta_val_gain_{t}": v for t, v in row["per_task"].items()}}, self.step)
        return row

    def restart(self) -> None:
        """Restart the trajectory from the base weights: keeps high-loss states in the meta-train distribution."""
        with torch.no_grad():
            for b, w in zip(self.blocks, self.base):
                b.param.copy_(w)
        self.fo_opt = torch.optim.SGD([b.param for b in self.blocks], lr=self.cfg.lr_llm,
                                      momentum=self.cfg.momentum)
        self.state, self.k = PolicyState.fresh(len(self.blocks)), 0

    def train_step(self, epoch: int) -> dict[str, float]:
        """One meta step on ω and one FO step on θ; returns the step's metrics (logged and kept in history)."""
        cfg, fo_opt = self.cfg, self.fo_opt
        t, idx = self.next_batch(self.step)
        batch = [self.sets[t][i] for i in idx]
        lr = cfg.lr_llm * (1.0 - self.k / self.period)  # linear FO lr decay within the restart period
        for grp in fo_opt.param_groups:
            grp["lr"] = lr
        fo_opt.zero_grad(set_to_none=True)
        if cfg.profile == "paper":
            # meta step on ω at the current θ, then one FO step on θ
            self.state, m = self.stepper(batch, self.state, step_seed(cfg.seed, self.step))
            fo_loss = self.scorer.loss(batch)
            fo_loss.backward()
            m["fo_loss"] = float(fo_loss.detach())
        else:
            # half-batch gradients → statistics → ω; the FO step reuses the full-batch gradient
            grads, m = self.stepper(batch, t)
            for b, g in zip(self.blocks, grads):
                b.param.grad = g
        fo_opt.step()
        fo_opt.zero_grad(set_to_none=True)
        m.update({"lr_llm": lr, "epoch": epoch, "task_index": t})
        for key, v in m.items():
            self.result.history.setdefault(key, []).append(float(v))
        self.step, self.k = self.step + 1, self.k + 1
        if self.tracker is not None:
            self.tracker.log_metrics(m, self.step)
        return m

    def end_epoch(self, epoch: int) -> None:
        """The dev loss of θ per task, then meta-validation (keeping the best epoch's policy)."""
        from zoplatform.loop import evaluate

        dev_sets, names = self.dev_sets, self.names
        if dev_sets and any(dev_sets.get(n) for n in names):
            row: dict[str, float] = {"epoch": epoch + 1}
            for n in names:
                if dev_sets.get(n):
                    row[f"dev_loss_{n}"] = evaluate(self.scorer, list(dev_sets[n]), 32).loss
            self.result.dev.append(row)
            if self.tracker is not None:
                self.tracker.log_metrics({k_: v for k_, v in row.items() if k_ != "epoch"}, self.step)
        vrow = self.validate(epoch + 1)
        if vrow is not None and (self.best is None or vrow["gain_over_uniform"] > self.best[0]):
            self.best = (vrow["gain_over_uniform"], epoch + 1, self._policy_copy())
        if self.tracker is not None:
            self.tracker.flush()

    def finish(self, out_dir) -> MetaResult:
        """Keep the selected epoch's policy, summarise its scales, write the report; the result."""
        cfg, result, policy, blocks = self.cfg, self.result, self.policy, self.blocks
        if cfg.select == "best" and self.best is not None:
            policy.load_state_dict(self.best[2])
            result.best_epoch = self.best[1]
            result.selection = selection_note(result.meta_val, self.best[1])
        elif result.meta_val:
            result.best_epoch = cfg.epochs
            result.selection = f"last epoch ({cfg.epochs}) kept (select=last)"
        result.steps, result.wall_s = self.step, time.perf_counter() - self.t0
        result.policy_change = relative_change(policy.weights(), self.omega0)
        bb = base_blocks(blocks, self.base)
        result.sigma_by_type = sigma_by_type(
            [b.name for b in blocks],
            effective_scales(initial_policy(policy, self.omega0), bb, self.counts, self.val_loss),
            effective_scales(policy, bb, self.counts, self.val_loss))
        if out_dir is not None:
            result.artifacts = write_policy_report(policy, blocks, self.base, self.counts, self.omega0,
                                                   Path(out_dir), metaval=self.metaval, val_loss=self.val_loss,
                                                   title=self.base_model)
        return result


def selection_note(meta_val: Sequence[Mapping[str, Any]], kept: int) -> str:
    """In words, which epoch ``select="best"`` kept: the best epoch that beat the initial policy's
    meta-val gain, or the initial policy (epoch 0) when none did."""
    g0 = meta_val[0]["gain_over_uniform"]
    if kept == 0:
        later = [r for r in meta_val[1:] if not math.isnan(r["gain_over_uniform"])]
        top = max(later, key=lambda r: r["gain_over_uniform"], default=None)
        best = f" (best epoch {top['epoch']}: {top['gain_over_uniform']:+.3g})" if top else ""
        return f"initial policy kept: no epoch's meta-val gain beat the initial policy's {g0:+.3g}{best}"
    g = next(r["gain_over_uniform"] for r in meta_val if r["epoch"] == kept)
    return f"epoch {kept} kept: best meta-val gain {g:+.3g}, above the initial policy's {g0:+.3g}"


def base_blocks(blocks: Sequence[Block], base: Sequence[torch.Tensor]) -> list[Block]:
    return [Block(b.name, w, b.decay, b.key) for b, w in zip(blocks, base)]


@torch.no_grad()
def relative_change(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """‖w − w₀‖ / ‖w₀‖ over all tensors (the meta-gradient through η_u is small: at a reduced budget the
    policy can stay at its initialisation, and this says so)."""
    num = sum(float(((weights[k] - start[k]) ** 2).sum()) for k in start)
    den = sum(float((start[k] ** 2).sum()) for k in start)
    return math.sqrt(num / den) if den > 0 else math.inf
