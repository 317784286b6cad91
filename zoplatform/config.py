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


def no_duplicates(cls, v: list) -> list:
    """A pydantic field validator body: a list whose entries are unique
    (``_unique = field_validator("tasks")(classmethod(no_duplicates))``)."""
    if len(set(v)) != len(v):
        raise ValueError(f"duplicate entries in {v}")
    return v


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


MAX_YAML_VALUES = 100_000  # values a YAML document may expand to through its aliases (config files hold ~100)


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` that refuses, in one line, a document whose aliases expand beyond
    :data:`MAX_YAML_VALUES` values (a "billion laughs" alias bomb: a few hundred bytes that every reader of
    the result would walk for hours), a recursive alias, and nesting too deep to read.  Anchors and aliases of
    ordinary size (``<<: *defaults``) still work.

    >>> load_yaml("{a: &x [1, 2], b: *x}", "doc")
    {'a': [1, 2], 'b': [1, 2]}
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, where)
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
        except RecursionError:
            raise ConfigError(f"{where} is nested too deeply to read") from None
    finally:
        loader.dispose()


def _check_expansion(root, where: str) -> None:
    """How many values the node graph expands to, an alias counting its target again (memoised, iterative)."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            open_.discard(key)
            if size[key] > MAX_YAML_VALUES:
                raise ConfigError(f"{where}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an "
                                  f"alias bomb?); write the values out or use fewer aliases")
            continue
        if key in size:
            continue
        if key in open_:
            raise ConfigError(f"{where}: a YAML alias refers to a value that contains it (recursive alias)")
        open_.add(key)
        stack.append((node, True))
        for k in _children(node):
            if id(k) in open_:
                raise ConfigError(f"{where}: a YAML alias refers to a value that contains it (recursive alias)")
            if id(k) not in size:
                stack.append((k, False))


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []


def read_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML/JSON file holding a mapping (empty file: ``{}``); one-line errors (an alias bomb included:
    :func:`load_yaml`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    data = load_yaml(p.read_text(), f"{what} {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of options, got {type(data).__name__}")
    return data
