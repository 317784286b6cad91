"""The study file: a declarative, validated description of one body of evidence.

A study names its *arms* (a label -> the method-level fine-tune options of ``zo compare --configs``: ``method``,
``lr``, ``eps``, ``direction``, ``precision``, ``method_options``, ``policy`` ...), the *tasks* and *seeds* every arm
runs on (an arm may keep to a subset of them: ``tasks:`` / ``seeds:``), the *protocol* every run shares (model,
forward-pass budget, data sizes, batch size), the *reference* arm the others are paired with, and the *reports* it
writes (each a set of arms against a reference, optionally into a generated block of a Markdown file).

Paths (a policy, an arm's ``config`` file, ``runs``, ``results``, a report's ``update``) are relative to the
repository root, where ``zo study`` runs; an absolute path is refused, so a study file works in any checkout.
A policy may also be a registry URI (``models:/zo-finetuner-smollm2-135m@champion``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from zoplatform.config import StrictModel, no_duplicates, read_mapping, validate
from zoplatform.errors import ConfigError

NAME = r"^[a-z0-9][a-z0-9._-]*$"  # one path component: names folders and MLflow experiments
REMOTE = ("models:/", "runs:/", "mlflow-artifacts:/")


def _relative(value: str | None, what: str) -> str | None:
    """A repository-relative path (or a registry URI): never absolute, never outside the checkout."""
    if value is None or value.startswith(REMOTE) or "://" in value:
        return value
    p = Path(value)
    if p.is_absolute() or value.startswith("~") or ".." in p.parts:
        raise ValueError(f"{what} {value!r} must be a path relative to the repository root (no '/...', '~' or "
                         f"'..'), so the study runs from any checkout")
    return value


class Arm(StrictModel):
    """One arm: the fine-tune options of its label (``zo compare --configs``), optionally on a subset of the
    study's tasks and seeds."""

    model_config = {**StrictModel.model_config, "extra": "allow"}  # the options themselves: checked below

    config: str | None = Field(None, description="a fine-tune config file (e.g. a sweep's best_config.yaml) whose "
                                                 "method-level options the arm starts from")
    tasks: list[str] | None = Field(None, min_length=1, description="a subset of the study's tasks")
    seeds: list[int] | None = Field(None, min_length=1, description="a subset of the study's seeds")

    @field_validator("config")
    @classmethod
    def _config_path(cls, v):
        return _relative(v, "config")

    @model_validator(mode="after")
    def _options(self):
        from pipelines.compare.config import METHOD_KEYS

        extra = dict(self.model_extra or {})
        unknown = sorted(set(extra) - METHOD_KEYS)
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not an arm option (allowed: config, tasks, seeds, "
                             f"{', '.join(sorted(METHOD_KEYS))}); what every run shares belongs to protocol")
        _relative(extra.get("policy"), "policy")
        return self

    def options(self) -> dict[str, Any]:
        """The label's fine-tune options (its ``config`` file's method-level ones under its own)."""
        from pipelines.compare.config import METHOD_KEYS

        base = {}
        if self.config:
            base = {k: v for k, v in read_mapping(self.config, "arm config file").items() if k in METHOD_KEYS}
        return {**base, **(self.model_extra or {})}


class Protocol(StrictModel):
    """What every run of the study shares (``zo compare``'s comparison-level options)."""

    model: str = Field(min_length=1)
    forward_budget: int = Field(ge=2, description="forward passes per run")
    task_budgets: dict[str, Annotated[int, Field(ge=2)]] = Field(default_factory=dict)
    eval_points: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    num_train: int = Field(1000, ge=1)
    num_dev: int | None = Field(None, ge=1)
    num_test: int = Field(1000, ge=1)
    precision: str | None = None
    head_init: Literal["random", "probe"] = "random"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class Execution(StrictModel):
    backend: Literal["local", "ray"] = "local"
    resources: str = Field("cpu=1", description="per run, e.g. cpu=1 or cpu=4,gpu=1")


class Tracking(StrictModel):
    experiment: str = Field(min_length=1, description="the study's MLflow experiment")
    uri: str | None = Field(None, description="MLflow tracking URI (default: zo's, sqlite:///$PWD/mlflow.db)")


class Report(StrictModel):
    """One report: these arms on these tasks, paired against ``reference``; written to
    ``<results>/<name>/`` (results.md/json/csv, one dev-curve figure per task)."""

    name: str = Field(pattern=NAME)
    arms: list[str] | None = Field(None, min_length=1, description="rows, in order (default: every arm)")
    tasks: list[str] | None = Field(None, min_length=1, description="columns (default: the study's tasks)")
    reference: str | None = Field(None, description="default: the study's reference")
    update: str | None = Field(None, description="Markdown file whose generated block is replaced")
    block: str = Field("results", pattern=r"^[a-z0-9-]+$", description="that block's name")

    @field_validator("update")
    @classmethod
    def _update_path(cls, v):
        return _relative(v, "update")


