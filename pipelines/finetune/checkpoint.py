"""A fine-tune run's out dir: its lock, its checkpoint and the rules for resuming it.

The checkpoint of a ZO run is two files, written in this order at every dev evaluation:
``trajectory.jsonl`` (header + one record per step; replaying it on the base weights gives the
run's weights bit-exactly) and ``state.json`` (history, MLflow run id, the run's config, and
the step count and sha256 of the trajectory prefix it vouches for).  Both are replaced
atomically.  ``state.json`` is validated whole before any work (:class:`StateFile`: types and
ranges, the cross-field rules the loop keeps, the stored config); a missing or damaged one is
one :class:`DataError` line naming the file and the field.  On resume the two files are
cross-checked: a torn last trajectory line (a crash mid-write) is dropped and the run resumes,
with one warning, when the complete records still cover the state's step count; a trajectory
missing records the state vouches for, or with other records, is refused in one line.  The
stored config is the run's identity — a resume that asks for another model, task, method, lr,
seed, batch size, data size or precision is refused naming the field (a value equal to the
stored one, or to what it resolved to, is accepted), while ``zo finetune --resume --out-dir
DIR`` alone continues the stored run.

The out dir is locked (an advisory ``flock`` on ``DIR/.lock``) for the run's life, so two runs
never write the same checkpoint; the kernel drops the lock when its process dies, so a lock
left by a killed run never blocks a resume.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoplatform.errors import ConfigError, DataError
from zoplatform.jsonio import write_json

STATE_FILE, TRAJECTORY_FILE = "state.json", "trajectory.jsonl"

# The run's identity: fields whose change would make the resumed trajectory a different run's.
IDENTITY = ("model", "task", "method", "lr", "eps", "weight_decay", "schedule", "direction", "method_options",
            "policy", "batch_size", "seed", "num_train", "num_dev", "num_test", "max_length", "data_dir",
            "protocol", "head_init", "lora", "lora_r", "lora_alpha", "device", "dtype", "precision")
# Options that only say how to resume (always allowed to differ).
HOW = ("resume", "out_dir", "progress", "tracking", "threads", "workers")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class EvalState(_Strict):
    step: int = Field(ge=0)
    dev_loss: float
    dev_accuracy: float = Field(ge=0, le=1)
    forwards: int = Field(ge=0)
    wall_s: float = Field(ge=0)


class HistoryState(_Strict):
    """:class:`zoplatform.loop.History` as ``state.json`` holds it (no best dev loss yet: null)."""
    train: list[tuple[int, float | None]]
    evals: list[EvalState]
    best_step: int = Field(ge=0)
    best_dev_accuracy: float = Field(ge=-1, le=1)  # -1: no evaluation yet
    best_dev_loss: float | None
    forwards: int = Field(ge=0)
    steps_done: int = Field(ge=0, le=10_000_000)
    wall_s: float = Field(ge=0)


class StateFile(_Strict):
    """The schema of ``state.json`` (what :func:`write_checkpoint` writes)."""
    run_id: str | None = None
    history: HistoryState
    zero_shot_test_accuracy: float | None = Field(None, ge=0, le=1)
    config: dict[str, Any]
    trajectory_records: int | None = Field(None, ge=0)
    trajectory_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


def _damaged(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; the checkpoint is damaged: restore it, or start a new --out-dir")


def _invalid(err: ValidationError, prefix: str = "") -> str:
    """pydantic's first problem as ``field=value is invalid: why`` (the field as a dotted path)."""
    e = err.errors()[0]
    loc = ".".join([prefix] * bool(prefix) + [str(x) for x in e["loc"]]) or "(the state)"
    if e["type"] == "missing":
        return f"{loc} is missing"
    if not e["loc"]:  # a rule across fields (a model validator): the input is the whole mapping
        return f"{loc} is invalid: {e['msg'].removeprefix('Value error, ')}"
    got = repr(e.get("input"))
    return f"{loc}={got if len(got) <= 60 else got[:57] + '...'} is invalid: {e['msg']}"


