"""Ray for the pipelines (``zo sweep --backend ray``, ``zo compare --backend ray``)."""
from __future__ import annotations

import os


def connect() -> bool:
    """Connect to ``RAY_ADDRESS`` (bare ``ray.init()``) or start a local Ray sized to
    the machine.  Returns whether this call started it (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(include_dashboard=False)
    return True
