"""Data-parallel ZO over torch.distributed (gloo on CPU): 2 workers = 1 worker at the same global batch.

Shards are padded like the whole batch, so their scores match the single-process ones; on the tiny
fixtures a score still differs by up to ~5e-7 with the sub-batch's size (SmolLM2-135M: bit-identical),
and g = ΔL/2ε turns that into ~1e-5 relative at ε = 1e-2 (more on a step whose g is near 0), so
these runs use ε = 3e-2 and judge a step's g relative to the run's largest |g|."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoplatform
from tests.conftest import needs_data
from zoplatform.distributed import shard_bounds

ROOT = Path(__file__).resolve().parents[1]


def zo(args, env=None, check=True):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false") | (env or {})
    p = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=e,
                       cwd=ROOT)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def finetune(out, workers, method="mezo", extra=(), **kw):
    args = ["finetune", "--model", "tiny:llama", "--task", "sst2", "--method", method, "--steps", "8",
            "--num-train", "48", "--num-dev", "16", "--num-test", "24", "--batch-size", "7", "--eval-every", "4",
            "--lr", "1e-3", "--eps", "3e-2", "--select", "last", "--no-zero-shot", "--out-dir", str(out),
            "--workers", str(workers), "--json", *extra]
    p = zo(args, **kw)
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else p


def final_weights(out):
    from zoplatform.models import load_model

    traj = zoplatform.Trajectory.load(Path(out) / "trajectory.jsonl")
    model, _ = load_model("tiny:llama", seed=0)
    zoplatform.replay(zoplatform.make(traj.method, **traj.config), zoplatform.model_blocks(model), traj.records)
    return traj, torch.cat([p.detach().view(-1) for p in model.parameters()])


def test_shards_cover_the_batch_once():
    for n in range(1, 20):
        for size in (1, 2, 3, 5):
            spans = [shard_bounds(n, r, size) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(h - lo for lo, h in spans) - min(h - lo for lo, h in spans) <= 1


@needs_data
@pytest.mark.parametrize("method,extra", [("mezo", ()), ("fzoo", ("--option", "num_directions=3"))])
def test_two_workers_equal_one_worker_at_the_same_global_batch(tmp_path, method, extra):
    one = finetune(tmp_path / "one", 1, method, extra)
    two = finetune(tmp_path / "two", 2, method, extra)
    assert two["workers"] == 2 and len(set(two["replica_sha256"])) == 1  # replicas bit-identical on every rank
    t1, w1 = final_weights(tmp_path / "one")
    t2, w2 = final_weights(tmp_path / "two")
    assert len(t1.records) == len(t2.records) == 8
    scale = max(abs(g) for r in t1.records for g in r.grad)  # a step whose g is ~0 is judged against the run's
    for a, b in zip(t1.records, t2.records):
        for ga, gb in zip(a.grad, b.grad):
            assert abs(ga - gb) <= 1e-5 * max(abs(ga), scale), (ga, gb)
    assert float((w1 - w2).norm() / w1.norm()) < 1e-5
    assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1 / 24 + 1e-9)


@needs_data
def test_a_dead_worker_fails_the_run_and_resume_continues(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    hooks = str(ROOT / "tests" / "hooks")
    p = finetune(tmp_path / "x", 2, extra=("--tracking-uri", uri, "--experiment", "dp", "--steps", "12"),
                 env={"PYTHONPATH": f"{hooks}:{ROOT}", "ZO_TEST_KILL_RANK": "1", "ZO_TEST_KILL_AT_STEP": "7"},
                 check=False)
    assert p.returncode == 1
    state = json.loads((tmp_path / "x" / "state.json").read_text())
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(state["run_id"])
    assert run.info.status == "FAILED", run.data.tags
    assert "--resume" in run.data.tags["zo.end_reason"] and "worker failed" in run.data.tags["zo.end_reason"]
    s = finetune(tmp_path / "x", 2, extra=("--tracking-uri", uri, "--experiment", "dp", "--steps", "12",
                                           "--resume"))
    assert s["mlflow_run_id"] == state["run_id"] and s["status"] == "finished"
    assert MlflowClient(uri).get_run(state["run_id"]).info.status == "FINISHED"
    assert len(zoplatform.Trajectory.load(tmp_path / "x" / "trajectory.jsonl").records) == 12


def test_fo_with_workers_is_refused_in_one_line(tmp_path):
    p = zo(["finetune", "--model", "tiny:llama", "--method", "fo", "--workers", "2", "--no-tracking"], check=False)
    assert p.returncode == 2 and "'fo' runs in one process" in p.stderr


@pytest.mark.parametrize("status,why", [("RUNNING", None), ("KILLED", "interrupted (SIGTERM)"),
                                        ("FAILED", "RuntimeError: gloo Read error: Connection reset by peer")])
def test_the_launcher_names_the_dead_worker_and_resume_whoever_ended_the_run_first(tmp_path, status, why):
    """torchrun's stop can reach the main worker as SIGTERM (KILLED), before it ends its run (RUNNING), or
    after it saw the dead peer's gloo error and ended the run FAILED itself: the reason must lead with the
    worker failure and the --resume line in all three, keeping the worker's own error after it."""
    from mlflow import MlflowClient

    from pipelines.launch import fail_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("dp"))
    if why:
        client.set_tag(run.info.run_id, "zo.end_reason", why)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    (tmp_path / "state.json").write_text(json.dumps({"run_id": run.info.run_id,
                                                     "config": {"tracking_uri": uri}}))
    fail_run(tmp_path, "a data-parallel worker failed; continue with: zo finetune --resume")
    fail_run(tmp_path, "a data-parallel worker failed; continue with: zo finetune --resume")  # idempotent
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FAILED"
    reason = got.data.tags["zo.end_reason"]
    assert reason.startswith("a data-parallel worker failed; continue with: zo finetune --resume")
    assert reason.count("worker failed") == 1 and (why is None or why in reason)
