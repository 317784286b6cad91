"""How a tracked run ends: the shared outcome rule of every pipeline (finetune, meta-train, sweep, compare)."""
import pytest

from zoplatform.tracking import ending, flatten


class Recorder:
    run_id = "r"

    def __init__(self):
        self.ended = []

    def end(self, status="FINISHED", reason=None, clear_reason=False):
        self.ended.append((status, reason))


def test_finished_by_default_and_block_outcome_kept():
    t = Recorder()
    with ending(t, "continue with X"):
        pass
    with ending(t, "continue with X") as out:
        out.status, out.reason = "FAILED", "2 run(s) failed"
    assert t.ended == [("FINISHED", None), ("FAILED", "2 run(s) failed")]


def test_error_ends_failed_with_reason_and_reraises():
    t = Recorder()
    with pytest.raises(ValueError, match="bad lr"), ending(t, "continue with X") as out:
        out.status = "FINISHED"
        raise ValueError("bad lr")
    assert t.ended == [("FAILED", "ValueError: bad lr")]


def test_interrupt_ends_killed_with_hint_after_the_hook():
    t, calls = Recorder(), []
    with pytest.raises(KeyboardInterrupt):
        with ending(t, "continue with: zo finetune --resume", on_interrupt=lambda: calls.append(list(t.ended))):
            raise KeyboardInterrupt
    assert calls == [[]]  # the hook (a checkpoint) runs before the run is ended
    assert t.ended == [("KILLED", "continue with: zo finetune --resume")]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
