"""Sweeps end to end on tiny models: a real local Ray (2 CPUs, one session for the
module), both backends, MLflow contents (SQLite, and one real ``mlflow server``),
interrupt + ``--resume``, a crashed trial retried from its checkpoint, bad input
rejected before Ray starts."""
import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoplatform
from pipelines import raytools
from pipelines.cli import main as cli
from tests.conftest import mlflow_server, needs_data

pytestmark = needs_data  # reads task data: the real files when found, else the in-repo fixture

TINY = ["--model", "tiny:llama", "--task", "sst2", "--method", "mezo", "--steps", "4", "--eval-every", "2",
        "--num-train", "16", "--num-dev", "8", "--num-test", "8", "--batch-size", "4"]
SUMMARY_KEYS = {"sweep", "status", "backend", "best", "parent_run_id", "counts", "objectives", "tracking_uri",
                "storage", "artifacts", "pareto", "importances"}
BEST_KEYS = {"trial", "status", "params", "best_dev_accuracy", "dev_loss", "forward_passes", "test_accuracy",
             "mlflow_run_id", "trial_dir"}


def sweep(tmp_path, *args, uri=None):
    """Run ``zo sweep`` in-process; returns (exit code, JSON summary or None, output)."""
    uri = uri or f"sqlite:///{tmp_path}/mlflow.db"
    res = CliRunner().invoke(cli, ["sweep", *TINY, "--storage", str(tmp_path / "sweeps"), "--tracking-uri", uri,
                                   "--json", *args])
    summary = None
    for line in reversed(res.stdout.strip().splitlines()):  # Ray may print after it; take the summary line
        if line.startswith("{") and '"sweep"' in line:
            summary = json.loads(line)
            break
    return res.exit_code, summary, res.output


def sweep_with(callbacks, tmp_path, uri, **opts):
    """The TINY sweep through :func:`pipelines.sweep.run` with explicit callbacks (the CLI passes none);
    ``opts`` are sweep config keys (``trials=2``, ``finetune={...}`` merged into TINY's).  Returns the summary."""
    from pipelines.sweep import load_sweep_config, run

    finetune = {"eval_every": 2, "num_train": 16, "num_dev": 8, "num_test": 8, "batch_size": 4}
    finetune |= opts.pop("finetune", {})
    cfg = load_sweep_config({"model": "tiny:llama", "task": "sst2", "method": "mezo", "steps": 4,
                             "storage": str(tmp_path / "sweeps"), "tracking_uri": uri, "finetune": finetune,
                             **opts})
    return run(cfg, callbacks=callbacks)


def no_ray_here():
    raise AssertionError("Ray was started")


def once_at(n: int, ctrl_c):
    """A hook that does what Ctrl-C does at its n-th call, once (a resumed sweep in the same test runs on):
    ``ctrl_c`` is an exception to raise, or a signal to send to this process."""
    calls = {"n": 0}

    def hook(*_):
        calls["n"] += 1
        if calls["n"] == n:
            if isinstance(ctrl_c, signal.Signals):
                signal.raise_signal(ctrl_c)
            else:
                raise ctrl_c

    return hook


def runs_of(uri, parent_run_id):
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    parent = c.get_run(parent_run_id)
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    return c, parent, children


# ----------------------------------------------------------------------------- bad input, before Ray
def _space(tmp_path, body: str) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(body)
    return str(p)