def _consistent(path: Path, st: StateFile) -> None:
    """Cross-field rules of a checkpoint that the loop itself keeps (one line naming the field)."""
    h = st.history
    done = h.steps_done
    if [s for s, _ in h.train] != list(range(1, len(h.train) + 1)) or len(h.train) != done:
        raise _damaged(path, f"history.steps_done={done} disagrees with history.train ({len(h.train)} steps "
                             f"recorded, numbered 1..n)")
    steps = [e.step for e in h.evals]
    if steps != sorted(set(steps)) or (steps and steps[-1] > done):
        raise _damaged(path, f"history.evals steps {steps} must increase and be at most steps_done={done}")
    fwd = [e.forwards for e in h.evals]
    if fwd != sorted(fwd) or (fwd and fwd[-1] > h.forwards):
        raise _damaged(path, f"history.evals forwards must not decrease nor exceed history.forwards={h.forwards}")
    if done == 0 and h.forwards != 0:
        raise _damaged(path, f"history.forwards={h.forwards} but no step was done")
    if not 0 <= h.best_step <= done:
        raise _damaged(path, f"history.best_step={h.best_step} must be in 0..steps_done={done}")
    best = {e.step: e for e in h.evals}.get(h.best_step)
    if h.evals and (best is None or best.dev_accuracy != h.best_dev_accuracy):
        raise _damaged(path, f"history.best_step={h.best_step} with best_dev_accuracy={h.best_dev_accuracy} is not "
                             f"one of history.evals (steps {steps})")
    if not h.evals and (h.best_step != 0 or h.best_dev_accuracy != -1):
        raise _damaged(path, f"history.best_step={h.best_step} / best_dev_accuracy={h.best_dev_accuracy} but "
                             f"history.evals is empty")
    if st.trajectory_records is not None and st.trajectory_records != done:
        raise _damaged(path, f"trajectory_records={st.trajectory_records} differs from history.steps_done={done}")


def read_state(out_dir: Path) -> dict[str, Any] | None:
    """``state.json`` of ``out_dir`` (None when there is none), validated whole: its schema
    (:class:`StateFile`), its cross-field rules and its stored config; any problem is one
    :class:`DataError` line naming the file and the field."""
    from .config import FinetuneConfig

    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read ({e}); the checkpoint is damaged") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise _damaged(path, f"holds {kind} ({text.strip()[:40]}), not a checkpoint (a JSON object with history, "
                             f"config, ...)")
    try:
        st = StateFile.model_validate_json(text)
    except ValidationError as err:
        raise _damaged(path, _invalid(err)) from None
    _consistent(path, st)
    stored = {k: v for k, v in st.config.items() if k in FinetuneConfig.model_fields}
    try:
        FinetuneConfig(**stored)
    except ValidationError as err:
        raise _damaged(path, _invalid(err, "config")) from None
    return data


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _resolved(cfg) -> dict[str, Any]:
    """The values a config runs with: its precision mode and the method's hyperparameters with the method's
    defaults filled in (``--eps 0.001`` and an unset eps are the same MeZO run)."""
    import zoplatform

    from .config import FO_METHODS, method_hyper, run_precision

    out = cfg.model_dump() | {"precision": run_precision(cfg)}
    if cfg.method in FO_METHODS:
        out["lr"] = cfg.lr or 1e-5
        return out
    try:
        hyper = zoplatform.get_method(cfg.method)(**method_hyper(cfg)).config.model_dump()
    except Exception:  # noqa: BLE001 - an unknown method or a bad option: compared as given (check_inputs names it)
        return out
    out.update({k: hyper[k] for k in ("lr", "eps", "direction", "weight_decay") if k in hyper})
    out["method_options"] = {k: hyper.get(k, v) for k, v in cfg.method_options.items()}
    return out


