"""Test-only fault injection for data-parallel runs (put this directory on PYTHONPATH): with
ZO_TEST_KILL_RANK=r and ZO_TEST_KILL_AT_STEP=k, worker r exits abruptly at its k-th ZO step, as a
crashed machine would.  Not shipped: the package never imports it."""
import os

if os.environ.get("ZO_TEST_KILL_RANK") is not None and os.environ.get("RANK") == os.environ["ZO_TEST_KILL_RANK"]:
    import zoplatform.loop as _loop

    _at, _calls = int(os.environ.get("ZO_TEST_KILL_AT_STEP", "3")), {"n": 0}
    _orig = _loop.ZOStepper.__call__

    def _dying(self, batch):
        _calls["n"] += 1
        if _calls["n"] == _at:
            os._exit(17)
        return _orig(self, batch)

    _loop.ZOStepper.__call__ = _dying