BAD = [
    (["--method", "adamzo"], "unknown method 'adamzo'"),
    (["--space", "SPACE:method: mezo\nparams:\n  lr: {dist: log_uniform, low: 1.0e-7, high: 1.0e-4}\n"
                "  momentum: {dist: uniform, low: 0, high: 1}\n"], "params.momentum is not an option of mezo"),
    (["--space", "SPACE:method: mezo\nparams:\n  lr: {dist: log_uniform, low: 0, high: 1.0e-4}\n"],
     "a log-scale range needs low > 0"),
    (["--space", "SPACE:method: mezo\nparams:\n  lr: {dist: gamma, low: 1, high: 2}\n"], "dist='gamma' is not a"),
    (["--space", "SPACE:method: adamzo\nparams:\n  lr: {dist: log_uniform, low: 1.0e-7, high: 1.0e-4}\n"],
     "method 'adamzo' is not registered"),
    (["--resources", "cpu=-1,gpu=x"], "--resources: cpu=-1 is invalid"),
    (["--resources", "cpu=1,gpu=x"], "--resources: gpu='x' is not a number"),
    (["--resources", "gpu=0.3"], "gpu=0.3 is not 1/k"),
    (["--trials", "0"], "trials=0 is invalid"),
    (["--backend", "spark"], "backend='spark' is invalid"),
    (["--objectives", "acc,forward_passes"], "multi-objective sweeps cannot use --scheduler asha"),
    (["--objectives", "speed"], "unknown objective 'speed'"),
    (["--set", "out_dir=/x"], "'out_dir' is set by the sweep itself"),
    (["--task", "sst9"], "unknown task 'sst9'"),
    (["--resume"], "--resume: no sweep"),
]


@pytest.mark.parametrize("args,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_fails_before_ray_starts(args, msg, tmp_path, monkeypatch):
    def no_ray():
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(raytools, "connect", no_ray)
    args = [_space(tmp_path, a[6:]) if a.startswith("SPACE:") else a for a in args]
    code, _, out = sweep(tmp_path, *args)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], out
    assert not (tmp_path / "sweeps").exists()  # nothing created either


# ----------------------------------------------------------------------------- Optuna backend (no Ray)
def test_optuna_backend_gives_the_same_contract_and_resumes(tmp_path, uri, monkeypatch):
    from pipelines.sweep import SweepCallbacks

    monkeypatch.setattr(raytools, "connect", no_ray_here)
    # Ctrl-C at the first trial's second evaluation (step 2 of 4)
    s = sweep_with(SweepCallbacks(on_result=once_at(2, ctrl_c=KeyboardInterrupt)), tmp_path, uri,
                   backend="optuna", trials=2, max_concurrent=1, grace_period=4, reduction_factor=2)
    assert s["status"] == "interrupted" and "--resume" in s["resume_with"], s
    _, _, (cut,) = runs_of(uri, s["parent_run_id"])
    assert cut.info.status == "KILLED"
    code, s, out = sweep(tmp_path, "--resume", "--name", "mezo-sst2-tiny_llama")
    assert code == 0 and s["status"] == "finished", out
    assert SUMMARY_KEYS <= set(s) and BEST_KEYS <= set(s["best"])
    assert sum(s["counts"].values()) == 2 and s["counts"]["failed"] == 0
    assert s["best"]["params"]["eps"] > 0 and 0 <= s["best"]["best_dev_accuracy"] <= 1
    cl, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "FINISHED"
    trials_keys = [k for k in parent.data.metrics if k.startswith("trials_")]
    assert trials_keys
    for key in trials_keys:  # the resumed driver logs only the counts that changed (no repeated values)
        vals = [m.value for m in cl.get_metric_history(parent.info.run_id, key)]
        assert all(a != b for a, b in zip(vals, vals[1:])), (key, vals)
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["zo.trial"] for c in children}) == 2
    resumed = [c for c in children if c.info.run_id == cut.info.run_id]
    assert resumed and resumed[0].data.tags["zo.resumed_at_step"] == "2"  # continued in the same run


