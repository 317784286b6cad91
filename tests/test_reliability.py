"""Nothing silently wrong: one test per defect of the reliability probe (issue 20).

Each of these failed on the code before the fix (exit 0 with a mixed trajectory, a second run
writing the same out dir, a cut trajectory resumed, NaN runs ending FINISHED, ...)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoplatform
from pipelines.locks import OutDirLock
from pipelines.cli import main as cli
from pipelines.finetune import load_config, run
from tests.test_finetune import TINY, client, needs_data  # the same tiny run and helpers
from zoplatform.errors import ConfigError, DataError, Diverged
from zoplatform.loop import ZOStepper


def interrupt_at(monkeypatch, n):
    """Make the n-th ZO step raise KeyboardInterrupt (as Ctrl-C would)."""
    calls = {"n": 0}
    original = ZOStepper.__call__

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(ZOStepper, "__call__", flaky)


def interrupted_run(tmp_path, monkeypatch, n=7, **over):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = TINY | dict(steps=16, tracking_uri=uri, experiment="t", out_dir=str(tmp_path / "x")) | over
    interrupt_at(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(None, base))
    monkeypatch.undo()
    return base, uri


# -- 1. resume accepts any config --------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("field,value", [("lr", 1e-6), ("task", "rte"), ("seed", 3), ("batch_size", 4),
                                         ("num_dev", 8), ("precision", "bf16-mixed")])
def test_resume_refuses_another_identity_naming_the_field(tmp_path, monkeypatch, field, value):
    base, uri = interrupted_run(tmp_path, monkeypatch, num_dev=16)
    with pytest.raises(ConfigError, match=rf"resume: {field}=.* differs from the stored run's {field}="):
        run(load_config(None, {"out_dir": base["out_dir"], "resume": True, field: value, "tracking_uri": uri}))


@needs_data
def test_readme_resume_form_continues_the_stored_config(tmp_path, monkeypatch):
    base, uri = interrupted_run(tmp_path, monkeypatch, lr=2e-3, num_dev=8, select="last")
    s = run(load_config(None, {"model": "tiny:llama", "steps": 16, "resume": True, "out_dir": base["out_dir"],
                               "progress": False}))
    full = run(load_config(None, base | {"out_dir": str(tmp_path / "full"), "num_dev": 8, "lr": 2e-3}))
    assert s["num_dev"] == 8 and s["test_accuracy"] == full["test_accuracy"]
    t1 = zoplatform.Trajectory.load(Path(base["out_dir"]) / "trajectory.jsonl")
    t2 = zoplatform.Trajectory.load(tmp_path / "full" / "trajectory.jsonl")
    assert t1.records == t2.records and {r.lr for r in t1.records} == {2e-3}
    run_ = client(uri).get_run(s["mlflow_run_id"])
    assert run_.info.status == "FINISHED" and "zo.end_reason" not in run_.data.tags  # stale reason dropped


# -- 2. two runs on one out dir -------------------------------------------------------------------
@needs_data
def test_a_second_run_on_a_locked_out_dir_is_refused(tmp_path):
    out = tmp_path / "x"
    with OutDirLock(out), pytest.raises(ConfigError, match=r"is in use by another run \(pid \d+"):
        run(load_config(None, TINY | dict(steps=2, out_dir=str(out), tracking=False)))


@needs_data
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "x"
    code = f"from pipelines.locks import OutDirLock; import time\nwith OutDirLock({str(out)!r}):\n" \
           f"    print('locked', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match="in use by another run"):
        run(load_config(None, TINY | dict(steps=2, out_dir=str(out), tracking=False)))
    p.kill()
    p.wait()
    assert "test_accuracy" in run(load_config(None, TINY | dict(steps=2, out_dir=str(out), tracking=False)))


# -- 3. truncated or torn checkpoints ----------------------------------------------------------------
@needs_data
def test_a_trajectory_shorter_than_the_checkpoint_is_refused(tmp_path, monkeypatch):
    base, uri = interrupted_run(tmp_path, monkeypatch, n=12)
    traj = Path(base["out_dir"]) / "trajectory.jsonl"
    lines = traj.read_text().splitlines()
    traj.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataError, match=r"holds 8 records but the checkpoint is at step 11"):
        run(load_config(None, {"out_dir": base["out_dir"], "resume": True, "tracking_uri": uri}))


@needs_data
def test_an_edited_record_is_refused(tmp_path, monkeypatch):
    base, uri = interrupted_run(tmp_path, monkeypatch, n=12)
    traj = Path(base["out_dir"]) / "trajectory.jsonl"
    lines = traj.read_text().splitlines()
    rec = json.loads(lines[3])
    rec["losses"][0] += 1e-9
    lines[3] = json.dumps(rec)
    traj.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        run(load_config(None, {"out_dir": base["out_dir"], "resume": True, "tracking_uri": uri}))


@needs_data
def test_a_torn_last_line_is_recovered_with_a_warning(tmp_path, monkeypatch):
    base, uri = interrupted_run(tmp_path, monkeypatch, n=12, select="last")
    out = Path(base["out_dir"])
    state = json.loads((out / "state.json").read_text())
    assert state["history"]["steps_done"] == 11
    traj = out / "trajectory.jsonl"
    text = traj.read_text()
    traj.write_text(text + text.splitlines()[-1][:25])  # a 12th record cut mid-JSON
    with pytest.warns(UserWarning, match=r"last line 13 is a torn record.*recovered the 11 complete records"):
        s = run(load_config(None, {"out_dir": str(out), "resume": True, "tracking_uri": uri}))
    full = run(load_config(None, base | {"out_dir": str(tmp_path / "full")}))
    assert s["test_accuracy"] == full["test_accuracy"]
    assert client(uri).get_run(s["mlflow_run_id"]).info.status == "FINISHED"
    # zo eval on a torn file: the same recovery, no traceback
    traj.write_text(traj.read_text() + '{"seed": 1, "los')
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", "--num-train", "48",
                                   "--num-dev", "16", "--num-test", "24", "--trajectory", str(traj), "--json",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps_applied"] == 16


def test_a_malformed_middle_line_is_one_line(tmp_path):
    t = zoplatform.Trajectory("mezo", {}, 0, "x")
    t.append(zoplatform.StepRecord(1, (1.0, 2.0), 0.1))
    t.append(zoplatform.StepRecord(2, (1.0, 2.0), 0.1))
    p = t.save(tmp_path / "t.jsonl")
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0], "{oops", lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"line 2 is not a trajectory record"):
        zoplatform.Trajectory.load(p)


# -- 4. divergence ---------------------------------------------------------------------------------
@needs_data
def test_divergence_fails_the_run_and_keeps_the_last_finite_checkpoint(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "x"
    with pytest.raises(Diverged, match=r"diverged at step (\d+)") as e:
        run(load_config(None, TINY | dict(steps=20, lr=1e8, tracking_uri=uri, experiment="t", out_dir=str(out))))
    k = e.value.step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == k and summary["test_accuracy"] is None
    traj = zoplatform.Trajectory.load(out / "trajectory.jsonl")
    assert len(traj.records) == k - 1 and all(math.isfinite(x) for r in traj.records for x in r.losses)
    r = client(uri).get_run(summary["mlflow_run_id"])
    assert r.info.status == "FAILED" and r.data.tags["zo.end_reason"].startswith(f"diverged at step {k}")


@needs_data
def test_divergence_at_the_cli_is_one_line_exit_1_and_json_has_no_nan(tmp_path):
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--steps", "12", "--lr", "1e8", "--eps",
                                   "1e-2", "--num-train", "48", "--num-dev", "16", "--num-test", "24",
                                   "--batch-size", "8", "--eval-every", "4", "--no-tracking",
                                   "--out-dir", str(tmp_path / "x"), "--json"])
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1].startswith("error: diverged at step")
    text = (tmp_path / "x" / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


def test_a_nan_dev_loss_is_never_selected_as_best():
    from zoplatform.loop import History, train

    class Scorer:
        class model:
            training = False

            @staticmethod
            def eval():
                pass

            @staticmethod
            def train(_):
                pass

        forward_passes_per_call = 1

        def __init__(self):
            self.nan = False

        def scores(self, batch):
            import torch

            return torch.full((len(batch), 2), math.nan if self.nan else 0.0)

    scorer = Scorer()

    def stepper(batch):
        scorer.nan = True  # the first step breaks the model
        return {"train_loss": 0.5, "forwards": 1}

    stepper.kind = "zo"
    ex = [zoplatform.Example("p", ("a", "b"), 0)] * 4
    h = History()
    with pytest.raises(Diverged, match="diverged at step 1: dev loss is nan"):
        train(stepper, scorer, ex, ex, steps=3, batch_size=2, data_seed=0, eval_every=1, history=h, progress=False)
    assert h.best_step == 0


@pytest.mark.parametrize("opt,value", [("--lr", "inf"), ("--eps", "inf"), ("--lr", "nan"), ("--eps", "-inf")])
def test_non_finite_hyperparameters_are_rejected_at_validation(opt, value):
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", opt, value, "--no-tracking"])
    assert res.exit_code == 2 and "is invalid" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# -- 5/6. services -----------------------------------------------------------------------------------
@needs_data
def test_an_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--steps", "2", "--tracking-uri",
                                   "http://127.0.0.1:1", "--out-dir", str(tmp_path / "x")])
    assert time.perf_counter() - t0 < 20
    assert res.exit_code == 2 and "is unreachable" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing was started
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--tracking-uri", "foo://bar"])
    assert res.exit_code == 2 and "unknown scheme 'foo'" in res.stderr


def test_concurrent_trackers_on_a_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh.db"
    code = ("import sys; from zoplatform.tracking.mlflow import MlflowTracker\n"
            "t = MlflowTracker(tracking_uri=sys.argv[1], experiment='e', system_metrics=False)\n"
            "t.start({'a': 1}); t.end()")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("e").experiment_id])
    assert len(runs) == 3


def test_a_saved_run_id_the_store_does_not_hold_starts_a_new_run(tmp_path, capsys):
    """A checkpoint's / sweep.json's / compare.json's run id against a store made afresh: a new run, one line."""
    from zoplatform.tracking.mlflow import MlflowTracker

    uri = f"sqlite:///{tmp_path}/fresh.db"
    kept = MlflowTracker(tracking_uri=uri, experiment="e", system_metrics=False)
    kept.start({"a": 1})
    kept.end()
    again = MlflowTracker(tracking_uri=uri, experiment="e", run_id=kept.run_id, system_metrics=False)
    again.start({"a": 1})  # held by the store: the same run, reopened
    again.end()
    lost = MlflowTracker(tracking_uri=uri, experiment="e", run_id="0" * 32, system_metrics=False)
    lost.start({"a": 2})
    lost.end()
    assert again.run_id == kept.run_id and lost.run_id not in (kept.run_id, "0" * 32)
    assert f"run {'0' * 32} is not in {uri}" in capsys.readouterr().err
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([kept.run_id, lost.run_id])
    assert next(r for r in runs if r.info.run_id == lost.run_id).data.params == {"a": "2"}


