"""issue 40: follow-ups found while fixing it — a blank line ending a trajectory is not a torn record,
``--set``/``--option`` values are read through the alias-bomb-safe YAML reader, and
``zo finetune --resume --out-dir D`` alone relaunches a ``--workers N`` run with its N workers.
Each failed on the code before (a false "torn record" warning, a hang, the world-size error)."""
import json
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

import pipelines.launch
from pipelines.cli import main as cli
from tests.test_finetune import needs_data
from tests.test_issue40_resume import checkpoint, ckpt, one_line_error  # noqa: F401  (fixtures)
from zoplatform.trajectory import Trajectory


@needs_data
def test_a_blank_line_at_the_end_of_a_trajectory_is_not_a_torn_record(ckpt):
    path = ckpt / "trajectory.jsonl"
    n = len(Trajectory.load(path).records)
    path.write_text(path.read_text() + "\n\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old code warned "last line ... is a torn record"
        assert len(Trajectory.load(path).records) == n


def test_an_alias_bomb_in_a_set_value_is_one_line():
    bomb = "[" + ",".join(["&a [x,x,x,x,x,x,x,x,x]"] + [f"&{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]"
                                                       for p, c in zip("abcdefgh", "bcdefghi")]) + "]"
    code = ("import sys; from pipelines.cli import main; "
            f"sys.argv = ['zo', 'sweep', '--set', 'lr={bomb}', '--trials', '1']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "alias" in lines[0], p.stderr[-2000:]


@needs_data
def test_resume_of_a_workers_run_relaunches_its_workers(ckpt, monkeypatch):
    state = json.loads((ckpt / "state.json").read_text())
    state["config"]["workers"] = 2  # as a `zo finetune --workers 2` run stores it
    (ckpt / "state.json").write_text(json.dumps(state))
    launched = []
    monkeypatch.setattr(pipelines.launch, "launch", lambda argv, workers, threads, out: launched.append(workers) or 0)
    res = CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(ckpt)])
    assert launched == [2], res.output  # before: no launch, then "workers=2 but this is a world of 1 process(es)"
    assert res.exit_code == 0


@needs_data
def test_resume_of_a_finished_run_is_one_line_and_rewrites_nothing(ckpt):
    done = CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(ckpt)])
    assert done.exit_code == 0, done.output
    before = (ckpt / "summary.json").read_bytes()
    res = CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(ckpt)])
    line = one_line_error(res)  # before: exit 0, the test set evaluated again and summary.json rewritten
    assert "holds a finished run" in line and "nothing to resume" in line
    assert (ckpt / "summary.json").read_bytes() == before
