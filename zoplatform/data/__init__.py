"""Tasks, prompt templates and MeZO-style seeded splits (see :mod:`zoplatform.data.tasks`)."""
from zoplatform.data.loading import FIXTURE_DIR, HUB, resolve_data_dir
from zoplatform.data.tasks import SPLITS, TASKS, Task, get_task, load_split, sample_splits

__all__ = ["FIXTURE_DIR", "HUB", "SPLITS", "TASKS", "Task", "get_task", "load_split", "resolve_data_dir", "sample_splits"]
