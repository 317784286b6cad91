"""Declarative sweep search spaces: one YAML file per method, validated on load.

A space file (``search_spaces/<method>.yaml``, or any file passed as ``--space``)::

    method: mezo                  # a registered method: its Config validates every key
    paper: Malladi et al. 2023    # free text, shown in listings
    params:                       # sampled in this order (define-by-run)
      lr:        {dist: log_uniform, low: 1.0e-7, high: 1.0e-3}
      eps:       {dist: log_uniform, low: 1.0e-4, high: 1.0e-1}
      direction: {dist: choice, values: [gaussian, rademacher]}
      chunk:     {dist: int, low: 1024, high: 65536, log: true, when: {direction: rademacher}}
    defaults:                     # the papers' settings, evaluated before the sampler takes over
      - {lr: 1.0e-6, eps: 1.0e-3}

Distributions: ``log_uniform`` (low > 0), ``uniform`` (optional ``step``),
``int`` (optional ``log``, ``step``), ``choice`` (``values``: str/int/float/bool)
and ``fixed`` (``value``).  ``when: {other: value-or-list}`` makes a parameter
conditional: it exists only when an *earlier* parameter took one of the listed
values (a conditional knob is absent, not defaulted, otherwise).

Validation happens when the space is loaded, before anything heavy starts: every
key must be a field of the registered method's ``Config`` or a run option from
:data:`RUN_OPTIONS`; every distribution must be well formed; each default point
and each range end (low, high, every choice) must pass the method's own config
validation.  A space for a method that is not registered (yet) is an error: its
Config is what a space is checked against.  Errors are one-line
:class:`~zoplatform.errors.ConfigError`.

Usage (Optuna define-by-run, or Ray's ``OptunaSearch(space=...)``)::

    space = load_space("mezo")
    params = sample(space, trial)        # trial: an optuna.Trial (duck-typed)
    points = to_points(space)            # the paper defaults: points_to_evaluate / enqueue_trial
    method = zoplatform.make(space.method, **method_params(space, params))
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zoplatform.errors import ConfigError
from zoplatform.registry import REGISTRY, make, method_names

__all__ = [
    "DISTRIBUTIONS",
    "RUN_OPTIONS",
    "Param",
    "Space",
    "load_space",
    "method_params",
    "packaged_spaces",
    "sample",
    "to_points",
]

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice", "fixed")
# Keys a space may hold beyond the method's Config: options of the fine-tune run
# itself (the sweep passes them to the recipe, not to the method).
RUN_OPTIONS: dict[str, str] = {
    "schedule": "learning-rate schedule of the run: constant or linear",
    "batch_size": "training batch size of the run (int >= 1)",
}
_SCHEDULES = ("constant", "linear")
_ALLOWED_FIELDS = {"dist", "low", "high", "step", "log", "values", "value", "when"}
_TOP_KEYS = {"method", "paper", "params", "defaults", "description"}


@dataclass(frozen=True)
class Param:
    """One sampled (or fixed) knob."""

    name: str
    dist: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    values: tuple = ()
    value: Any = None
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this knob exists given the values chosen so far."""
        return all(k in chosen and chosen[k] in vals for k, vals in self.when)

    def extremes(self) -> list:
        """Values at the edges of the distribution (checked against the Config on load)."""
        if self.dist == "choice":
            return list(self.values)
        if self.dist == "fixed":
            return [self.value]
        return [self.low, self.high]

    def contains(self, v: Any) -> bool:
        if self.dist == "choice":
            return v in self.values
        if self.dist == "fixed":
            return v == self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.dist == "int" and not float(v).is_integer():
            return False
        return self.low <= v <= self.high

    def describe(self) -> str:
        if self.dist == "choice":
            return f"choice{list(self.values)}"
        if self.dist == "fixed":
            return f"fixed({self.value!r})"
        return f"{self.dist}[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Space:
    """A validated search space for one registered method."""

    method: str
    params: tuple[Param, ...]
    defaults: tuple[dict, ...] = ()
    source: str = ""
    paper: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]