def resume_config(cfg, saved: dict[str, Any] | None):
    """The config a resume runs with: the stored one, plus the options that may change.

    ``cfg`` is the config the user gave; the fields they set explicitly (pydantic's
    ``model_fields_set``) must agree with the stored run on every identity field: a value equal
    to the stored one, or to what the stored run resolved it to (its precision mode, the method's
    default eps, ...), is accepted; a different value is refused naming the field."""
    if saved is None:
        raise DataError(f"resume: {Path(cfg.out_dir) / STATE_FILE} does not exist: --resume continues the run "
                        f"whose checkpoint is in --out-dir; check the path, or start a new run without --resume")
    stored = saved["config"]
    identity = set(IDENTITY) | ({"steps"} if stored.get("schedule", "constant") != "constant" else set())
    given = {k: getattr(cfg, k) for k in cfg.model_fields_set if k not in HOW}
    fields = type(cfg).model_fields
    base = type(cfg)(**{k: v for k, v in stored.items() if k in fields})
    clash = sorted(k for k in given if k in identity and k in stored and not _same(given[k], stored[k]))
    if clash:
        try:
            mine = _resolved(type(cfg)(**({k: v for k, v in stored.items() if k in fields} | given)))
        except ValueError:  # e.g. precision given where the stored run named dtype: compare field by field
            mine = None
        have = _resolved(base)
        for k in clash:
            if mine is not None and _same(mine.get(k), have.get(k)):
                del given[k]  # the same value in another spelling: the stored one is kept
                continue
            if k == "precision" and _same(given[k], have["precision"]):
                del given[k]
                continue
            raise ConfigError(f"resume: {k}={given[k]!r} differs from the stored run's {k}={stored[k]!r}"
                              + (f" (resolved: {have[k]!r})" if have.get(k) != stored[k] else "")
                              + f" (a resume continues that run; start a new --out-dir to change {k})")
    merged = {k: v for k, v in stored.items() if k in fields}
    merged.update(given)
    merged.update({k: getattr(cfg, k) for k in HOW if k in cfg.model_fields_set})
    merged["resume"], merged["out_dir"] = True, cfg.out_dir
    return type(cfg)(**merged)


def load_trajectory(out_dir: Path, saved: dict[str, Any], *, warn: bool = True):
    """The checkpoint's trajectory, cross-checked against ``state.json``.

    A last line torn by a crash mid-write is dropped: when the complete records before it still
    cover every record the state vouches for (``steps_done``; a crash while the next checkpoint was
    written leaves the state of the one before), the run resumes, with one warning; when records
    the state vouches for are missing, or they differ from its sha256, it is refused in one line."""
    from zoplatform.trajectory import Trajectory

    path = Path(out_dir) / TRAJECTORY_FILE
    torn: list[str] = []
    traj = Trajectory.load(path, on_torn=torn.append)
    done = int(saved["history"]["steps_done"])
    if len(traj.records) < done:
        cut = f" (complete ones: its {torn[0].split(': ', 1)[-1]})" if torn else ""
        raise DataError(f"{path} holds {len(traj.records)} records{cut} but the checkpoint is at step {done}: the "
                        f"file was cut or edited, so the run cannot resume exactly; start a new --out-dir")
    want = saved.get("trajectory_sha256")
    if want is not None and traj.digest(done) != want:
        raise DataError(f"{path}: its first {done} records differ from the ones the checkpoint recorded "
                        f"(sha256 mismatch); the file was edited, so the run cannot resume exactly")
    if torn and warn:
        warnings.warn(f"{torn[0]}; the checkpoint vouches for {done} of them, so the run resumes from step {done}",
                      stacklevel=2)
    return traj


def discard_stub(out_dir: Path) -> bool:
    """Remove the step-0 ``state.json`` a new run wrote before it failed (in its model or policy load, its
    zero-shot evaluation, ...): it holds nothing but the MLflow run id, and left behind it would refuse the
    retry of the same command as "an unfinished run".  Returns whether it was removed."""
    path = Path(out_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    h = state.get("history") if isinstance(state, dict) else None
    if isinstance(h, dict) and h.get("steps_done") == 0 and not h.get("evals") and \
            not (Path(out_dir) / "summary.json").exists() and not (Path(out_dir) / TRAJECTORY_FILE).exists():
        path.unlink(missing_ok=True)
        return True
    return False


def write_checkpoint(out_dir: Path, traj, state: dict[str, Any]) -> None:
    """Trajectory first, then the state that vouches for its first ``steps_done`` records."""
    done = int(state["history"]["steps_done"])
    if traj is not None:
        traj.save(Path(out_dir) / TRAJECTORY_FILE)
        state = state | {"trajectory_records": done, "trajectory_sha256": traj.digest(done)}
    write_json(Path(out_dir) / STATE_FILE, state)
