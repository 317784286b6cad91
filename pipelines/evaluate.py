"""Recipe: zero-shot evaluation, or evaluation of a ZO checkpoint.

A ZO checkpoint is a trajectory: the base model is loaded and the recorded
steps are replayed on it (no forward passes) before evaluating.
"""
from __future__ import annotations

from typing import Any


def run_eval(*, model: str, task: str, trajectory: str | None = None, split: str = "test", num_train: int = 1000,
             num_dev: int | None = None, num_test: int = 1000, seed: int = 0, batch_size: int = 32,
             data_dir: str | None = None, device: str = "cpu", dtype: str = "float32",
             protocol: str | None = None) -> dict[str, Any]:
    import zoplatform
    from zoplatform.data import get_task, resolve_data_dir, sample_splits
    from zoplatform.loop import evaluate
    from zoplatform.models import check_spec, default_protocol, load_model
    from zoplatform.objectives import make_scorer
    from zoplatform.trajectory import Trajectory, layout_digest

    t = get_task(task)
    check_spec(model)
    traj = Trajectory.load(trajectory) if trajectory else None
    method = zoplatform.make(traj.method, **traj.config) if traj else None
    from pipelines.finetune import split_sizes

    data_dir = resolve_data_dir(data_dir)
    num_train, num_dev = split_sizes(task, data_dir, num_train, num_dev)
    splits = sample_splits(task, data_dir=data_dir, num_train=num_train, num_dev=num_dev, num_test=num_test, seed=seed)
    protocol = protocol or default_protocol(model)
    m, tok = load_model(model, dtype=dtype, device=device, protocol=protocol, num_labels=t.num_labels, seed=seed)
    if traj is not None:
        blocks = zoplatform.model_blocks(m)
        if traj.layout != layout_digest(blocks):
            raise zoplatform.ZOError(f"{trajectory} does not match the parameter layout of {model}")
        zoplatform.replay(method, blocks, traj.records)
    r = evaluate(make_scorer(m, tok, protocol=protocol), splits.dev if split == "dev" else splits.test, batch_size)
    return {"model": model, "task": task, "split": split, "accuracy": r.accuracy, "loss": r.loss, "n": r.n,
            "steps_applied": len(traj.records) if traj else 0}
