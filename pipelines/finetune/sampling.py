"""A fine-tune's data sample: MeZO's split sizes and the seeded train/dev/test sample with the bounds that
depend on it (split out of :mod:`pipelines.finetune`, which re-exports these names)."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING

from zoplatform.errors import ConfigError

if TYPE_CHECKING:
    from .config import FinetuneConfig

SMALL_TRAIN_TASKS = {"cb", "copa", "wsc"}  # dev = 100 (MeZO: CB/COPA; WSC has 554 train rows)


def split_sizes(task: str, data_dir, num_train: int, num_dev: int | None) -> tuple[int, int]:
    """MeZO's sizes (§1.3): dev 500 (100 for CB/COPA); on small train sets
    (CB, COPA, WSC) train on what is left after dev, as MeZO's code does."""
    from zoplatform.data import load_split

    num_dev = num_dev or (100 if task in SMALL_TRAIN_TASKS else 500)
    try:
        available = len(load_split(task, "train", data_dir))
    except Exception:  # e.g. BoolQ here has no train file: sample_splits handles it
        return num_train, num_dev
    if num_train + num_dev > available:
        num_dev = min(num_dev, 100 if available > 200 else max(1, available // 4))
        num_train = min(num_train, available - num_dev)
    return num_train, num_dev


def sample_data(cfg: FinetuneConfig, data_dir):
    """The run's train/dev/test sample, and the bounds that depend on it (checked before any work)."""
    from zoplatform.data import sample_splits

    num_train, num_dev = split_sizes(cfg.task, data_dir, cfg.num_train, cfg.num_dev)
    splits = sample_splits(cfg.task, data_dir=data_dir, num_train=num_train, num_dev=num_dev,
                           num_test=cfg.num_test, seed=cfg.seed)
    capped = [f"{k}={want} (the run uses {got})" for k, want, got in
              [("num_train", cfg.num_train, len(splits.train)), ("num_dev", cfg.num_dev, len(splits.dev))]
              if want is not None and got < want]
    if capped:  # said, never silent: printed once, and recorded as the run's data_note (summary, MLflow tag)
        note = (f"{cfg.task}: requested {' and '.join(capped)}: its train split holds fewer examples "
                f"(train and dev are sampled from it)")
        splits = dataclasses.replace(splits, note="; ".join(x for x in (note, splits.note) if x))
        if os.environ.get("RANK", "0") == "0":  # one line, from the main worker only
            print(f"note: {note}", file=sys.stderr, flush=True)
    if cfg.steps > 0 and cfg.batch_size > len(splits.train):
        raise ConfigError(f"batch_size={cfg.batch_size} exceeds the {len(splits.train)} train examples of "
                          f"{cfg.task}; allowed: 1..{len(splits.train)}")
    return splits