class Study(StrictModel):
    name: str = Field(pattern=NAME)
    description: str = ""
    protocol: Protocol
    tasks: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    reference: str
    arms: dict[str, Arm] = Field(min_length=1)
    runs: str | None = Field(None, description="where the run directories go (default studies/runs/<name>; "
                                               "not in git)")
    results: str | None = Field(None, description="the compact results and reports, in git (default "
                                                  "studies/results/<name>)")
    execution: Execution = Field(default_factory=Execution)
    tracking: Tracking
    reports: list[Report] = Field(default_factory=lambda: [Report(name="main")], min_length=1)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):  # seeds: 5 = seeds 0..4
            if v < 1:
                raise ValueError(f"seeds {v}: give a count >= 1 or a list")
            return list(range(v))
        return v

    _unique = field_validator("tasks", "seeds")(classmethod(no_duplicates))

    @field_validator("runs", "results")
    @classmethod
    def _paths(cls, v, info):
        return _relative(v, info.field_name)

    @model_validator(mode="after")
    def _consistent(self):
        from pipelines.compare.config import CompareConfig

        for label, arm in self.arms.items():  # a label names a folder: compare's rule
            validate(CompareConfig, {"methods": [label], "tasks": self.tasks, "forward_budget": 2,
                                     "reference": label}, f"arm {label!r}")
            for key, have in (("tasks", self.tasks), ("seeds", self.seeds)):
                extra = sorted(set(getattr(arm, key) or ()) - set(have))
                if extra:
                    raise ValueError(f"arm {label}: {key} {extra[0]!r} is not among the study's {key} "
                                     f"({', '.join(map(str, have))})")
        if self.reference not in self.arms:
            raise ValueError(f"reference {self.reference!r} is not an arm ({', '.join(self.arms)})")
        ref = self.arms[self.reference]
        if ref.tasks or ref.seeds:  # every arm is paired with it, on every task and seed it runs
            raise ValueError(f"the reference arm {self.reference} runs on every task and seed: drop its tasks/seeds")
        extra = sorted(set(self.protocol.task_budgets) - set(self.tasks))
        if extra:
            raise ValueError(f"protocol.task_budgets names {extra[0]!r}, which is not among tasks")
        names = [r.name for r in self.reports]
        if len(set(names)) != len(names):
            raise ValueError(f"two reports are named {next(n for n in names if names.count(n) > 1)!r}")
        for r in self.reports:
            for a in r.arms or ():
                if a not in self.arms:
                    raise ValueError(f"report {r.name}: arm {a!r} is not among arms ({', '.join(self.arms)})")
            for t in r.tasks or ():
                if t not in self.tasks:
                    raise ValueError(f"report {r.name}: task {t!r} is not among tasks ({', '.join(self.tasks)})")
            ref = r.reference or self.reference
            if ref not in (r.arms or self.arms):
                raise ValueError(f"report {r.name}: reference {ref!r} is not among its arms")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def runs_dir(self) -> Path:
        return Path(self.runs or f"studies/runs/{self.name}")

    @property
    def results_dir(self) -> Path:
        return Path(self.results or f"studies/results/{self.name}")

    def arm_tasks(self, label: str) -> list[str]:
        return [t for t in self.tasks if t in (self.arms[label].tasks or self.tasks)]

    def arm_seeds(self, label: str) -> list[int]:
        return [s for s in self.seeds if s in (self.arms[label].seeds or self.seeds)]

    def planned(self) -> list[tuple[str, str, int]]:
        """Every (arm, task, seed) the study holds."""
        return [(a, t, s) for s in self.seeds for t in self.tasks for a in self.arms
                if t in self.arm_tasks(a) and s in self.arm_seeds(a)]


def load_study(path: str | Path) -> Study:
    """A study file -> a validated :class:`Study` (one-line ConfigError on any problem)."""
    data = read_mapping(path, "study file")
    study = validate(Study, data, f"study {path}")
    return study


def check_filter(name: str, given: list, allowed: list) -> list:
    """``--tasks/--arms/--seeds``: every value must be the study's."""
    bad = [g for g in given if g not in allowed]
    if bad:
        raise ConfigError(f"--{name} {bad[0]!r} is not among the study's {name} ({', '.join(map(str, allowed))})")
    return given
