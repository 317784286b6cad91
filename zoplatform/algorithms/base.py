"""The ZO method interface and the pieces methods are composed of.

A method is ``init`` + ``step`` over explicit state (the optax/evosax shape):

    state = method.init(blocks)
    state, record = method.step(state, blocks, closure, seed, lr)

``closure()`` runs one forward pass on the current (perturbed) parameters and
returns the loss; the method calls it as often as it needs.  ``record`` is a
:class:`~zoplatform.types.StepRecord` — (seed, losses, lr) — and
``method.replay(state, blocks, record)`` re-applies the step from it without
forward passes, executing exactly the same in-place arithmetic, so a replayed
trajectory is bit-identical to the trained one.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from ..config import StrictModel, validate
from ..params import Block, Scratch, axpy_, one_sided_, two_point_
from ..rng import make_law
from ..types import StepRecord
from .state import State

Closure = Callable[[], Any]


def as_float(loss: Any) -> float:
    """A closure's loss as a Python float (accepts tensors and numbers)."""
    return float(loss.detach().float().item()) if hasattr(loss, "detach") else float(loss)


Law = Literal["gaussian", "rademacher", "pool"]


class ZOConfig(StrictModel):
    """The hyperparameters every ZO method has; a method's config subclasses this (or
    :class:`SPSAConfig`) and adds its own, overriding a default where its paper differs."""

    lr: float = Field(1e-6, gt=0, description="learning rate η (the loop's schedule scales it)")
    eps: float = Field(1e-3, gt=0, description="perturbation scale ε")
    weight_decay: float = Field(0.0, ge=0, description="λ, applied to decayed blocks only")
    chunk_size: int = Field(1 << 20, ge=1024, description="elements generated per chunk (scratch memory)")


class SPSAConfig(ZOConfig):
    """A method whose directions come from a choice of law (all but LOREN's own sampler)."""

    direction: Law = Field("gaussian", description="law of z: the papers' Gaussian, or an explicit speed lever "
                                                   "(rademacher, pool)")


class RecordedClosure:
    """Stands in for the model during replay: returns the recorded losses in order."""

    def __init__(self, losses: Sequence[float]):
        self._it = iter(losses)

    def __call__(self) -> float:
        return next(self._it)


class ZOMethod:
    """Base class of registered ZO methods.

    Subclasses set ``name``, ``Config`` (a :class:`StrictModel` of
    hyperparameters), ``paper`` and implement ``step``.
    """

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    Config: ClassVar[type[ZOConfig]]
    State: ClassVar[type[State]] = State  # the method's frozen state (:mod:`zoplatform.algorithms.state`)

    def __init__(self, config: ZOConfig | None = None, **hyper: Any):
        if config is None:
            config = validate(self.Config, hyper, self.name)
        self.config = config
        self.law = make_law(config.direction if isinstance(config, SPSAConfig) else "gaussian")
        self.scratch = Scratch(config.chunk_size)

    # -- the interface ----------------------------------------------------
    def init(self, blocks: Sequence[Block]) -> State:
        """Initial method state (a frozen :class:`State`; the method object keeps none)."""
        return self.State()

    def step(self, state: State, blocks: Sequence[Block], closure: Closure, seed: int, lr: float):
        """One step: returns ``(new state, StepRecord)``; ``state`` itself is left as it was (but for
        the buffers its class lists in ``donated``)."""
        raise NotImplementedError

    def replay(self, state: State, blocks: Sequence[Block], record: StepRecord) -> State:
        """Re-apply a recorded step (no forward passes)."""
        state, _ = self.step(state, blocks, RecordedClosure(record.losses), record.seed, record.lr)
        return state

    @property
    def forwards_per_step(self) -> int:
        return 2

    def block_table(self, state: State, blocks: Sequence[Block]) -> list[dict]:
        """End-of-run numbers per block (one flat dict per row), for the pipelines to write and draw
        (``pipelines/finetune/method_reports.py``); the library itself draws nothing.  Default: none."""
        return []

    # -- shared pieces ----------------------------------------------------
    def perturb(self, blocks, seed, alpha, **kw) -> None:
        """θ ← θ + alpha · u(seed) on ``blocks``."""
        kw.setdefault("law", self.law)
        axpy_(blocks, seed, kw.pop("law"), self.scratch, alpha, **kw)

    def two_point(self, blocks, seed, closure: Closure, scale=None, law=None, first_law=None,
                  stream: int = 0) -> tuple[float, float]:
        """L(θ + εu), L(θ − εu) on one batch, u_b = s_b·z_b (``scale`` s, optional); leaves θ at θ − εu
        for :meth:`restore_update`.  ``law``: one direction law or one per block (default: the
        method's); ``first_law``: the laws of the first pass if they differ (e.g. one that also
        measures ‖z‖², or one that builds a mask).  See :func:`~zoplatform.params.two_point_`."""
        law = self.law if law is None else law
        lp, lm = two_point_(blocks, seed, law, self.scratch, lambda: as_float(closure()), self.config.eps,
                            scale=scale, stream=stream, first_law=first_law)
        return lp, lm

    def one_sided(self, blocks, seed, closure: Closure, stream: int = 0, restore: bool = True,
                  law=None) -> tuple[float, list[float]]:
        """L(θ + εu) with u from ``stream``; (loss, pending ε per block) — see
        :func:`~zoplatform.params.one_sided_`."""
        loss, pending = one_sided_(blocks, seed, self.law if law is None else law, self.scratch, closure,
                                   self.config.eps, stream=stream, restore=restore)
        return as_float(loss), pending

    def restore_update(self, blocks, seed, lr: float, g: float | None = None, *, steps=None, scale=None,
                       law=None, stream: int = 0) -> None:
        """Restore and SGD step fused into one pass over the directions, from θ' = θ − εu:

            θ_b ← β_b·θ'_b + (ε·β_b − η·g)·s_b·z_b,   β_b = 1 − η·λ (decayed blocks) else 1

        i.e. θ_b ← β_b·θ_b − η·g·u_b with g the projected gradient; ``steps`` gives η·g_b per
        block instead (e.g. CurvZO's ηΔ/π̃_b)."""
        eps, wd = self.config.eps, self.config.weight_decay
        steps = [lr * g] * len(blocks) if steps is None else list(steps)
        betas = [1.0 - lr * wd if b.decay else 1.0 for b in blocks]
        alphas = [eps * beta - st for beta, st in zip(betas, steps)]
        axpy_(blocks, seed, self.law if law is None else law, self.scratch, alphas, beta=betas, scale=scale,
              stream=stream)
