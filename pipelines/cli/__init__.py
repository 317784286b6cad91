"""The ``zo`` command line: :mod:`.main` (the group and the run commands) and :mod:`.bench` (``zo bench``)."""
from . import bench  # noqa: F401  (registers the bench group's commands on main)
from .main import main

__all__ = ["main"]
