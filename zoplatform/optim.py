"""``torch.optim.Optimizer`` adapter: any registered ZO method in a user's loop.

>>> import torch, zoplatform
>>> model = torch.nn.Linear(4, 1)
>>> opt = zoplatform.optimizer("mezo", model.named_parameters(), lr=1e-2, eps=1e-3)
>>> x, y = torch.randn(8, 4), torch.randn(8, 1)
>>> loss = opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))

``step(closure)`` calls the closure (forward only: it runs under
``torch.no_grad``, nothing calls ``backward``) as often as the method needs and
returns the first loss it measured.  The learning rate is read from
``param_groups[0]["lr"]`` each step, so torch LR schedulers work unchanged.
``state_dict()`` holds the method state, the run seed and the step count (and torch's
``param_groups``);
together with the model weights it resumes a run exactly.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .params import blocks_from_named, load_
from .precision import check_precision, is_mixed, with_masters
from .registry import get_method
from .rng import step_seed
from .trajectory import Trajectory, layout_digest, values_digest
from .types import StepRecord


def _named(params: Iterable) -> list[tuple[str, torch.Tensor]]:
    items = list(params)
    if items and isinstance(items[0], dict):
        raise TypeError("ZOOptimizer takes one parameter group: pass tensors or (name, tensor) pairs")
    if items and isinstance(items[0], tuple):
        return [(str(n), p) for n, p in items]
    return [(f"param.{i}", p) for i, p in enumerate(items)]


class ZOOptimizer(torch.optim.Optimizer):
    """Wraps a registered ZO method as a torch optimizer (single param group).

    Args:
        params: tensors, or ``(name, tensor)`` pairs such as
            ``model.named_parameters()`` (names key the random streams, so
            prefer them).  Parameters with ``requires_grad=False`` are skipped.
        method: registry name (``zoplatform.method_names()``).
        seed: run seed; step t uses ``rng.step_seed(seed, t)``.
        no_decay: names exempt from weight decay.
        record: keep the trajectory (a few bytes per step) in ``self.trajectory``.
        precision: ``fp32`` (default) or a mode of :mod:`zoplatform.precision`; a mixed mode
            (``bf16-mixed``) keeps fp32 master copies here and casts the given (fp32)
            tensors to the working dtype — cast the rest of the model with
            ``zoplatform.precision.cast_model_`` afterwards.
        **hyper: the method's hyperparameters (validated by its config).
    """

    def __init__(self, params, method: str = "mezo", *, seed: int = 0, no_decay: Iterable[str] = (),
                 record: bool = True, precision: str = "fp32", **hyper: Any):
        named = _named(params)
        cls = get_method(method)
        self.method = cls(**hyper)
        self.precision = check_precision(precision)
        super().__init__([p for _, p in named], {"lr": self.method.config.lr})
        self.blocks = with_masters(blocks_from_named(named, no_decay), precision)
        self.seed = int(seed)
        self.steps = 0
        self.method_state = self.method.init(self.blocks)
        self.last_record: StepRecord | None = None
        # the header says what the records apply to: the layout, and a digest of the initial values (another
        # seed, base checkpoint or LoRA init is refused on replay/resume instead of silently rewritten)
        self.trajectory = Trajectory(method, self.method.config.model_dump(), self.seed, layout_digest(self.blocks),
                                     {"precision": precision, "tensors": len(self.blocks),
                                      "values": sum(b.param.numel() for b in self.blocks),
                                      "init_sha256": values_digest(self.blocks)}) if record else None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{self.method.name} is zeroth-order: step() needs a closure that returns the loss")
        lr = float(self.param_groups[0]["lr"])
        seed = step_seed(self.seed, self.steps)
        self.method_state, rec = self.method.step(self.method_state, self.blocks, closure, seed, lr)
        self.steps += 1
        self.last_record = rec
        if self.trajectory is not None:
            self.trajectory.append(rec)
        return torch.tensor(rec.losses[0])

    def resume(self, records, *, progress: bool = False, on_step=None) -> None:
        """Continue from a checkpoint: replay ``records`` (a trajectory's first steps, or a
        :class:`~zoplatform.trajectory.Trajectory`, whose method, layout and initial values are
        checked first) on the current — base — weights, keep them as this optimizer's trajectory
        and step count, so the next ``step`` is the one the interrupted run would have taken.
        ``on_step(i, state)`` runs before record ``i`` is applied (e.g. to copy the weights at the
        best step)."""
        from .trajectory import replay

        if self.steps:
            raise RuntimeError(f"resume() needs a fresh optimizer; this one has taken {self.steps} steps")
        given = records  # a Trajectory is checked by replay before anything is applied
        records = list(records.records if isinstance(records, Trajectory) else records)
        self.method_state = replay(self.method, self.blocks, given if isinstance(given, Trajectory) else records,
                                   self.method_state, progress=progress, on_step=on_step)
        if self.trajectory is not None:
            self.trajectory.records.extend(records)
        self.steps = len(records)
        self.last_record = records[-1] if records else None

    def zero_grad(self, set_to_none: bool = True) -> None:  # nothing to zero: no gradients exist
        return None

    def state_dict(self) -> dict:  # type: ignore[override]
        # torch's layout too: param_groups (hyperparameters, schedulers' initial_lr, params as indices)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(range(len(g["params"])))}
                  for g in self.param_groups]
        out = {
            "state": {},
            "param_groups": groups,
            "method": self.method.name,
            "config": self.method.config.model_dump(),
            "seed": self.seed,
            "steps": self.steps,
            "lr": self.param_groups[0]["lr"],
            "precision": self.precision,
            "method_state": self.method_state.state_dict(),
        }
        if is_mixed(self.precision):  # the fp32 masters are the weights; the model holds only their rounding
            out["masters"] = {b.name: b.master.clone() for b in self.blocks}
        return out

    def load_state_dict(self, state: dict) -> None:  # type: ignore[override]
        if state.get("method") != self.method.name:
            raise ValueError(f"state is for method {state.get('method')!r}, not {self.method.name!r}")
        if state.get("precision", "fp32") != self.precision:
            raise ValueError(f"state is for precision {state.get('precision', 'fp32')!r}, not {self.precision!r}")
        self.seed = int(state["seed"])
        self.steps = int(state["steps"])
        for group, saved in zip(self.param_groups, state.get("param_groups", ())):
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(f"state has {len(saved.get('params', ()))} parameters, this optimizer "
                                 f"{len(group['params'])}")
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.param_groups[0]["lr"] = state["lr"]
        self.method_state = self.method.State.from_state_dict(state["method_state"])
        if "masters" in state:
            load_(self.blocks, [state["masters"][b.name] for b in self.blocks])


def optimizer(name: str, params, **hyperparameters: Any) -> ZOOptimizer:
    """``zoplatform.optimizer(name, params, **hyperparameters)``: a torch optimizer for any registered method."""
    return ZOOptimizer(params, name, **hyperparameters)