# ----------------------------------------------------------------------------- Ray backend
def test_asha_sweep_logs_one_parent_and_a_child_per_trial(tmp_path, uri, ray_session):
    # dev loss as the objective: continuous, so ASHA's rungs (4 and 8 forward passes) usually stop some trials
    code, s, out = sweep(tmp_path, "--trials", "4", "--max-concurrent", "2", "--scheduler", "asha",
                         "--grace-period", "4", "--reduction-factor", "2", "--objectives", "loss")
    assert code == 0 and s["status"] == "finished", out
    assert SUMMARY_KEYS <= set(s) and BEST_KEYS <= set(s["best"]) and s["backend"] == "ray"
    assert sum(s["counts"].values()) == 4 and s["counts"]["failed"] == 0
    c, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["zo.kind"] == "sweep"
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["ray_trial_id"] for r in children}) == 4
    stopped = [r for r in children if r.data.tags.get("zo.stopped_early") == "true"]
    assert len(stopped) == s["counts"]["stopped_early"]  # stopped by ASHA: FINISHED, tagged, not RUNNING
    for r in children:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "dev_accuracy")]
        assert steps[0] == 0 and steps == sorted(set(steps)), steps  # logged once per evaluation
        # named t<N> + the searched values; the objective at every evaluation, stopped or not
        label = r.data.tags["zo.trial_label"]
        assert r.info.run_name.startswith(f"{label} lr=") and r.info.run_name.endswith(" mezo sst2"), r.info.run_name
        assert [m.step for m in c.get_metric_history(r.info.run_id, "objective.dev_loss")] == steps
    assert sorted(r.data.tags["zo.trial_label"] for r in children) == ["t0", "t1", "t2", "t3"]
    assert parent.data.metrics["best_dev_loss"] == pytest.approx(s["best"]["dev_loss"])
    assert s["best"]["mlflow_run_id"] in {r.info.run_id for r in children}
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.json", "best_config.yaml", "objective_vs_trial.png",
            "accuracy_vs_forward_passes.png"} <= arts
    import yaml

    best_cfg = yaml.safe_load((Path(s["storage"]) / "results" / "best_config.yaml").read_text())
    assert best_cfg["model"] == "tiny:llama" and best_cfg["lr"] == s["best"]["params"]["lr"]


def test_a_trial_stopped_from_outside_leaves_its_run_to_the_driver(tmp_path, uri):
    """Ray stops a trial by raising SystemExit inside its report, for an ASHA stop and for an interrupted sweep
    alike; the trial cannot tell which, so it must not end its run (it once ended it FINISHED, so a cut-off trial
    showed as stopped early instead of KILLED). The driver ends it: FINISHED if the scheduler stopped it."""
    from mlflow import MlflowClient

    from pipelines.sweep import TrialTracker, end_child, reconcile_children

    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("x")).info.run_id
    run_ids = []
    for name in ("cut-off", "asha-stopped"):
        t = TrialTracker(out_dir=tmp_path, tags={"ray_trial_id": name}, tracking_uri=uri, experiment="x",
                           run_name=name, parent_run_id=parent, system_metrics=False)
        t.start({"lr": 1e-3})
        t.handed_over = True
        t.end("FAILED", "SystemExit: 0")  # what finetune's ending() does on SystemExit
        assert client.get_run(t.run_id).info.status == "RUNNING"
        run_ids.append(t.run_id)
    end_child(client, run_ids[1], "FINISHED", "stopped early by the scheduler", only_running=True)  # on_trial_complete
    n = reconcile_children(uri, parent, lambda run: ("KILLED", "sweep interrupted; continue with --resume"))
    cut, stopped = (client.get_run(r) for r in run_ids)
    assert n == 1 and cut.info.status == "KILLED" and "--resume" in cut.data.tags["zo.end_reason"]
    assert stopped.info.status == "FINISHED" and stopped.data.tags["zo.stopped_early"] == "true"
    end_child(client, run_ids[1], "KILLED", "late", only_running=True)  # an ended run is never touched again
    assert client.get_run(run_ids[1]).info.status == "FINISHED"


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_duplicate_or_running_runs(tmp_path, uri, ray_session):
    from pipelines.sweep import SweepCallbacks

    args = {"trials": 3, "max_concurrent": 2, "scheduler": "none"}
    # Ctrl-C at the third evaluation reported (both running trials are mid-run)
    s = sweep_with(SweepCallbacks(on_result=once_at(3, ctrl_c=signal.SIGINT)), tmp_path, uri, **args)
    assert s["status"] == "interrupted", s
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "KILLED" and "--resume" in parent.data.tags["zo.end_reason"]
    assert "RUNNING" not in {r.info.status for r in children}  # cut-off trials are KILLED until resumed
    assert "KILLED" in {r.info.status for r in children}
    first = {r.data.tags["ray_trial_id"]: r.info.run_id for r in children}
    killed = {r.info.run_id for r in children if r.info.status == "KILLED"}

    # the resumed driver's callback (not the pickled first one, which would interrupt it again) sees its results
    seen = []
    s2 = sweep_with(SweepCallbacks(on_result=lambda tid, result: seen.append(tid)), tmp_path, uri, resume=True,
                    name=s["sweep"], **args)
    assert s2["status"] == "finished", s2
    assert s2["parent_run_id"] == s["parent_run_id"] and sum(s2["counts"].values()) == 3
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert len(children) == 3 and {r.info.status for r in children} == {"FINISHED"}
    by_trial = {r.data.tags["ray_trial_id"]: r.info.run_id for r in children}
    assert len(by_trial) == 3 and all(by_trial[t] == rid for t, rid in first.items())  # continued, not duplicated
    assert seen and set(seen) <= set(by_trial)
    assert all("zo.resumed_at_step" in r.data.tags for r in children if r.info.run_id in killed)


