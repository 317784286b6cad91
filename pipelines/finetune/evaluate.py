"""Recipe: zero-shot evaluation, or evaluation of a ZO checkpoint.

A ZO checkpoint is a trajectory: the base model is loaded as the run started
(the run's seed; its LoRA adapter when it recorded one), checked against the
trajectory's layout and initial-values digest, and the recorded steps are
replayed on it (no forward passes; the same parallel engine and
precision mode as training, with a progress bar) before evaluating.
"""
from __future__ import annotations

from typing import Any

from zoplatform.errors import ConfigError


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name}={value} is invalid: must be >= 1")


def run_eval(*, model: str, task: str, trajectory: str | None = None, split: str = "test", num_train: int = 1000,
             num_dev: int | None = None, num_test: int = 1000, seed: int = 0, batch_size: int = 32,
             data_dir: str | None = None, device: str = "cpu", dtype: str | None = None,
             precision: str | None = None, steps: int | None = None, threads: int | None = None,
             protocol: str | None = None, progress: bool = False) -> dict[str, Any]:
    import torch

    import zoplatform
    from zoplatform.data import get_task, resolve_data_dir, sample_splits
    from zoplatform.loop import evaluate
    from zoplatform.models import LORA_DEFAULTS, check_spec, default_protocol, load_model
    from zoplatform.objectives import make_scorer
    from zoplatform.params import set_threads
    from zoplatform.precision import DTYPE_NAMES, cast_model_, check_precision, load_dtype, with_masters
    from zoplatform.trajectory import Trajectory, check_applies

    for name, value in (("batch_size", batch_size), ("num_test", num_test), ("num_train", num_train),
                        ("num_dev", num_dev), ("threads", threads)):
        _positive(name, value)
    if steps is not None and steps < 0:
        raise ConfigError(f"steps={steps} is invalid: must be >= 0")
    if steps is not None and trajectory is None:
        raise ConfigError("steps needs --trajectory (the number of its steps to replay)")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise ConfigError(f"dtype={dtype!r} is invalid; allowed: {', '.join(DTYPE_NAMES)}")
    t = get_task(task)
    check_spec(model)
    traj = Trajectory.load(trajectory) if trajectory else None
    stored = (traj.info.get("precision") if traj else None) or "fp32"
    precision = check_precision(precision or (DTYPE_NAMES[dtype] if dtype else stored))
    if traj is not None and precision != stored:
        raise ConfigError(f"{trajectory} was trained in precision {stored!r}; replay it in the same mode "
                          f"(--precision {stored}), not {precision!r}")
    records = traj.records if traj else []
    if steps is not None:
        if steps > len(records):
            raise ConfigError(f"steps={steps} exceeds the {len(records)} steps in {trajectory}")
        records = records[:steps]
    method = zoplatform.make(traj.method, **traj.config) if traj else None
    from pipelines.finetune import split_sizes

    if threads is not None:
        torch.set_num_threads(threads)
        set_threads(threads)
    data_dir = resolve_data_dir(data_dir)
    num_train, num_dev = split_sizes(task, data_dir, num_train, num_dev)
    splits = sample_splits(task, data_dir=data_dir, num_train=num_train, num_dev=num_dev, num_test=num_test, seed=seed)
    protocol = protocol or default_protocol(model)
    # a trajectory applies to the weights its run started from: the run's seed (tiny weights, a fresh head) and
    # its recorded LoRA adapter (config + seed); check_applies refuses anything else before a step is applied
    spec = traj.info.get("lora") if traj else None
    lora = {k: spec[k] for k in LORA_DEFAULTS if k in spec} if spec else None
    if traj is None:
        init_seed = seed
    else:
        init_seed = spec["seed"] if spec and spec.get("seed") is not None else traj.run_seed
    m, tok = load_model(model, dtype=load_dtype(precision), device=device, protocol=protocol,
                        num_labels=t.num_labels, lora=lora, seed=init_seed)
    if traj is not None:
        blocks = with_masters(zoplatform.model_blocks(m), precision)
        check_applies(traj, blocks)
        cast_model_(m, precision)
        zoplatform.replay(method, blocks, records, progress=progress)
    else:
        cast_model_(m, precision)
    r = evaluate(make_scorer(m, tok, protocol=protocol), splits.dev if split == "dev" else splits.test, batch_size)
    return {"model": model, "task": task, "split": split, "accuracy": r.accuracy, "loss": r.loss, "n": r.n,
            "precision": precision, "steps_applied": len(records)}