# -- 8. bounds ------------------------------------------------------------------------------------------
@needs_data
def test_batch_and_steps_bounds_are_checked_before_work(tmp_path):
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--batch-size", "1000000000",
                                   "--num-train", "48", "--no-tracking", "--out-dir", str(tmp_path / "x")])
    assert res.exit_code == 2 and "batch_size=1000000000 exceeds the 48 train examples" in res.stderr
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--steps", str(10**12), "--no-tracking"])
    assert res.exit_code == 2 and "steps=1000000000000 is invalid" in res.stderr


# -- low ----------------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("args,msg", [(["--batch-size", "0"], "batch_size=0 is invalid"),
                                      (["--num-test", "0"], "num_test=0 is invalid"),
                                      (["--steps", "3"], "steps needs --trajectory")])
def test_eval_bad_input_is_one_line(args, msg):
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", *args])
    assert res.exit_code == 2 and msg in res.stderr


def test_bench_repeats_zero_is_one_line():
    res = CliRunner().invoke(cli, ["bench", "step-cost", "--model", "tiny:llama", "--repeats", "0"])
    assert res.exit_code == 2 and "repeats=0 is invalid" in res.stderr


@needs_data
def test_interrupt_before_the_first_step_resumes_in_the_same_run(tmp_path, monkeypatch):
    base, uri = interrupted_run(tmp_path, monkeypatch, n=1)
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
    assert "before the first step" in runs[0].data.tags["zo.end_reason"]
    s = run(load_config(None, {"out_dir": base["out_dir"], "resume": True}))
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == s["mlflow_run_id"] and runs[0].info.status == "FINISHED"


