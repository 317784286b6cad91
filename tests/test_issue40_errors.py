"""issue 40: tracking URIs, one-line errors, divergence, config parsing.

Each bad input is one ``error:`` line naming the bad value, exit 2, before any model is loaded; a tracking server
that dies mid-run stops the run fast in one line (exit 1) and the run resumes exactly; CurvZO's collapse at a huge
lr fails "diverged" like every other method; a YAML alias bomb is refused at once.
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main as cli
from tests.conftest import wait_healthy
from tests.test_finetune import needs_data
from zoplatform.errors import ConfigError

FT = ["finetune", "--model", "tiny:llama", "--task", "sst2", "--steps", "2", "--num-train", "16", "--num-dev", "8",
      "--num-test", "8", "--batch-size", "8"]


def one_error_line(res, *needles, code=2):
    """exit ``code``, exactly one ``error:`` line (the last), holding every needle, and no traceback."""
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert res.exit_code == code, (res.exit_code, res.stderr, res.exception)
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert "Traceback" not in res.output + res.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


# -- tracking URIs ------------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed")
def test_a_database_uri_without_its_driver_names_the_package(tmp_path):
    res = CliRunner().invoke(cli, [*FT, "--tracking-uri", "postgresql://zo:secret@db.invalid/mlflow",
                                   "--out-dir", str(tmp_path / "x")])
    line = one_error_line(res, "postgresql://zo:***@db.invalid/mlflow", "'psycopg'", "pip install",
                          "zoplatform[cluster]")
    assert "secret" not in line
    assert not (tmp_path / "x").exists()  # nothing started


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed")
def test_a_mysql_uri_without_its_driver_names_the_package(tmp_path):
    res = CliRunner().invoke(cli, [*FT, "--tracking-uri", "mysql://zo@db.invalid/mlflow",
                                   "--out-dir", str(tmp_path / "x")])
    one_error_line(res, "'MySQLdb'", "pip install 'mysqlclient'")


def test_the_cluster_extra_ships_the_postgres_driver():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["cluster"])


@needs_data
@pytest.mark.parametrize("kind", ["existing dir", "new dir", "file: relative", "file:// absolute"])
def test_a_file_store_path_says_use_sqlite_or_a_server(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    if kind == "existing dir":
        (tmp_path / "mlruns").mkdir()
    uri = {"existing dir": "./mlruns", "new dir": "./mlruns", "file: relative": "file:./mlruns",
           "file:// absolute": f"file://{tmp_path}/mlruns"}[kind]
    res = CliRunner().invoke(cli, [*FT, "--tracking-uri", uri, "--out-dir", str(tmp_path / "x")])
    one_error_line(res, repr(uri), "file store", f"sqlite:///{tmp_path}/mlruns", "http://")
    assert not (tmp_path / "x").exists() and not (tmp_path / "mlruns").is_file()


def test_a_bare_path_to_a_sqlite_file_still_works(tmp_path):
    from zoplatform.tracking.mlflow import resolve_tracking_uri

    assert resolve_tracking_uri(str(tmp_path / "a" / "mlflow.db")) == f"sqlite:///{tmp_path}/a/mlflow.db"
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(ConfigError, match="is not a SQLite database"):
        resolve_tracking_uri(str(tmp_path / "notes.txt"))


@needs_data
@pytest.mark.parametrize("where", ["under a file", "/proc"])
def test_an_unwritable_sqlite_location_is_one_line(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    db = f"{tmp_path}/afile/mlflow.db" if where == "under a file" else "/proc/zo-no-such-dir/mlflow.db"
    res = CliRunner().invoke(cli, [*FT, "--tracking-uri", f"sqlite:///{db}", "--out-dir", str(tmp_path / "x")])
    one_error_line(res, f"sqlite:///{db}", "cannot be written")


@needs_data
@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_experiment_name_is_one_line(tmp_path, name):
    res = CliRunner().invoke(cli, [*FT, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", name,
                                   "--out-dir", str(tmp_path / "x")])
    one_error_line(res, f"experiment name {name!r}")
    assert not (tmp_path / "x" / "trajectory.jsonl").exists()


# -- a tracking server killed mid-run ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, port: int):
    """``mlflow server`` on 127.0.0.1:``port`` over ``tmp_path``'s store (not waited for: :func:`wait_healthy`)."""
    exe = Path(sys.executable).parent / "mlflow"
    return subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@needs_data
