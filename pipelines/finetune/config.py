"""A fine-tune run's configuration: :class:`FinetuneConfig` (validated before any model loads), the
method's hyperparameters from it, and the fail-fast input checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from zoplatform.config import StrictModel, read_mapping, validate
from zoplatform.errors import ConfigError

FO_METHODS = {"fo": "first-order AdamW (backprop) baseline"}


class FinetuneConfig(StrictModel):
    """Everything a fine-tune run needs; validated before any model loads."""

    model: str = Field("smollm2-135m", min_length=1, description="hub id, local path, packaged name (smollm2-135m, "
                                                                 "minilm-l6) or tiny:llama|opt|gpt2|bert")
    task: str = Field("sst2", description="task name (zo tasks)")
    method: str = Field("mezo", description="ZO method (zo methods) or 'fo' (first-order AdamW)")
    steps: int = Field(500, ge=0, le=10_000_000, description="ZO steps (at most 10⁷: a trajectory line per step)")
    lr: float | None = Field(None, gt=0, description="default: the method's (MeZO 1e-6, fo 1e-5)")
    eps: float | None = Field(None, gt=0, description="ZO perturbation scale; default: the method's")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    schedule: Literal["constant", "linear"] = Field("constant", description="learning-rate schedule over the steps")
    direction: Literal["gaussian", "rademacher", "pool"] | None = Field(
        None, description="law of the random directions (default: the method's, gaussian for MeZO)")
    method_options: dict[str, Any] = Field(default_factory=dict, description="extra method hyperparameters")
    policy: str | None = Field(None, description="zo-finetuner policy: a directory, "
                                "models:/zo-policy-<model>@champion or models:/NAME/N")
    batch_size: int = Field(16, ge=1, description="training batch size")
    seed: int = Field(0, ge=0, description="seed of the data sample, the model init and the ZO directions")
    eval_every: int = Field(100, ge=1, description="steps between dev evaluations")
    num_train: int = Field(1000, ge=1, description="train examples sampled")
    num_dev: int | None = Field(None, ge=1, description="default 500 (100 for CB/COPA)")
    num_test: int = Field(1000, ge=1, description="test examples sampled")
    eval_batch_size: int = Field(32, ge=1, le=65536, description="batch size of the evaluations")
    max_length: int = Field(2048, ge=8, description="longest tokenised input (tokens)")
    data_dir: str | None = Field(None, description="data directory (default: $ZO_DATA_DIR or ../shared/data)")
    protocol: Literal["prompt", "head"] | None = Field(
        None, description="prompt (causal LM) or head (sequence classification); default: the model's")
    head_init: Literal["random", "probe"] = Field(
        "random", description="head protocol: 'probe' fits the classifier by a linear probe on frozen features first")
    lora: bool = Field(False, description="train LoRA adapters instead of all weights")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA alpha (scaling)")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="weights' dtype (bfloat16/float16: pure low-precision weights); see precision")
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "fp16-true"] | None = Field(
        None, description="fp32 | bf16-mixed (bf16 forward, fp32 master weights: no update lost) | fp16-mixed | "
                          "bf16-true | fp16-true; default: the one dtype names")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads (torch and the direction generation)")
    workers: int = Field(1, ge=1, le=256, description="data-parallel ZO over N local worker processes "
                                                                "(torchrun); losses all-reduced")
    select: Literal["best", "last"] = Field("best", description="the step the test evaluation uses: best dev or last")
    zero_shot: bool = Field(True, description="evaluate the base model on test first")
    tracking: bool = Field(True, description="log the run to MLflow (--no-tracking: do not)")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    experiment: str = Field("zo-finetune", description="MLflow experiment")
    run_name: str | None = Field(None, description="MLflow run name (and the default out_dir's name)")
    parent_run_id: str | None = Field(None, description="MLflow run to nest this run under (zo sweep and zo "
                                                             "compare set it)")
    out_dir: str | None = Field(None, description="run directory (trajectory, state, summary)")
    resume: bool = Field(False, description="continue the run in out_dir from its trajectory")
    progress: bool = Field(True, description="show a progress bar")

    @model_validator(mode="after")
    def _check(self):
        if self.resume and self.out_dir is None:
            raise ValueError("resume needs out_dir (the directory holding trajectory.jsonl)")
        if self.policy is not None and self.method != "zo-finetuner":
            raise ValueError(f"policy is an option of method zo-finetuner, not {self.method!r}")
        if self.precision is not None and self.dtype != "float32":
            raise ValueError(f"give precision or dtype, not both (dtype={self.dtype!r} means "
                             f"precision={ {'bfloat16': 'bf16-true', 'float16': 'fp16-true'}[self.dtype]!r})")
        if self.workers > 1 and self.method in FO_METHODS:
            raise ValueError("workers > 1 is data-parallel ZO (scalars on the wire); 'fo' runs in one process")
        if self.workers > 1 and self.batch_size < self.workers:
            raise ValueError(f"batch_size={self.batch_size} must be >= workers={self.workers} (one shard each)")
        if self.head_init == "probe" and self.protocol == "prompt":
            raise ValueError("head_init='probe' needs the head protocol (a classifier to fit), not 'prompt'")
        return self


def load_config(path: str | None, overrides: dict[str, Any]) -> FinetuneConfig:
    """Config file (YAML/JSON) overlaid with explicit CLI values, validated."""
    data: dict[str, Any] = read_mapping(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate(FinetuneConfig, data, "finetune config")


def method_hyper(cfg: FinetuneConfig) -> dict[str, Any]:
    """The method's hyperparameters from the run config (validated by the method)."""
    hyper = dict(cfg.method_options)
    for k in ("lr", "eps", "direction"):
        if getattr(cfg, k) is not None:
            hyper[k] = getattr(cfg, k)
    hyper["weight_decay"] = cfg.weight_decay
    return hyper


