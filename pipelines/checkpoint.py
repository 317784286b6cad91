"""A fine-tune run's out dir: its lock, its checkpoint and the rules for resuming it.

The checkpoint of a ZO run is two files, written in this order at every dev evaluation:
``trajectory.jsonl`` (header + one record per step; replaying it on the base weights gives the
run's weights bit-exactly) and ``state.json`` (history, MLflow run id, the run's config, and
the step count and sha256 of the trajectory prefix it vouches for).  Both are replaced
atomically.  On resume the two are cross-checked: a torn last trajectory line is recovered
(with a warning), a trajectory shorter than the state's step count or with other records is
refused in one line, and the stored config is the run's identity — a resume that asks for
another model, task, method, lr, seed, batch size, data size or precision is refused naming
the field, while ``zo finetune --resume --out-dir DIR`` alone continues the stored run.

The out dir is locked (an advisory ``flock`` on ``DIR/.lock``) for the run's life, so two runs
never write the same checkpoint; the kernel drops the lock when its process dies, so a lock
left by a killed run never blocks a resume.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

from zoplatform.errors import ConfigError, DataError
from zoplatform.jsonio import write_json

STATE_FILE, TRAJECTORY_FILE, LOCK_FILE = "state.json", "trajectory.jsonl", ".lock"

# The run's identity: fields whose change would make the resumed trajectory a different run's.
IDENTITY = ("model", "task", "method", "lr", "eps", "weight_decay", "schedule", "direction", "method_options",
            "policy", "batch_size", "seed", "num_train", "num_dev", "num_test", "max_length", "data_dir",
            "protocol", "head_init", "lora", "lora_r", "lora_alpha", "device", "dtype", "precision")
# Options that only say how to resume (always allowed to differ).
HOW = ("resume", "out_dir", "progress", "tracking", "threads", "workers")


class OutDirLock:
    """Exclusive advisory lock on ``<out_dir>/.lock`` (holder's pid and host inside)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"out_dir {self.path.parent} is in use by another run ({holder}); wait for it to "
                              f"end or choose another --out-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_state(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); the checkpoint is damaged") from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resume_config(cfg, saved: dict[str, Any] | None):
    """The config a resume runs with: the stored one, plus the options that may change.

    ``cfg`` is the config the user gave; the fields they set explicitly (pydantic's
    ``model_fields_set``) must agree with the stored run on every identity field."""
    stored = (saved or {}).get("config")
    if not stored:
        return cfg
    identity = set(IDENTITY) | ({"steps"} if stored.get("schedule", "constant") != "constant" else set())
    given = {k: getattr(cfg, k) for k in cfg.model_fields_set if k not in HOW}
    for k in sorted(given):
        if k in identity and k in stored and not _same(given[k], stored[k]):
            raise ConfigError(f"resume: {k}={given[k]!r} differs from the stored run's {k}={stored[k]!r} "
                              f"(a resume continues that run; start a new --out-dir to change {k})")
    merged = {k: v for k, v in stored.items() if k in type(cfg).model_fields}
    merged.update(given)
    merged.update({k: getattr(cfg, k) for k in HOW if k in cfg.model_fields_set})
    merged["resume"], merged["out_dir"] = True, cfg.out_dir
    return type(cfg)(**merged)


def load_trajectory(out_dir: Path, saved: dict[str, Any]):
    """The checkpoint's trajectory, cross-checked against ``state.json``."""
    from zoplatform.trajectory import Trajectory

    path = Path(out_dir) / TRAJECTORY_FILE
    traj = Trajectory.load(path, on_torn=lambda m: warnings.warn(m, stacklevel=3))
    done = int(saved["history"]["steps_done"])
    if len(traj.records) < done:
        raise DataError(f"{path} holds {len(traj.records)} records but the checkpoint is at step {done}: the file "
                        f"was cut or edited, so the run cannot resume exactly; start a new --out-dir")
    want = saved.get("trajectory_sha256")
    if want is not None and traj.digest(done) != want:
        raise DataError(f"{path}: its first {done} records differ from the ones the checkpoint recorded "
                        f"(sha256 mismatch); the file was edited, so the run cannot resume exactly")
    return traj


def write_checkpoint(out_dir: Path, traj, state: dict[str, Any]) -> None:
    """Trajectory first, then the state that vouches for its first ``steps_done`` records."""
    done = int(state["history"]["steps_done"])
    if traj is not None:
        traj.save(Path(out_dir) / TRAJECTORY_FILE)
        state = state | {"trajectory_records": done, "trajectory_sha256": traj.digest(done)}
    write_json(Path(out_dir) / STATE_FILE, state)