@pytest.mark.slow  # two real mlflow servers (their start-up is most of its time)
def test_a_killed_tracking_server_stops_the_run_in_one_line_and_it_resumes_exactly(tmp_path, monkeypatch, capfd,
                                                                                    mlflow_template):
    import shutil

    from mlflow import MlflowClient

    from zoplatform.tracking.mlflow import PENDING_FILE, MlflowTracker

    for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(k, "")  # recorded, so the tracker's own defaults set below are undone after the test
        monkeypatch.delenv(k)  # the tracker's own short defaults apply
    shutil.copy(mlflow_template, tmp_path / "server.db")
    # the server the run loses, and the one "restarted" on the same store (started now: they take seconds)
    ports = free_port(), free_port()
    procs = [start_server(tmp_path, p) for p in ports]
    uri, again, out = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", tmp_path / "run"
    flushes = []
    real_flush = MlflowTracker.flush

    def flush_then_kill(self):  # the server dies right after the run's second flush (step 5's checkpoint)
        real_flush(self)
        flushes.append(1)
        if len(flushes) == 2:
            os.killpg(procs[0].pid, signal.SIGKILL)
            procs[0].wait(timeout=20)

    args = ["finetune", "--model", "tiny:llama", "--task", "sst2", "--steps", "15", "--eval-every", "5",
            "--num-train", "48", "--num-dev", "16", "--num-test", "24", "--batch-size", "8", "--lr", "1e-3",
            "--eps", "1e-2", "--tracking-uri", uri, "--experiment", "killed", "--out-dir", str(out)]
    try:
        wait_healthy(uri, procs[0], 90, "mlflow server")
        monkeypatch.setattr(MlflowTracker, "flush", flush_then_kill)
        res = CliRunner().invoke(cli, args)
        monkeypatch.setattr(MlflowTracker, "flush", real_flush)
        line = one_error_line(res, f"MLflow tracking server {uri} stopped answering", "Connection refused",
                              f"zo finetune --resume --out-dir {out}", code=1)
        assert "Traceback" not in capfd.readouterr().err  # nor from MLflow's threads and loggers
        state = json.loads((out / "state.json").read_text())
        assert state["history"]["steps_done"] == 10 and (out / PENDING_FILE).is_file(), line  # step 10's metrics

        wait_healthy(again, procs[1], 90, "mlflow server")
        res = CliRunner().invoke(cli, ["finetune", "--resume", "--out-dir", str(out), "--tracking-uri", again])
        assert res.exit_code == 0, res.stderr
        client = MlflowClient(tracking_uri=again)
        assert client.get_run(state["run_id"]).info.status == "FINISHED" and not (out / PENDING_FILE).exists()
        train = client.get_metric_history(state["run_id"], "train_loss")
        assert sorted(m.step for m in train) == list(range(1, 16))  # every step once, the lost segment's too
        assert sorted(m.step for m in client.get_metric_history(state["run_id"], "dev_accuracy")) == [0, 5, 10, 15]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)


# -- divergence ---------------------------------------------------------------------------------------------------
@needs_data
def test_curvzo_at_a_huge_lr_fails_diverged_like_the_others(tmp_path):
    """At lr 1e8 CurvZO's first step saturates the model: every candidate then scores the same (loss log 2, Δ = 0
    exactly), so no loss or estimate is ever non-finite while the weights sit at ~1e9."""
    out = tmp_path / "x"
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--task", "sst2", "--method", "curvzo",
                                   "--lr", "1e8", "--steps", "20", "--eval-every", "5", "--num-train", "32",
                                   "--num-dev", "16", "--num-test", "16", "--batch-size", "8", "--no-tracking",
                                   "--out-dir", str(out)])
    one_error_line(res, "diverged at step 5", "weights blew up", code=1)
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["best_step"] == 0 and s["test_accuracy"] is None


