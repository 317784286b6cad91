"""The sweep's config and everything checked before a backend starts: resources, objectives, the space, the
fine-tune config of a default point, and the saved config of a sweep being resumed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.raytools import parse_resources
from zoplatform.config import StrictModel, validate
from zoplatform.errors import ConfigError

# objective name -> (metric reported by a trial, direction)
OBJECTIVES = {
    "acc": ("best_dev_accuracy", "max"),
    "loss": ("dev_loss", "min"),
    "forward_passes": ("forward_passes", "min"),
}
# fine-tune options the sweep sets itself (not allowed in --set)
MANAGED = {"model", "task", "method", "steps", "seed", "out_dir", "resume", "tracking", "tracking_uri",
           "experiment", "run_name", "parent_run_id", "progress"}
NOT_PERSISTED = {"resume"}


class SweepConfig(StrictModel):
    """A sweep; validated before any backend starts."""

    method: str = "mezo"
    task: str = "sst2"
    model: str = Field("smollm2-135m", min_length=1)
    trials: int = Field(8, ge=1)
    steps: int = Field(500, ge=1)
    space: str | None = Field(None, description="space file, or a packaged space name; default: the method's")
    backend: Literal["ray", "optuna"] = "ray"
    scheduler: Literal["asha", "none"] = "asha"
    resources: str = Field("cpu=1", description="per trial, e.g. cpu=2,gpu=0.25")
    max_concurrent: int = Field(2, ge=1)
    storage: str = "sweeps"
    name: str | None = None
    tracking_uri: str | None = None
    experiment: str = "zo-sweep"
    objectives: list[str] = Field(default_factory=lambda: ["acc"], min_length=1)
    seed: int = Field(0, ge=0)
    max_failures: int = Field(2, ge=0)
    grace_period: int | None = Field(None, ge=1, description="ASHA's first rung, in forward passes")
    reduction_factor: float = Field(3.0, gt=1)
    time_budget_s: float | None = Field(None, gt=0)
    optuna_storage: str | None = Field(None, description="RDB URL or journal file; default: a journal file")
    finetune: dict[str, Any] = Field(default_factory=dict, description="other fine-tune options (batch_size, ...)")
    resume: bool = Field(False, description="continue the interrupted sweep storage/name")
    confirm_seeds: int | None = Field(None, ge=1, description="re-run the best and the default on N fresh seeds")
    confirm_top: int = Field(1, ge=1, description="how many of the best configurations to confirm")


def parse_objectives(names: list[str]) -> list[tuple[str, str, str]]:
    """``["acc", "forward_passes"]`` -> ``[(name, metric, mode), ...]``."""
    out = []
    for n in names:
        if n not in OBJECTIVES:
            raise ConfigError(f"unknown objective {n!r}; choose from: {', '.join(OBJECTIVES)}")
        out.append((n, *OBJECTIVES[n]))
    if len({o[0] for o in out}) != len(out):
        raise ConfigError(f"objectives {','.join(names)} repeat a name")
    return out


def default_name(method: str, task: str, model: str) -> str:
    return f"{method}-{task}-{model.replace('/', '_').replace(':', '_')}"


def check_name(name: str) -> str:
    """A sweep's name is its directory under ``--storage``: one safe path component (no ``/``, ``..``, absolute
    path), so a sweep never writes outside its storage."""
    bad = (not name or name in (".", "..") or name != name.strip() or any(c in name for c in "/\\\0")
           or Path(name).is_absolute() or Path(name).name != name)
    if bad:
        raise ConfigError(f"--name {name!r} is not a valid sweep name: it must be a single directory name under "
                          f"--storage (no '/', '..' or absolute path), e.g. mezo-sst2-run1")
    return name


def sweep_name(cfg: SweepConfig) -> str:
    return check_name(cfg.name or default_name(cfg.method, cfg.task, cfg.model))


def resume_hint(cfg: SweepConfig) -> str:
    return f"sweep interrupted; continue with: zo sweep --resume --storage {cfg.storage} --name {sweep_name(cfg)}"


def trial_finetune_config(cfg: SweepConfig, params: dict[str, Any], *, out_dir: Path, resume: bool,
                          run_name: str, tracking_uri: str | None, parent_run_id: str | None):
    """The fine-tune config of one trial: sweep-level options + sampled params
    (fine-tune fields at top level, the rest as method options)."""
    from pipelines.finetune import FinetuneConfig, load_config

    data: dict[str, Any] = dict(cfg.finetune)
    if parse_resources(cfg.resources)["gpu"] > 0:
        data.setdefault("device", "cuda")
    data.update(model=cfg.model, task=cfg.task, method=cfg.method, steps=cfg.steps, seed=cfg.seed,
                progress=False, tracking=True, tracking_uri=tracking_uri, experiment=cfg.experiment,
                parent_run_id=parent_run_id, run_name=run_name, out_dir=str(out_dir), resume=resume)
    options = dict(data.get("method_options") or {})
    for k, v in params.items():
        if k in FinetuneConfig.model_fields:
            data[k] = v
        else:
            options[k] = v
    data["method_options"] = options
    return load_config(None, data)


def check_inputs(cfg: SweepConfig):
    """Everything that can be wrong with the input, checked without starting Ray
    or loading a model.  Returns (space, resources, objectives, sweep_dir)."""
    import search_spaces
    import zoplatform
    from pipelines.finetune import FinetuneConfig
    from pipelines.finetune import check_inputs as check_finetune

    zoplatform.get_method(cfg.method)  # unknown method: the registry's message
    sweep_name(cfg)  # a name that would leave --storage
    if not cfg.experiment.strip():
        raise ConfigError(f"--experiment {cfg.experiment!r} is empty; give an MLflow experiment name "
                          f"(default zo-sweep)")
    if cfg.optuna_storage is not None:
        check_optuna_storage(cfg.optuna_storage)
    space = search_spaces.load_space(cfg.space or cfg.method)
    if space.method != cfg.method:
        raise ConfigError(f"search space {space.source} is for method {space.method!r}, not --method {cfg.method!r}")
    resources = parse_resources(cfg.resources)
    objectives = parse_objectives(cfg.objectives)
    if len(objectives) > 1 and cfg.scheduler == "asha":
        raise ConfigError("multi-objective sweeps cannot use --scheduler asha: a stopped trial would report a "
                          "truncated cost and land on the Pareto front; use --scheduler none")
    bad = sorted(set(cfg.finetune) & MANAGED)
    if bad:
        raise ConfigError(f"fine-tune option {bad[0]!r} is set by the sweep itself; use the sweep's own option")
    unknown = sorted(set(cfg.finetune) - set(FinetuneConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown fine-tune option {unknown[0]!r}")
    # a trial's full config at the first default point: task, model spec, data, method
    point = search_spaces.to_points(space)[0] if space.defaults else {}
    fixed = {p.name: p.value for p in space.params if p.dist == "fixed"}
    ft = trial_finetune_config(cfg, fixed | point, out_dir=Path("unused"), resume=False, run_name="check",
                               tracking_uri=None, parent_run_id=None)
    _, _, data_dir = check_finetune(ft)
    from pipelines.finetune.sampling import sample_data

    sample_data(ft, data_dir)  # the sample's bounds (batch_size <= train examples), as a trial would find them
    check_confirm(cfg, space)
    return space, resources, objectives, Path(cfg.storage).resolve() / sweep_name(cfg)


def check_optuna_storage(url: str) -> None:
    """An RDB URL must parse and its database driver must be installed (checked without connecting); a journal
    file path must not be empty."""
    if not url.strip():
        raise ConfigError("--optuna-storage is empty; give an RDB URL (sqlite:///..., postgresql://...) or a "
                          "journal file path")
    if "://" not in url:
        return
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--optuna-storage {url!r} is not a database URL (dialect+driver://user@host/db, "
                          f"e.g. sqlite:////abs/optuna.db)") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        sqlalchemy.create_engine(parsed).dispose()  # imports the dialect and its driver; does not connect
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ConfigError(f"--optuna-storage {shown}: the database driver for {parsed.drivername!r} is not "
                          f"installed ({type(e).__name__}: {e}); install it, or use sqlite:/// or a journal "
                          f"file path") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(f"--optuna-storage {shown}: {e}") from None


def planned_forward_passes(cfg: SweepConfig, space) -> int:
    """Training forward passes of a full trial at the first default point (ASHA's scale)."""
    import search_spaces
    import zoplatform

    point = search_spaces.to_points(space)[0] if space.defaults else {}
    method = zoplatform.make(cfg.method, **search_spaces.method_params(space, point))
    return max(1, cfg.steps * int(method.forwards_per_step))


def load_for_resume(storage: str, name: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The saved config of an interrupted sweep, checked against the options given now."""
    root = Path(storage).resolve()
    if name is not None:
        check_name(name)
    if name is None and any(k in given for k in ("method", "task", "model")):
        f = SweepConfig.model_fields
        name = default_name(*(given.get(k, f[k].default) for k in ("method", "task", "model")))
    if name is None:
        found = sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.is_dir() else []
        if len(found) != 1:
            raise ConfigError(f"--resume: pass --name (sweeps in {root}: {', '.join(found) or 'none'})")
        name = found[0]
    path = root / name / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"--resume: no sweep {name!r} in {root} (no {path})")
    saved = json.loads(path.read_text())["config"]
    for k, v in given.items():
        if v is None or k in NOT_PERSISTED or k in ("storage", "name"):
            continue
        if k == "finetune":
            v = {**saved.get("finetune", {}), **v}
        if saved.get(k) != v and not (isinstance(v, float) and saved.get(k) == v):
            raise ConfigError(f"--resume: {k}={v!r} differs from the interrupted sweep's {k}={saved.get(k)!r}; "
                              f"a resume continues the sweep as it was defined")
    return saved | {"storage": str(root), "name": name}


def load_sweep_config(data: dict[str, Any]) -> SweepConfig:
    """CLI values (None = not given) -> a validated config; with ``resume``, the
    saved config of the sweep in ``storage``/``name``, checked against the values given."""
    given = {k: v for k, v in data.items() if v is not None and v != {}}
    if given.get("resume"):
        given = load_for_resume(given.get("storage", "sweeps"), given.get("name"), given) | {"resume": True}
    return validate(SweepConfig, given, "sweep config")


def check_confirm(cfg, space) -> None:
    """The confirmation's input, checked with the sweep's (before any trial runs)."""
    if not cfg.confirm_seeds:
        if cfg.confirm_top != 1:
            raise ConfigError(f"--confirm-top {cfg.confirm_top} needs --confirm-seeds N (the fresh seeds to "
                              f"re-run on)")
        return
    if not space.defaults:
        raise ConfigError(f"--confirm-seeds: search space {space.source} has no defaults: the confirmation pairs "
                          f"the best configurations with the space's first default (the paper's setting)")
    if cfg.confirm_top > cfg.trials:
        raise ConfigError(f"--confirm-top {cfg.confirm_top} exceeds --trials {cfg.trials}")