@pytest.mark.slow
def test_crashed_trial_is_retried_from_its_checkpoint_to_the_same_weights(tmp_path, uri, ray_session):
    from pipelines.finetune import load_config, run
    from pipelines.sweep import SweepCallbacks

    def crash_once_after_3_steps(out_dir, steps):  # a closure: shipped to the Ray workers by value
        marker = out_dir / ".crashed_once"
        if steps == 3 and not marker.exists():
            marker.touch()
            raise RuntimeError("simulated crash after 3 steps")

    s = sweep_with(SweepCallbacks(after_step=crash_once_after_3_steps), tmp_path, uri, trials=1, steps=6,
                   scheduler="none", max_failures=1)
    assert s["status"] == "finished", s
    assert s["counts"] == {"finished": 1, "stopped_early": 0, "failed": 0, "interrupted": 0}, s
    trial_dir = Path(s["best"]["trial_dir"])
    assert (trial_dir / ".crashed_once").exists()  # it did crash once
    c, _, (child,) = runs_of(uri, s["parent_run_id"])
    assert child.info.status == "FINISHED" and child.data.tags["zo.resumed_at_step"] == "2"
    assert [m.step for m in c.get_metric_history(child.info.run_id, "train_loss")] == list(range(1, 7))

    p = s["best"]["params"]  # the same trial, uninterrupted, without Ray
    ref = run(load_config(None, dict(model="tiny:llama", task="sst2", method="mezo", steps=6, eval_every=2,
                                     num_train=16, num_dev=8, num_test=8, batch_size=4, seed=0, progress=False,
                                     tracking=False, out_dir=str(tmp_path / "ref"), **p)))
    a = zoplatform.Trajectory.load(trial_dir / "trajectory.jsonl").records
    b = zoplatform.Trajectory.load(tmp_path / "ref" / "trajectory.jsonl").records
    assert len(a) == 6 and a == b  # the weights are a function of the trajectory
    assert s["best"]["test_accuracy"] == ref["test_accuracy"]


@pytest.mark.slow
def test_sweep_against_a_real_mlflow_server(tmp_path, mlflow_template, ray_session):
    with mlflow_server(tmp_path, db_template=mlflow_template) as uri:
        code, s, out = sweep(tmp_path, "--trials", "1", "--scheduler", "none", uri=uri)
        assert code == 0 and s["status"] == "finished" and s["tracking_uri"] == uri, out
        c, parent, children = runs_of(uri, s["parent_run_id"])
        assert parent.info.status == "FINISHED" and len(children) == 1
        assert all(r.info.status == "FINISHED" and "dev_accuracy" in r.data.metrics for r in children)
        assert "results.csv" in {a.path for a in c.list_artifacts(parent.info.run_id)}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a throwaway local store