# --------------------------------------------------------------------------- loading
def packaged_spaces() -> list[str]:
    """Names of the spaces shipped with the package (one per method)."""
    root = resources.files(__name__)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read(method_or_path: str) -> tuple[dict, str]:
    from zoplatform.config import load_yaml

    s = str(method_or_path)
    p = Path(s)
    looks_like_file = p.suffix in {".yaml", ".yml", ".json"} or "/" in s or p.is_file()
    if looks_like_file:
        if not p.is_file():
            raise ConfigError(f"search space file {s} does not exist")
        text, src = p.read_text(), s
    else:
        f = resources.files(__name__) / f"{s}.yaml"
        if not f.is_file():
            raise ConfigError(f"no packaged search space for method {s!r}; packaged: "
                              f"{', '.join(packaged_spaces())}; or pass a YAML file with --space")
        text, src = f.read_text(), f"{s}.yaml"
    data = load_yaml(text, f"search space {src}")  # one line on bad YAML or an alias bomb
    if not isinstance(data, dict):
        raise ConfigError(f"search space {src} must be a mapping with 'method' and 'params'")
    return data, src


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _parse_param(name: str, spec: Any, earlier: dict[str, Param], where: str) -> Param:
    w = f"{where}: params.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{w} must be a mapping like {{dist: log_uniform, low: 1e-7, high: 1e-4}}, got {spec!r}")
    extra = set(spec) - _ALLOWED_FIELDS
    if extra:
        raise ConfigError(f"{w}: unknown field(s) {sorted(extra)}; allowed: {sorted(_ALLOWED_FIELDS)}")
    dist = spec.get("dist")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{w}: dist={dist!r} is not a distribution; choose one of: {', '.join(DISTRIBUTIONS)}")
    kw: dict[str, Any] = {}
    if dist in ("log_uniform", "uniform", "int"):
        lo, hi = spec.get("low"), spec.get("high")
        if not (_num(lo) and _num(hi)):
            raise ConfigError(f"{w}: {dist} needs numeric low and high, got low={lo!r} high={hi!r}")
        if not lo < hi:
            raise ConfigError(f"{w}: low must be < high, got low={lo!r} high={hi!r}")
        log = bool(spec.get("log", dist == "log_uniform"))
        if dist == "log_uniform" and spec.get("log") is False:
            raise ConfigError(f"{w}: log_uniform cannot have log: false (use uniform)")
        if log and lo <= 0:
            raise ConfigError(f"{w}: a log-scale range needs low > 0, got low={lo!r}")
        step = spec.get("step")
        if step is not None:
            if not (_num(step) and step > 0) or dist == "log_uniform" or log:
                raise ConfigError(f"{w}: step={step!r} is invalid: a positive step, on a linear range only")
        if dist == "int":
            if not all(float(x).is_integer() for x in (lo, hi)) or (step is not None and not float(step).is_integer()):
                raise ConfigError(f"{w}: int needs integer low/high/step, got low={lo!r} high={hi!r} step={step!r}")
            lo, hi, step = int(lo), int(hi), (int(step) if step is not None else None)
        else:
            lo, hi = float(lo), float(hi)
        kw.update(low=lo, high=hi, log=log, step=step)
        if any(k in spec for k in ("values", "value")):
            raise ConfigError(f"{w}: {dist} takes low/high, not values/value")
    elif dist == "choice":
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{w}: choice needs a non-empty list 'values', got {vals!r}")
        for v in vals:
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise ConfigError(f"{w}: choice values must be str/int/float/bool, got {v!r}")
        if len(set(map(repr, vals))) != len(vals):
            raise ConfigError(f"{w}: choice values must be distinct, got {vals!r}")
        kw["values"] = tuple(vals)
    else:  # fixed
        if "value" not in spec:
            raise ConfigError(f"{w}: fixed needs 'value'")
        kw["value"] = spec["value"]
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"{w}: when must be a mapping {{earlier_param: value or [values]}}, got {when!r}")
    conds = []
    for k, v in when.items():
        if k not in earlier:
            raise ConfigError(f"{w}: when refers to {k!r}, which is not an earlier parameter "
                              f"(earlier: {', '.join(earlier) or 'none'})")
        if earlier[k].dist not in ("choice", "fixed"):
            raise ConfigError(f"{w}: when can only test a choice or fixed parameter; {k!r} is {earlier[k].dist}")
        vals = tuple(v) if isinstance(v, list) else (v,)
        bad = [x for x in vals if not earlier[k].contains(x)]
        if bad:
            raise ConfigError(f"{w}: when {k}={bad[0]!r} can never hold ({k} is {earlier[k].describe()})")
        conds.append((k, vals))
    return Param(name=name, dist=dist, when=tuple(conds), **kw)


