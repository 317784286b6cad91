"""Ray for the pipelines (``zo sweep --backend ray``, ``zo compare --backend ray``): connect, and signals.

:func:`connect` either joins the cluster ``RAY_ADDRESS`` names (a bare ``ray.init()``: the cluster decides its
addresses and auth) or starts a local Ray that is reachable from this machine only:

- **loopback only**: every Ray service of a local start (GCS, raylet, object manager, workers, runtime-env agent)
  listens on 127.0.0.1.  Ray 2.60 rewrites ``ray.init(_node_ip_address="127.0.0.1")`` to the node's routable
  address (``services.resolve_ip_for_localhost``: "Make sure localhost isn't resolved to the loopback ip") unless
  its cluster mode is off, and without it the gRPC servers listen on all interfaces (verified with ``ss -ltnp``);
  so a local start turns Ray's private ``ray_constants.ENABLE_RAY_CLUSTER`` off for the duration of
  ``ray.init`` (the switch Ray itself uses on macOS and Windows).  ``tests/test_sweep.py`` checks the listening
  sockets, so a Ray upgrade that changes this fails there, not silently.
- **no dashboard** (``include_dashboard=False``: no web UI, no job-submission endpoint).
- **SIGTERM = SIGINT**: ``ray.init`` replaces the process's SIGTERM handler with one that kills Ray's processes
  and calls ``sys.exit(1)`` (so a ``kill``ed sweep driver ended FAILED with ``SystemExit: 1`` and left its trials'
  runs RUNNING).  :func:`connect` puts back a handler that does what Ctrl-C does at that moment: inside
  ``Tuner.fit`` Tune's own SIGINT handler (save the experiment, stop the trials, return), elsewhere
  ``KeyboardInterrupt``.
"""
from __future__ import annotations

import math
import os
import signal

from zoplatform.errors import ConfigError

LOOPBACK = "127.0.0.1"


def sigterm_as_sigint(signum, frame) -> None:
    """A SIGTERM handler that does what SIGINT would do now (Tune's handler during ``fit``, else Ctrl-C)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job of a non-interactive shell) or default: still stop, as Ctrl-C
        raise KeyboardInterrupt("SIGTERM")


def connect() -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local, loopback-only Ray without a dashboard, sized to the machine.

    Returns whether this call started Ray (the caller then shuts it down)."""
    import threading

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        from ray._private import ray_constants  # private: see the module docstring

        cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(include_dashboard=False, _node_ip_address=LOOPBACK)
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm_as_sigint)
    return True


def run_tasks(submit, jobs, on_done, max_pending: int | None = None) -> None:
    """Run ``submit(job)`` (a Ray task's ObjectRef) for every job, at most ``max_pending`` in flight (None: all at
    once), and call ``on_done(job, result, error)`` as each finishes; a task that raised (a lost worker) gives
    ``result=None`` and the error's one line, and fails only its job.  Ctrl-C cancels the tasks still in flight."""
    import ray

    todo, pending = list(jobs), {}
    try:
        while todo or pending:
            while todo and (max_pending is None or len(pending) < max_pending):
                job = todo.pop(0)
                pending[submit(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                result, error = ray.get(ready[0]), None
            except Exception as e:  # noqa: BLE001 - a lost worker fails its job, not the batch
                result, error = None, f"{type(e).__name__}: {e}"[:300]
            on_done(job, result, error)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def parse_resources(spec: str) -> dict[str, float]:
    """``cpu=2,gpu=0.25`` -> ``{"cpu": 2.0, "gpu": 0.25}`` (fractional GPUs must be 1/k)."""
    out: dict[str, float] = {}
    for item in [s for s in spec.split(",") if s.strip()]:
        if "=" not in item:
            raise ConfigError(f"--resources item {item!r} must look like cpu=N or gpu=N")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in ("cpu", "gpu"):
            raise ConfigError(f"--resources: unknown resource {k!r}; use cpu and gpu")
        try:
            x = float(v)
        except ValueError:
            raise ConfigError(f"--resources: {k}={v!r} is not a number") from None
        if not math.isfinite(x) or x < 0 or (k == "cpu" and x == 0):
            raise ConfigError(f"--resources: {k}={v} is invalid: cpu must be > 0, gpu >= 0")
        if k == "gpu" and 0 < x < 1 and abs(1 / x - round(1 / x)) > 1e-6:
            raise ConfigError(f"--resources: gpu={v} is not 1/k (0.5, 0.25, ...): Ray packs fractional GPUs "
                              f"correctly only for 1/k shares")
        if k == "gpu" and x > 1 and not x.is_integer():
            raise ConfigError(f"--resources: gpu={v} is invalid: more than one GPU must be a whole number")
        out[k] = x
    out.setdefault("cpu", 1.0)
    out.setdefault("gpu", 0.0)
    return out