@needs_data
def test_sigterm_ends_a_finetune_killed_with_a_checkpoint(tmp_path):
    out, uri = tmp_path / "x", f"sqlite:///{tmp_path}/mlflow.db"
    p = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "finetune", "--model", "tiny:llama", "--steps",
                          "100000", "--num-train", "48", "--num-dev", "16", "--num-test", "24", "--batch-size", "8",
                          "--eval-every", "5", "--tracking-uri", uri, "--experiment", "t", "--out-dir", str(out)],
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    for _ in range(600):
        if (out / "trajectory.jsonl").is_file():
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 130
    state = json.loads((out / "state.json").read_text())
    r = client(uri).get_run(state["run_id"])
    assert r.info.status == "KILLED" and "--resume" in r.data.tags["zo.end_reason"]


def _random_policy(tmp_path):
    from meta.policy import PerturbationPolicy
    from zoplatform.models import load_model
    from zoplatform.params import model_blocks
    from zoplatform.policy import embedding_block_names

    model, _ = load_model("tiny:llama")
    emb = embedding_block_names(model)
    layout = [(b.name, list(b.param.shape), b.name in emb) for b in model_blocks(model)]
    return PerturbationPolicy(layout, base_model="tiny:llama", embedding_rows=240, seed=0).save(tmp_path / "p")


