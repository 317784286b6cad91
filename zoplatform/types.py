"""Small shared value types: examples, splits, step records.

These are plain frozen dataclasses so that every layer (data, objectives,
engine, loop, tracking) can exchange them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One labelled classification example, ready for either protocol.

    Prompt protocol (causal LMs, MeZO §1.4): the model scores each string of
    ``candidates`` as a continuation of ``prompt``; ``label`` indexes the gold
    candidate.  Head protocol (encoders, LOREN): ``text``/``text_pair`` go to a
    ``*ForSequenceClassification`` head and ``label`` is the class index.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int
    text: str = ""
    text_pair: str | None = None
    uid: str = ""


@dataclass(frozen=True)
class Splits:
    """Train/dev/test examples sampled by seed (MeZO's protocol, §1.3)."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    note: str = ""


@dataclass(frozen=True)
class StepRecord:
    """What one ZO step needs to be replayed: its seed, the losses it measured
    (in query order) and the learning rate it applied.  A few bytes a step.

    ``grad`` holds the projected gradient scalar(s) derived from ``losses``
    (kept for logging; replay recomputes them from ``losses`` bit-exactly).
    ``extra`` carries method-specific scalars (e.g. CurvZO's budget).
    """

    seed: int
    losses: tuple[float, ...]
    lr: float
    grad: tuple[float, ...] = ()
    extra: dict = field(default_factory=dict)