@pytest.mark.slow
def test_bench_sweep_overhead_reports_a_ratio(ray_session):
    res = CliRunner().invoke(cli, ["bench", "sweep-overhead", "--trials", "1", "--steps", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ratio"] > 0 and out["direct_s"] > 0 and out["trials"] == 1


# ----------------------------------------------------------------------------- signals, local Ray services
def _env() -> dict:
    """A driver subprocess's environment: a local Ray (no cluster), token auth from the environment (nothing
    written to $HOME)."""
    import os
    import secrets

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"RAY_AUTH_TOKEN": secrets.token_hex(16), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                  "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}


LOCAL_RAY_SOCKETS = """
import json, urllib.request
import psutil, ray
from pipelines import raytools

assert raytools.connect()  # starts a local Ray
@ray.remote
def node_ip():
    return ray.util.get_node_ip_address()

listening = []
for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
dashboards = []
for _, ip, port in listening:  # Ray's dashboard answers /api/version; its gRPC and raylet ports do not
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=3) as r:
            dashboards.append((port, r.status))
    except Exception:
        pass
print(json.dumps({"node_ip": ray.get(node_ip.remote()), "listening": listening, "dashboards": dashboards}))
ray.shutdown()
"""


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only_and_has_no_dashboard(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", LOCAL_RAY_SOCKETS], capture_output=True, text=True, timeout=300, check=False,
                         env=_env(), cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["node_ip"] == "127.0.0.1"
    names = {n for n, _, _ in out["listening"]}
    assert {"gcs_server", "raylet"} <= names, out  # the services were found, and:
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip, _ in out["listening"]), out["listening"]
    assert out["dashboards"] == []


def _wait_for_a_trial_step(sweep_dir: Path, proc, timeout_s: float = 400) -> None:
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for f in sweep_dir.glob("*/trials/*/state.json"):
            try:
                if json.loads(f.read_text())["history"]["steps_done"] >= 2:
                    return
            except (OSError, ValueError, KeyError):
                pass
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError("no trial reached step 2")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_sigterm_to_the_driver_ends_the_sweep_as_ctrl_c_does(backend, tmp_path, uri):
    """`kill` (SIGTERM) of a sweep driver = Ctrl-C: exit 130, the parent KILLED with the resume command, the cut-off
    trials KILLED (none left RUNNING). Before: on the Ray backend, ray.init's own SIGTERM handler aborted the
    driver (parent FAILED with SystemExit: 1, trials left RUNNING)."""
    import signal as sig
    import subprocess
    import sys

    args = list(TINY)
    args[args.index("--steps") + 1], args[args.index("--eval-every") + 1] = "400", "20"  # the signal lands mid-trial
    cmd = [sys.executable, "-m", "pipelines.cli", "sweep", *args, "--backend", backend, "--trials", "2",
           "--max-concurrent", "2" if backend == "ray" else "1", "--scheduler", "none",
           "--storage", str(tmp_path / "sweeps"), "--tracking-uri", uri, "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=Path(__file__).resolve().parents[1])
    try:
        _wait_for_a_trial_step(tmp_path / "sweeps", proc)
        proc.send_signal(sig.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    s = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    assert s["status"] == "interrupted" and "zo sweep --resume" in s["resume_with"]
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "KILLED" and "zo sweep --resume" in parent.data.tags["zo.end_reason"]
    assert children and "RUNNING" not in {r.info.status for r in children}
    killed = [r for r in children if r.info.status == "KILLED"]
    assert killed and all("zo sweep --resume" in r.data.tags["zo.end_reason"] for r in killed)


# ----------------------------------------------------------------------------- --confirm-seeds
@pytest.mark.parametrize("backend", ["optuna", "ray"])  # ray: the confirmation runs are Ray tasks, two at once
def test_confirm_seeds_reruns_the_best_and_the_default_on_fresh_seeds_and_pairs_them(tmp_path, uri, monkeypatch,
                                                                                     backend):
    if backend == "optuna":
        monkeypatch.setattr(raytools, "connect", no_ray_here)
    # 2 trials = the space's two defaults; both confirmed, one of them is the default itself.  Large steps, so the
    # tiny random model's predictions differ between the two settings
    space = _space(tmp_path, "method: mezo\nparams:\n  lr: {dist: log_uniform, low: 1.0e-4, high: 1.0}\n"
                             "  eps: {dist: log_uniform, low: 1.0e-3, high: 1.0e-1}\n"
                             "defaults:\n  - {lr: 1.0e-2, eps: 1.0e-2}\n  - {lr: 1.0e-1, eps: 1.0e-2}\n")
    code, s, out = sweep(tmp_path, "--backend", backend, "--trials", "2", "--max-concurrent",
                         "2" if backend == "ray" else "1", "--space", space, "--scheduler", "none", "--num-test", "32",
                         "--confirm-seeds", "2", "--confirm-top", "2")
    assert code == 0 and s["status"] == "finished", out
    assert sorted(ln.split("]")[0] for ln in out.splitlines() if ln.startswith("[confirm ")) == [
        f"[confirm {k}/4" for k in range(1, 5)]  # one line per run, as each finishes
    conf = s["confirm"]
    assert conf["seeds"] == [1, 2] and conf["steps"] == 4  # fresh seeds (the trials used 0), the trials' budget
    by = {c["label"]: c for c in conf["configs"]}
    assert set(by) == {"default", "best-1", "best-2"} and by["default"]["params"] == {"lr": 1e-2, "eps": 1e-2}
    twin = [c for c in conf["configs"] if c["same_as"] == "default"]
    other = [c for c in conf["configs"] if c["label"] != "default" and c["same_as"] is None]
    assert len(twin) == 1 and len(other) == 1 and other[0]["params"] == {"lr": 1e-1, "eps": 1e-2}
    assert twin[0]["paired"]["delta_acc"] == 0 and twin[0]["paired"]["verdict"] == "no difference"
    p = other[0]["paired"]
    assert {"delta_acc", "ci95", "p_value", "verdict", "seeds"} <= set(p) and p["seeds"] == 2
    assert p["verdict"] in ("better", "worse", "no difference") and p["ci95"][0] <= p["delta_acc"] <= p["ci95"][1]
    accs = {c["label"]: [r["test_accuracy"] for r in c["runs"]] for c in conf["configs"]}
    per_seed = [a - b for a, b in zip(accs[other[0]["label"]], accs["default"])]
    assert p["delta_acc"] == pytest.approx(sum(per_seed) / 2) and p["delta_acc"] != 0
    assert [(m["b"] - m["c"]) / 32 for m in p["mcnemar"]] == pytest.approx(per_seed)  # discordant pairs
    sweep_dir = Path(s["storage"])
    for label in ("default", other[0]["label"]):
        for seed in (1, 2):
            summary = json.loads((sweep_dir / "confirm" / label / f"seed{seed}" / "summary.json").read_text())
            assert summary["seed"] == seed and summary["steps"] == 4 and summary["num_test"] == 32
    md = (sweep_dir / "results" / "confirm.md").read_text()
    assert f"| {other[0]['label']} | sst2 | 2 |" in md and "| default |" in md
    assert json.loads((sweep_dir / "results" / "confirm.json").read_text())["configs"] == conf["configs"]

    c, parent, children = runs_of(uri, s["parent_run_id"])
    confirm_runs = [r for r in children if r.data.tags.get("zo.kind") == "sweep-confirm"]
    assert len(children) == 2 + 4 and len(confirm_runs) == 4  # the twin reuses the default's runs
    assert all(r.info.status == "FINISHED" for r in confirm_runs)
    assert sorted((r.data.tags["zo.confirm"], r.data.params["seed"]) for r in confirm_runs) == sorted(
        (label, str(seed)) for label in ("default", other[0]["label"]) for seed in (1, 2))
    key = f"confirm.{other[0]['label']}"
    assert parent.data.metrics[f"{key}.delta_acc"] == pytest.approx(p["delta_acc"])
    assert parent.data.tags[f"{key}.verdict"] == p["verdict"]
    assert {"confirm.md", "confirm.json"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}


@pytest.mark.parametrize("args,msg", [
    (["--confirm-top", "2"], "--confirm-top 2 needs --confirm-seeds"),
    (["--confirm-seeds", "2", "--confirm-top", "9"], "--confirm-top 9 exceeds --trials 8"),
    (["--confirm-seeds", "0"], "confirm_seeds=0 is invalid"),
    (["--confirm-seeds", "2", "--space", "SPACE:method: mezo\nparams:\n  lr: {dist: log_uniform, low: 1.0e-7, "
                                         "high: 1.0e-4}\n"], "has no defaults"),
])
def test_bad_confirm_options_are_one_line_before_anything_runs(args, msg, tmp_path, monkeypatch):
    monkeypatch.setattr(raytools, "connect", no_ray_here)
    args = [_space(tmp_path, a[6:]) if a.startswith("SPACE:") else a for a in args]
    code, _, out = sweep(tmp_path, *args)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], out
    assert not (tmp_path / "sweeps").exists()
