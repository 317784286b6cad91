"""What ``zo compare`` runs: :class:`CompareConfig` (validated before anything runs), :class:`RunSpec` (one
(method label, task, seed) run) and the parsing of the CLI values into a config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.finetune.config import FinetuneConfig
from zoplatform.config import StrictModel, no_duplicates, read_mapping, validate
from zoplatform.errors import ConfigError

# finetune options a method label may set; everything else is the comparison's
METHOD_KEYS = {"method", "lr", "eps", "weight_decay", "schedule", "direction", "method_options", "policy", "protocol",
               "precision", "lora", "lora_r", "lora_alpha", "select"}
# options that do not change what a run computes (ignored when matching a saved run)
OPERATIONAL = {"tracking", "tracking_uri", "experiment", "run_name", "parent_run_id", "out_dir", "resume", "progress",
               "zero_shot"}


class CompareConfig(StrictModel):
    """A comparison; validated (with every run's config) before anything runs."""

    model: str = Field("smollm2-135m", min_length=1)
    methods: list[str] = Field(min_length=1, description="method labels")
    tasks: list[str] = Field(min_length=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    forward_budget: int = Field(ge=2, description="forward passes per run")
    task_budgets: dict[str, Annotated[int, Field(ge=2)]] = Field(
        default_factory=dict, description="task -> its own forward budget (overrides forward_budget)")
    eval_points: int = Field(6, ge=1, description="dev evaluations per run (at equal forward passes)")
    configs: dict[str, Any] = Field(default_factory=dict, description="label -> finetune options or a config path")
    reference: str = Field("mezo", description="label the others are paired with (verdicts) and whose final dev "
                                               "accuracy they must reach")
    batch_size: int = Field(16, ge=1)
    num_train: int = Field(1000, ge=1)
    num_dev: int | None = Field(None, ge=1)
    num_test: int = Field(1000, ge=1)
    data_dir: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    precision: str | None = Field(None, description="every run's precision mode (zo finetune --precision; a label's "
                                                    "own precision overrides it)")
    head_init: Literal["random", "probe"] = Field("random", description="head protocol: linear-probe the head first")
    backend: Literal["local", "ray"] = "local"
    resources: str = Field("cpu=1", description="per run (Ray backend; local: cpu = threads per run)")
    tracking_uri: str | None = None
    experiment: str = "zo-compare"
    out: str = "compare"
    update_readme: str | None = Field(None, description="Markdown file (e.g. docs/evidence.md) whose "
                                         "Results block is replaced")
    readme_block: str = Field("results", pattern=r"^[a-z0-9-]+$", description="name of the README block "
                              "replaced: <!-- NAME:start --> ... <!-- NAME:end -->")
    report_only: bool = Field(False, description="report the finished runs, run nothing")

    _unique = field_validator("methods", "tasks")(classmethod(no_duplicates))

    @field_validator("methods")
    @classmethod
    def _one_path_component(cls, v):
        # a label names the folder <out>/runs/<task>/<label>: "../x", "a/b" or "/abs" would write outside --out
        for label in v:
            if (label in ("", ".", "..") or any(c in label for c in "/\\\0") or label != label.strip()
                    or Path(label).is_absolute()):
                raise ValueError(f"method label {label!r} is not a single safe path component (it names the "
                                 f"folder <out>/runs/<task>/<label>): no '/', '\\', '..' or surrounding spaces")
        return v

    @model_validator(mode="after")
    def _budgeted_tasks(self):
        extra = sorted(set(self.task_budgets) - set(self.tasks))
        if extra:
            raise ValueError(f"task_budgets names {extra[0]!r}, which is not among tasks ({', '.join(self.tasks)})")
        return self

    def budget(self, task: str) -> int:
        """Forward passes per run on ``task``."""
        return self.task_budgets.get(task, self.forward_budget)


@dataclass
class RunSpec:
    label: str
    task: str
    seed: int
    config: FinetuneConfig
    out_dir: Path
    status: str = "new"  # new | resume | restart | done
    summary: dict = field(default_factory=dict)


def load_compare_config(data: dict[str, Any], configs_file: str | None) -> CompareConfig:
    """CLI values (None = not given) + the configs file -> a validated config."""
    given = {k: v for k, v in data.items() if v is not None}
    if configs_file:
        p = Path(configs_file)
        entries = read_mapping(p, "--configs file")
        given["configs"] = {k: (str((p.parent / v).resolve()) if isinstance(v, str) else v)
                            for k, v in entries.items()}
    for k in ("methods", "tasks"):
        if isinstance(given.get(k), str):
            given[k] = [s.strip() for s in given[k].split(",") if s.strip()]
    if isinstance(given.get("task_budgets"), str):
        given["task_budgets"] = _parse_budgets(given["task_budgets"])
    if isinstance(given.get("seeds"), int):
        given["seeds"] = list(range(given["seeds"]))
    return validate(CompareConfig, given, "compare config")


def _parse_budgets(text: str) -> dict[str, int]:
    """``"cb=200,rte=400"`` -> {"cb": 200, "rte": 400}."""
    out = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        task, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--task-budget: {item!r} is not TASK=FORWARD_PASSES (e.g. cb=200)")
        out[task.strip()] = int(value)
    return out
