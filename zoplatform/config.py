"""Validated configuration: pydantic models with one-line errors.

Every method declares its hyperparameters as a pydantic model (hyperparameters
are data, separate from state).  :func:`validate` turns pydantic's multi-line
report into a single :class:`~zoplatform.errors.ConfigError` line naming the
field, the bad value and what is allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors, instances are immutable, and inf/NaN
    are never valid numbers (``lr=inf`` would diverge at step 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def one_line(err: ValidationError, where: str) -> str:
    """The first validation problem as ``where: field=value: why``."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(config)"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown option {loc!r}"
    if e["type"] == "missing":  # the "input" is then the whole mapping: name the field, not the dict
        return f"{where}: {loc} is required"
    return f"{where}: {loc}={e.get('input')!r} is invalid: {e['msg']}"


def validate(model: type[M], data: dict[str, Any], where: str) -> M:
    try:
        return model(**data)
    except ValidationError as err:
        raise ConfigError(one_line(err, where)) from None


def read_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML/JSON file holding a mapping (empty file: ``{}``); one-line errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of options, got {type(data).__name__}")
    return data