def resolve_policy_option(cfg: FinetuneConfig, out_dir: Path | None) -> FinetuneConfig:
    """``policy`` (a path or a models:/ URI) -> a local directory in the method's
    options; a registry policy is downloaded into ``<out_dir>/policy`` so a
    resumed run finds it again."""
    if cfg.policy is None:
        return cfg
    from meta.registry import resolve_policy

    remote = "://" in cfg.policy or cfg.policy.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))
    local = out_dir / "policy" if remote and out_dir is not None else None
    info: dict = {}
    path = resolve_policy(cfg.policy, tracking_uri=cfg.tracking_uri, dst_path=local, info=info)
    provenance = {"policy_version": info["version_uri"]} if info.get("version_uri") else {}  # logged with the config
    return cfg.model_copy(update={"method_options": {**cfg.method_options, "policy": path, **provenance}})


def check_inputs(cfg: FinetuneConfig):
    """Resolve names to objects and fail fast, before any model is loaded."""
    import zoplatform
    from zoplatform.data import get_task, resolve_data_dir
    from zoplatform.models import check_spec, default_protocol

    task = get_task(cfg.task)
    if cfg.method in FO_METHODS:
        method = None
    else:
        method = zoplatform.get_method(cfg.method)(**method_hyper(cfg))
    check_spec(cfg.model, cfg.dtype, cfg.device)
    if cfg.head_init == "probe" and (cfg.protocol or default_protocol(cfg.model)) != "head":
        raise ConfigError(f"head_init='probe' needs the head protocol; {cfg.model} defaults to the prompt protocol "
                          f"(pass protocol=head)")
    data_dir = resolve_data_dir(cfg.data_dir)
    return task, method, data_dir




def run_precision(cfg: FinetuneConfig) -> str:
    """The run's precision mode: ``precision`` if given, else the one ``dtype`` names (float32 -> fp32)."""
    from zoplatform.precision import DTYPE_NAMES

    return cfg.precision or DTYPE_NAMES[cfg.dtype]