def method_params(space: Space | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a sample that configures the method (run options removed)."""
    return {k: v for k, v in params.items() if k not in RUN_OPTIONS}


def _check_point(method: str, point: dict, where: str) -> None:
    """Validate one concrete point: run options by hand, the rest by building the
    method (its Config and its constructor's cross-field checks)."""
    for k, v in point.items():
        if k == "schedule" and v not in _SCHEDULES:
            raise ConfigError(f"{where}: schedule={v!r} is invalid; choose one of: {', '.join(_SCHEDULES)}")
        if k == "batch_size" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{where}: batch_size={v!r} is invalid: an integer >= 1")
    try:
        make(method, **method_params(None, point))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_space(method_or_path: str | Path) -> Space:
    """Load and validate a space: a packaged method name (``mezo``) or a YAML/JSON file."""
    data, src = _read(str(method_or_path))
    where = f"search space {src}"
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise ConfigError(f"{where}: 'method' must name a registered method, got {method!r}")
    if method not in REGISTRY:
        raise ConfigError(f"{where}: method {method!r} is not registered (yet); its Config is needed to validate "
                          f"the space (registered: {', '.join(method_names())})")
    cfg_cls = REGISTRY[method].Config
    fields = set(cfg_cls.model_fields)
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{where}: 'params' must be a non-empty mapping of name -> distribution")

    params: dict[str, Param] = {}
    for name, spec in raw_params.items():
        if name not in fields and name not in RUN_OPTIONS:
            raise ConfigError(f"{where}: params.{name} is not an option of {method} (its Config fields: "
                              f"{', '.join(sorted(fields))}; run options: {', '.join(RUN_OPTIONS)})")
        params[name] = _parse_param(name, spec, params, where)

    # defaults: concrete points, complete for every active non-fixed knob
    raw_defaults = data.get("defaults") or []
    if not isinstance(raw_defaults, list) or not all(isinstance(d, dict) for d in raw_defaults):
        raise ConfigError(f"{where}: 'defaults' must be a list of mappings (the papers' settings)")
    defaults: list[dict] = []
    for i, d in enumerate(raw_defaults):
        w = f"{where}: defaults[{i}]"
        point = _complete(params, d, w)
        _check_point(method, point, w)
        defaults.append(point)

    # each range end must be a valid config value (at the first default, or the Config's defaults)
    base = dict(defaults[0]) if defaults else {}
    for p in params.values():
        for v in p.extremes():
            point = {k: x for k, x in base.items() if k != p.name}
            for k, vals in p.when:  # make the knob active
                point[k] = vals[0]
            point[p.name] = v
            point = {k: x for k, x in point.items() if params[k].active(point)}
            _check_point(method, point, f"{where}: params.{p.name}={v!r}")
    return Space(method=method, params=tuple(params.values()), defaults=tuple(defaults), source=src,
                 paper=str(data.get("paper", "")), raw=data)


def _complete(params: dict[str, Param], d: dict, where: str) -> dict:
    unknown = set(d) - set(params)
    if unknown:
        raise ConfigError(f"{where}: {sorted(unknown)[0]!r} is not a parameter of the space "
                          f"({', '.join(params)})")
    out: dict[str, Any] = {}
    for p in params.values():
        if not p.active(out):
            if p.name in d:
                raise ConfigError(f"{where}: {p.name} is set but inactive here (needs "
                                  f"{', '.join(f'{k} in {list(v)}' for k, v in p.when)})")
            continue
        if p.name in d:
            v = d[p.name]
            if p.dist == "int" and isinstance(v, float) and v.is_integer():
                v = int(v)
            if not p.contains(v):
                raise ConfigError(f"{where}: {p.name}={v!r} is outside the space's {p.describe()}")
            out[p.name] = v
        elif p.dist == "fixed":
            out[p.name] = p.value
        else:
            raise ConfigError(f"{where}: no value for {p.name} ({p.describe()}); a default point sets every "
                              f"active knob")
    return out


# --------------------------------------------------------------------------- sampling
def sample(space: Space, trial) -> dict[str, Any]:
    """Define-by-run: draw one configuration through ``trial.suggest_*`` (an
    ``optuna.Trial`` or anything with the same methods), in the file's order,
    skipping inactive conditional knobs.  Returns every active value (fixed ones
    included).  No computation happens here (Ray warns above 1 s)."""
    out: dict[str, Any] = {}
    for p in space.params:
        if not p.active(out):
            continue
        if p.dist in ("log_uniform", "uniform"):
            v = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif p.dist == "int":
            v = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
        elif p.dist == "choice":
            v = trial.suggest_categorical(p.name, list(p.values))
        else:
            v = p.value
        out[p.name] = v
    return out


def to_points(space: Space) -> list[dict[str, Any]]:
    """The papers' default settings, as complete points (Ray ``points_to_evaluate``,
    Optuna ``enqueue_trial``) — fixed knobs are left out: they are not sampled."""
    fixed = {p.name for p in space.params if p.dist == "fixed"}
    return [{k: v for k, v in d.items() if k not in fixed} for d in space.defaults]