def test_the_weight_guard_leaves_a_healthy_run_alone():
    import torch

    import zoplatform
    from zoplatform.loop import ZOStepper, train

    class Scorer:  # a quadratic "model": loss = |w|^2, scores from w
        forward_passes_per_call = 1

        def __init__(self):
            self.model = torch.nn.Linear(4, 1)

        def loss(self, batch):
            return float((self.model.weight ** 2).sum())

        def scores(self, batch):
            return torch.zeros(len(batch), 2) + self.model.weight.sum()

    sc = Scorer()
    opt = zoplatform.ZOOptimizer(list(sc.model.named_parameters()), "mezo", seed=0, lr=1e-2, eps=1e-3)
    ex = [zoplatform.Example("p", ("a", "b"), 0)] * 4
    h = train(ZOStepper(opt, sc), sc, ex, ex, steps=10, batch_size=2, data_seed=0, eval_every=5, progress=False)
    assert h.steps_done == 10 and [e["step"] for e in h.evals] == [0, 5, 10]


# -- YAML alias bombs ---------------------------------------------------------------------------------------------
def bomb(levels=9) -> str:
    """'Billion laughs': 9 levels of 9 aliases each, 9**9 values once expanded, in under 1 kB."""
    rows = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


def test_read_mapping_refuses_an_alias_bomb_and_keeps_ordinary_aliases(tmp_path):
    from zoplatform.config import read_mapping

    (tmp_path / "bomb.yaml").write_text(bomb())
    with pytest.raises(ConfigError, match=r"bomb.yaml: its YAML aliases expand to more than 100,000 values"):
        read_mapping(tmp_path / "bomb.yaml")
    (tmp_path / "loop.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="recursive alias"):
        read_mapping(tmp_path / "loop.yaml")
    (tmp_path / "ok.yaml").write_text("base: &b {lr: 1.0e-3, eps: 0.01}\nrun:\n  <<: *b\n  steps: 4\n")
    assert read_mapping(tmp_path / "ok.yaml")["run"] == {"lr": 1e-3, "eps": 0.01, "steps": 4}


def run_cli(args, cwd, timeout=120):
    """``python -m pipelines.cli ARGS`` (a subprocess, so an old hang is bounded by ``timeout``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    try:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"zo {' '.join(args)} hung (> {timeout} s)")


@pytest.mark.parametrize("where", ["--config", "--space"])
def test_an_alias_bomb_in_a_config_or_a_search_space_is_one_line(tmp_path, where):
    f = tmp_path / "bomb.yaml"
    f.write_text(bomb() + ("model: *l8\n" if where == "--config" else "method: mezo\nparams: *l8\n"))
    args = (["finetune", "--config", str(f)] if where == "--config" else
            ["sweep", "--method", "mezo", "--task", "sst2", "--model", "tiny:llama", "--space", str(f),
             "--storage", str(tmp_path / "sweeps")])
    p = run_cli(args, tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "alias bomb" in lines[0] and str(f) in lines[0], p.stderr


# -- zo bench data-parallel ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt,value,needle", [("--method", "nope", "unknown method 'nope'"),
                                              ("--method", "fo", "unknown method 'fo'"),
                                              ("--task", "nope", "unknown task 'nope'"),
                                              ("--model", "tiny:nope", "unknown tiny fixture 'tiny:nope'")])
def test_bench_data_parallel_validates_before_launching_workers(opt, value, needle):
    res = CliRunner().invoke(cli, ["bench", "data-parallel", "--model", "tiny:llama", opt, value])
    one_error_line(res, needle)

