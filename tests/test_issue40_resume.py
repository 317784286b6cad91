"""issue 40: resume and checkpoint state — nothing silently wrong or misleading.

``--resume`` without a readable checkpoint, a state.json with wrong values or types, a torn
trajectory, the printed resume command, equal values given on resume, a new run over a finished
one, a retry after a failed model load and a capped ``--num-train``.  Each test failed on the code
before the fix (a run with every default over the old trajectory, tracebacks, exit 0 with another
trajectory, a refusal after the model loaded, ...)."""
import json
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoplatform
import zoplatform.models
from pipelines.cli import main as cli
from pipelines.finetune import FinetuneConfig, load_config, run
from pipelines.finetune.runinfo import resume_command
from tests.test_finetune import TINY, needs_data
from tests.test_reliability import interrupt_at
from zoplatform.errors import ConfigError, DataError

BASE = {k: v for k, v in TINY.items() if k != "eps"}  # eps left to the method's default (1e-3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An interrupted 16-step run: state.json at step 11 (evaluations at 0, 5, 10), 11 trajectory records."""
    root = tmp_path_factory.mktemp("ckpt")
    base = BASE | dict(steps=16, tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="t", out_dir=str(root / "x"))
    with pytest.MonkeyPatch.context() as mp:
        interrupt_at(mp, 12)
        with pytest.raises(KeyboardInterrupt):
            run(load_config(None, base))
    state = json.loads((root / "x" / "state.json").read_text())
    assert state["history"]["steps_done"] == 11 and [e["step"] for e in state["history"]["evals"]] == [0, 5, 10]
    return root / "x", base


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    out = tmp_path / "x"
    shutil.copytree(checkpoint[0], out)
    return out


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: refusals come before any work."""
    def load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoplatform.models, "load_model", load)


def edit_state(out: Path, fn):
    state = json.loads((out / "state.json").read_text())
    new = fn(state)
    (out / "state.json").write_text(json.dumps(state if new is None else new))


def one_line_error(res):
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


# -- H1: --resume with no readable checkpoint -----------------------------------------------------------
@needs_data
@pytest.mark.parametrize("damage", ["deleted", "[]", "null"])
def test_resume_without_a_readable_state_is_refused_before_any_work(ckpt, tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    traj = (ckpt / "trajectory.jsonl").read_bytes()
    if damage == "deleted":
        (ckpt / "state.json").unlink()
    else:
        (ckpt / "state.json").write_text(damage)
    line = one_line_error(CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(ckpt)]))
    assert f"{ckpt}/state.json" in line
    assert ("does not exist" if damage == "deleted" else "not a checkpoint") in line
    assert (ckpt / "trajectory.jsonl").read_bytes() == traj  # the old trajectory is untouched
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()  # no run with defaults


# -- H2 and 9: a state.json with wrong values or types ------------------------------------------------------
def _set(*path_value):
    *path, value = path_value

    def fn(state):
        d = state
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return fn


DAMAGES = [  # (how, the field the one line must name)
    (_set("history", "steps_done", -5), "history.steps_done=-5"),
    (_set("history", "steps_done", 9), "history.steps_done=9"),  # the right type, but 11 steps recorded
    (_set("history", "best_step", "x"), "history.best_step='x'"),
    (_set("history", "best_step", 12), "history.best_step=12"),  # > steps_done
    (_set("history", "best_step", 3), "history.best_step=3"),  # not an evaluated step
    (_set("history", "best_dev_accuracy", 0.1), "history.best_step=10 with best_dev_accuracy=0.1"),
    (_set("history", "forwards", "22"), "history.forwards='22'"),
    (_set("history", "train", {"a": 1}), "history.train="),
    (_set("history", "train", 0, [1]), "history.train.0.1 is missing"),
    (_set("history", "evals", "x"), "history.evals='x'"),
    (_set("history", "evals", [5]), "history.evals.0=5"),
    (_set("history", "evals", 1, "step", 20), "history.evals steps [0, 20, 10]"),
    (_set("history", "evals", 1, "dev_accuracy", 7), "history.evals.1.dev_accuracy=7"),
    (_set("history", [1]), "history=[1]"),
    (_set("history", 5), "history=5"),
    (_set("config", "sst2"), "config='sst2'"),
    (_set("config", []), "config=[]"),
    (_set("config", "lr", "x"), "config.lr='x'"),
    (_set("config", "batch_size", 0), "config.batch_size=0"),
    (_set("run_id", 5), "run_id=5"),
    (_set("zero_shot_test_accuracy", "high"), "zero_shot_test_accuracy='high'"),
    (_set("trajectory_records", 3), "trajectory_records=3"),
    (_set("trajectory_sha256", "abc"), "trajectory_sha256='abc'"),
    (lambda s: s.pop("config") and None, "config is missing"),
    (lambda s: 7, "holds a number"),
]


@needs_data
@pytest.mark.parametrize("damage,field", DAMAGES, ids=[f for _, f in DAMAGES])
def test_a_damaged_state_is_one_line_naming_file_and_field(ckpt, no_model, damage, field):
    edit_state(ckpt, damage)
    with pytest.raises(DataError) as e:
        run(load_config(None, {"out_dir": str(ckpt), "resume": True, "progress": False}))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{ckpt}/state.json: ") and field in msg, msg


@needs_data
@pytest.mark.parametrize("damage,field", [DAMAGES[0], DAMAGES[2], DAMAGES[8], DAMAGES[14], DAMAGES[17]])
def test_a_damaged_state_at_the_cli_is_exit_2_and_one_line(ckpt, no_model, damage, field):
    edit_state(ckpt, damage)
    line = one_line_error(CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(ckpt)]))
    assert f"{ckpt}/state.json" in line and field in line, line


@needs_data
def test_a_new_run_into_a_dir_with_a_damaged_state_names_it(ckpt, no_model):
    edit_state(ckpt, _set("history", 5))
    with pytest.raises(DataError, match=r"state.json: history=5 is invalid"):
        run(load_config(None, BASE | {"steps": 2, "out_dir": str(ckpt), "tracking": False}))


# -- Medium: a torn last trajectory line ---------------------------------------------------------------------
@needs_data
def test_a_torn_line_after_the_vouched_records_resumes_with_one_warning(checkpoint, ckpt, tmp_path):
    traj = ckpt / "trajectory.jsonl"
    text = traj.read_text()
    traj.write_text(text + text.splitlines()[-1][:25])  # the next checkpoint's write cut mid-record
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = run(load_config(None, {"out_dir": str(ckpt), "resume": True, "tracking": False}))
    torn = [str(w.message) for w in caught if "torn" in str(w.message)]
    assert len(torn) == 1 and "recovered the 11 complete records" in torn[0] and "resumes from step 11" in torn[0]
    full = run(load_config(None, checkpoint[1] | {"out_dir": str(tmp_path / "full"), "tracking": False}))
    assert s["test_accuracy"] == full["test_accuracy"] and s["forward_passes"] == full["forward_passes"] == 32
    assert zoplatform.Trajectory.load(traj).records == zoplatform.Trajectory.load(tmp_path / "full" /
                                                                                 "trajectory.jsonl").records


@needs_data
def test_a_torn_vouched_record_is_refused_in_one_line_before_any_work(ckpt, no_model):
    traj = ckpt / "trajectory.jsonl"
    traj.write_text(traj.read_text()[:-30])  # record 11, which state.json vouches for, cut
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused without a warning first
        with pytest.raises(DataError, match=r"holds 10 records \(complete ones: its last line 12 is a torn "
                                            r"record.*\) but the checkpoint is at step 11"):
            run(load_config(None, {"out_dir": str(ckpt), "resume": True, "tracking": False}))


# -- Low: the printed resume command, equal values on resume, a finished out dir, a failed load, num_train ----
def test_the_resume_command_reproduces_how_the_run_ran(tmp_path):
    cfg = FinetuneConfig(model="tiny:llama", workers=2, threads=3, tracking=False, out_dir=str(tmp_path / "a b"))
    cmd = resume_command(cfg, Path(cfg.out_dir))
    assert cmd == f"zo finetune --resume --out-dir '{tmp_path}/a b' --workers 2 --threads 3 --no-tracking"
    assert resume_command(FinetuneConfig(), Path("runs/x")) == "zo finetune --resume --out-dir runs/x"


@needs_data
def test_an_interrupt_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(None, BASE | dict(steps=4, threads=1, tracking=False, out_dir=str(tmp_path / "x"))))
    err = capsys.readouterr().err
    assert f"interrupted (SIGINT/SIGTERM) at step 2; continue with: zo finetune --resume --out-dir {tmp_path}/x " \
           f"--threads 1 --no-tracking" in err


@needs_data
def test_values_equal_to_the_stored_ones_are_accepted_on_resume(ckpt, tmp_path):
    with pytest.raises(ConfigError, match=r"resume: eps=0.002 differs from the stored run's eps=None \(resolved: "
                                          r"0.001\)"):
        run(load_config(None, {"out_dir": str(ckpt), "resume": True, "eps": 2e-3, "tracking": False}))
    with pytest.raises(ConfigError, match=r"resume: precision='bf16-mixed' differs"):
        run(load_config(None, {"out_dir": str(ckpt), "resume": True, "precision": "bf16-mixed", "tracking": False}))
    s = run(load_config(None, {"out_dir": str(ckpt), "resume": True, "precision": "fp32", "eps": 1e-3,
                               "lr": 1e-3, "dtype": "float32", "tracking": False, "progress": False}))
    assert s["status"] == "finished" and s["forward_passes"] == 32 and s["precision"] == "fp32"
    assert len(zoplatform.Trajectory.load(ckpt / "trajectory.jsonl").records) == 16


@needs_data
def test_a_new_run_into_a_finished_out_dir_is_refused(tmp_path):
    cfg = load_config(None, BASE | dict(steps=2, tracking=False, out_dir=str(tmp_path / "x")))
    run(cfg)
    before = (tmp_path / "x" / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match=r"holds a finished run .*summary.json.*use another --out-dir, or delete it"):
        run(cfg)
    assert (tmp_path / "x" / "summary.json").read_bytes() == before
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--steps", "2", "--no-tracking",
                                   "--out-dir", str(tmp_path / "x")])
    assert "holds a finished run" in one_line_error(res)


@needs_data
def test_a_retry_after_a_failed_model_load_runs(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(None, BASE | dict(steps=2, tracking_uri=uri, experiment="t", out_dir=str(tmp_path / "x")))
    real = zoplatform.models.load_model

    def broken(*a, **k):
        raise OSError("weights file truncated")

    monkeypatch.setattr(zoplatform.models, "load_model", broken)
    with pytest.raises(OSError, match="truncated"):
        run(cfg)
    assert not (tmp_path / "x" / "state.json").exists()  # no stub left to refuse the retry
    monkeypatch.setattr(zoplatform.models, "load_model", real)
    s = run(cfg)  # the same command again
    assert s["status"] == "finished" and s["forward_passes"] == 4


@needs_data
def test_a_capped_num_train_is_said_and_recorded(tmp_path, capsys):
    s = run(load_config(None, BASE | dict(steps=1, num_train=10_000_000, zero_shot=False, tracking=False,
                                          out_dir=str(tmp_path / "x"))))
    err = capsys.readouterr().err
    assert s["num_train"] < 10_000_000
    note = f"sst2: requested num_train=10000000 (the run uses {s['num_train']})"
    assert f"note: {note}" in err and s["data_note"].startswith(note)


def test_resume_accepts_the_stored_precision_in_another_spelling():
    from pipelines.finetune.checkpoint import resume_config

    stored = {"config": FinetuneConfig(model="tiny:llama", dtype="bfloat16", out_dir="x").model_dump()}
    same = resume_config(load_config(None, {"resume": True, "out_dir": "x", "precision": "bf16-true"}), stored)
    assert (same.dtype, same.precision, same.model) == ("bfloat16", None, "tiny:llama")
    with pytest.raises(ConfigError, match=r"precision='fp16-true' differs .*\(resolved: 'bf16-true'\)"):
        resume_config(load_config(None, {"resume": True, "out_dir": "x", "precision": "fp16-true"}), stored)
