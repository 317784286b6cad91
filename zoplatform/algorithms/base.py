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
from typing import Any, ClassVar

from ..config import StrictModel, validate
from ..params import Block, Scratch, axpy_
from ..rng import make_law
from ..types import StepRecord

Closure = Callable[[], Any]


def as_float(loss: Any) -> float:
    """A closure's loss as a Python float (accepts tensors and numbers)."""
    return float(loss.detach().float().item()) if hasattr(loss, "detach") else float(loss)


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
    Config: ClassVar[type[StrictModel]]

    def __init__(self, config: StrictModel | None = None, **hyper: Any):
        if config is None:
            config = validate(self.Config, hyper, self.name)
        self.config = config
        self.law = make_law(getattr(config, "direction", "gaussian"))
        self.scratch = Scratch(getattr(config, "chunk_size", 1 << 20))

    # -- the interface ----------------------------------------------------
    def init(self, blocks: Sequence[Block]) -> dict:
        """Initial method state (plain dict of tensors and numbers)."""
        return {}

    def step(self, state: dict, blocks: Sequence[Block], closure: Closure, seed: int, lr: float):
        raise NotImplementedError

    def replay(self, state: dict, blocks: Sequence[Block], record: StepRecord) -> dict:
        """Re-apply a recorded step (no forward passes)."""
        state, _ = self.step(state, blocks, RecordedClosure(record.losses), record.seed, record.lr)
        return state

    @property
    def forwards_per_step(self) -> int:
        return 2

    def report(self, state: dict, blocks: Sequence[Block], out_dir) -> list:
        """End-of-run artifacts (plots, tables) written under ``out_dir``; the
        recipe logs every returned path to the run.  Default: none."""
        return []

    # -- shared pieces ----------------------------------------------------
    def perturb(self, blocks, seed, alpha, **kw) -> None:
        """θ ← θ + alpha · u(seed) on ``blocks``."""
        axpy_(blocks, seed, self.law, self.scratch, alpha, **kw)


def two_point(closure: Closure, perturb: Callable[[float], None], eps: float) -> tuple[float, float]:
    """SPSA's two evaluations on one batch: L(θ+εu), then L(θ−εu).

    Leaves the parameters at θ − εu: the caller fuses the restore (+εu) with
    its update, saving one pass over the random directions.
    """
    perturb(eps)
    loss_plus = as_float(closure())
    perturb(-2.0 * eps)
    loss_minus = as_float(closure())
    return loss_plus, loss_minus
