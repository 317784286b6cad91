"""Typed, frozen method state: what ``init`` returns and ``step`` consumes and returns.

Each method declares its state as a frozen dataclass subclassing :class:`State` (the evosax /
optax shape: a method object holds only its hyperparameters; everything a step changes lives in
the state it returns).  A state is never changed after it is made — ``step`` returns a new one
(:meth:`State.replace`) — with one declared exception: buffers a method lists in ``donated``
(LOREN's momentum, one tensor of every matrix's size) are updated in place and handed to the new
state, as ``torch.optim`` does with its buffers; copying them would cost a pass over the weights'
size every step.  A donated state must not be stepped twice (the trajectory replay never does).

``state_dict()`` flattens a state into ``{key: tensor | number}`` (tensors cloned; a per-block
``dict`` field ``f`` becomes the keys ``f/<block name>``; a ``None`` field is left out) and
``from_state_dict`` rebuilds it, so ``S.from_state_dict(s.state_dict()) == s``.  A state is also a
read-only :class:`~collections.abc.Mapping` over those keys (``state["sigma"]``, ``state["a/W"]``,
``dict(state)``) for reports and tests; assignment raises.

>>> from dataclasses import dataclass
>>> import torch
>>> @dataclass(frozen=True, eq=False)
... class Demo(State):
...     t: int = 0
...     buf: dict | None = None
>>> s = Demo(t=3, buf={"w": torch.ones(2)})
>>> sorted(s.state_dict())
['buf/w', 't']
>>> Demo.from_state_dict(s.state_dict()) == s
True
>>> s.replace(t=4)["t"], s.t
(4, 3)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Self

import torch


def _copy(v: Any) -> Any:
    return v.clone() if torch.is_tensor(v) else v


def _equal(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        # NaN entries are equal (e.g. Sparse MeZO's thresholds of blocks not yet measured)
        return bool(torch.equal(a, b)) or (a.is_floating_point() and bool(torch.equal(a.isnan(), b.isnan()))
                                           and bool(torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))))
    return a == b


@dataclasses.dataclass(frozen=True, eq=False)
class State(Mapping):
    """Base of every method's state (no fields: MeZO needs none)."""

    donated: ClassVar[tuple[str, ...]] = ()  # fields whose tensors a step updates in place (module doc)

    # -- construction -------------------------------------------------------------
    def replace(self, **changes: Any) -> Self:
        """A new state with ``changes`` (the others shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def state_dict(self) -> dict[str, Any]:
        """Flat ``{key: value}`` with tensors cloned (see the module doc for the keys)."""
        return {k: _copy(v) for k, v in self._flat()}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Self:
        """The state ``state_dict()`` wrote; an unknown key is an error, a missing one takes its default."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for key, v in d.items():
            name, _, sub = key.partition("/")
            if name not in fields:
                raise ValueError(f"{cls.__name__}: unknown state key {key!r} (fields: {', '.join(fields)})")
            if sub:
                kw.setdefault(name, {})[sub] = _copy(v)
            else:
                kw[name] = _copy(v)
        return cls(**kw)

    # -- the read-only mapping view -----------------------------------------------
    def _flat(self) -> Iterator[tuple[str, Any]]:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, dict):
                yield from ((f"{f.name}/{k}", x) for k, x in v.items())
            else:
                yield f.name, v

    def __getitem__(self, key: str) -> Any:
        name, _, sub = key.partition("/")
        v = getattr(self, name, None) if name in {f.name for f in dataclasses.fields(self)} else None
        if sub and isinstance(v, dict) and sub in v:
            return v[sub]
        if not sub and v is not None and not isinstance(v, dict):
            return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._flat())

    def __len__(self) -> int:
        return sum(1 for _ in self._flat())

    def __eq__(self, other: object) -> bool:
        """Equal keys and equal values (tensors: same dtype, shape and elements)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        mine, theirs = dict(self._flat()), dict(other.items())
        return mine.keys() == theirs.keys() and all(_equal(v, theirs[k]) for k, v in mine.items())

    __hash__ = None  # type: ignore[assignment]  # holds tensors