@pytest.mark.parametrize("damage,msg", [
    ("no-network", "network.hidden=None is invalid"),
    ("hidden-abc", "network.hidden='abc' is invalid"),
    ("nan-weights", "hold NaN or inf; the policy file is damaged"),
])
def test_a_damaged_policy_is_one_line_before_the_model_loads(tmp_path, damage, msg):
    d = _random_policy(tmp_path)
    schema = json.loads((d / "policy.json").read_text())
    if damage == "no-network":
        del schema["network"]
    elif damage == "hidden-abc":
        schema["network"]["hidden"] = "abc"
    else:
        from safetensors.torch import load_file, save_file

        w = load_file(str(d / "policy.safetensors"))
        w["w2"][0, 0] = float("nan")
        save_file(w, str(d / "policy.safetensors"))
    (d / "policy.json").write_text(json.dumps(schema))
    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--method", "zo-finetuner", "--policy",
                                   str(d), "--no-tracking", "--out-dir", str(tmp_path / "x")])
    assert res.exit_code == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_compare_without_a_budget_names_the_missing_option():
    res = CliRunner().invoke(cli, ["compare", "--methods", "mezo", "--tasks", "sst2", "--model", "tiny:llama"])
    assert res.exit_code == 2 and res.stderr.strip() == "error: compare config: forward_budget is required"


def test_meta_train_rejects_a_non_finite_lr():
    res = CliRunner().invoke(cli, ["meta-train", "--model", "tiny:llama", "--tasks", "copa", "--lr-mlp", "inf",
                                   "--no-tracking"])
    assert res.exit_code == 2 and "lr_mlp=inf is invalid" in res.stderr
