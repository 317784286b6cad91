"""issue 40: `zo sweep` says nothing silently wrong or misleading: a trial that ran its whole budget is finished
(with its test accuracy), never "stopped early"; no parameter importances from the space's defaults alone; the
end is a short human summary (``--json``: the one-line JSON) and the parent run's description carries the
confirmation; a second driver on a sweep is refused in one line; bad input (a batch larger than the sample, an
RDB URL without its driver, an empty experiment, a name leaving --storage, --steps 0) is one line, exit 2, before
Ray starts; a sweep whose every trial failed exits non-zero; Ctrl-C stops the Optuna backend's running trials."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines import raytools
from pipelines.cli import main as cli
from tests.conftest import needs_data
from tests.test_sweep import TINY, no_ray_here, once_at, runs_of, sweep, sweep_with

pytestmark = needs_data  # reads task data: the real files when found, else the in-repo fixture

OPTUNA = ["--backend", "optuna", "--max-concurrent", "1"]


# ----------------------------------------------------------------------------- bad input, before Ray
BAD = [
    (["--set", "batch_size=100000"], "batch_size=100000 exceeds the 16 train examples of sst2"),
    (["--batch-size", "100000"], "batch_size=100000 exceeds the 16 train examples of sst2"),
    (["--optuna-storage", "postgresql://me:s3cret@db.example/optuna"], "database driver for 'postgresql'"),
    (["--optuna-storage", "no such url://x"], "is not a database URL"),
    (["--experiment", ""], "--experiment '' is empty"),
    (["--name", "../outside"], "--name '../outside' is not a valid sweep name"),
    (["--name", "a/b"], "--name 'a/b' is not a valid sweep name"),
    (["--steps", "0"], "steps=0 is invalid"),
    (["--trials", "0"], "trials=0 is invalid"),
    (["--precision", "fp7"], "precision"),
]


@pytest.mark.parametrize("args,msg", BAD, ids=[m for _, m in BAD])
def test_bad_sweep_input_is_one_line_exit_2_before_ray(args, msg, tmp_path, monkeypatch):
    monkeypatch.setattr(raytools, "connect", no_ray_here)
    code, _, out = sweep(tmp_path, *args)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], out
    assert "s3cret" not in out  # a URL's password is never printed
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "outside").exists()


def test_an_absolute_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(raytools, "connect", no_ray_here)
    code, _, out = sweep(tmp_path, "--name", str(tmp_path / "abs"))
    assert code == 2 and "is not a valid sweep name" in out and out.count("\n") == 1, out
    assert not (tmp_path / "abs").exists()


def test_sweep_help_has_precision_and_a_plain_percent():
    out = " ".join(CliRunner().invoke(cli, ["sweep", "--help"]).output.split())
    assert "--precision" in out and "10% of a trial" in out and "%%" not in out


# ----------------------------------------------------------------------------- importances (no sweep)
def test_no_importances_from_the_defaults_alone():
    import search_spaces
    from pipelines.sweep import importances

    space = search_spaces.load_space("curvzo")
    obj = [("acc", "best_dev_accuracy", "max")]
    rows = [{"params": dict(p), "status": "finished", "best_dev_accuracy": 0.5 + 0.1 * i}
            for i, p in enumerate(search_spaces.to_points(space))]
    assert len(rows) == 3
    with pytest.raises(ValueError, match=r"only 0 of the 3 trials .* \(3 ran the space's defaults\); importances "
                                         r"need at least 5 sampled"):
        importances(rows, space, obj)

    mezo = search_spaces.load_space("mezo")
    sampled = [{"params": {"lr": 10 ** (-7 + 0.5 * i), "eps": 10 ** (-4 + 0.4 * i)}, "status": "finished",
                "best_dev_accuracy": 0.1 * i} for i in range(5)]
    defaults = [{"params": dict(p), "status": "finished", "best_dev_accuracy": 0.2}
                for p in search_spaces.to_points(mezo)]
    with pytest.raises(ValueError, match="only 4 of the 6"):
        importances(sampled[:4] + defaults, mezo, obj)
    imps = importances(sampled + defaults, mezo, obj)  # 5 sampled: computed
    assert set(imps) == {"lr", "eps"} and sum(imps.values()) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Optuna sweeps, in-process
def test_full_budget_trial_is_finished_summary_is_human_and_note_has_the_confirmation(tmp_path, uri, monkeypatch):
    """Items 3, 5, 6 in one tiny sweep: the pruner says "stop" to t0 only at its last evaluation (its whole
    budget, 8 forward passes) and to t1 at 4 of 8. Before: t0 ended "stopped early (pruned)"."""
    import optuna

    monkeypatch.setattr(raytools, "connect", no_ray_here)

    def should_prune(self):
        steps = self.storage.get_trial(self._trial_id).intermediate_values
        return max(steps) >= (8 if self.number == 0 else 4)

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", should_prune)
    res = CliRunner().invoke(cli, ["sweep", *TINY, *OPTUNA, "--trials", "2", "--scheduler", "asha",
                                   "--grace-period", "4", "--confirm-seeds", "1", "--precision", "fp32",
                                   "--storage", str(tmp_path / "sweeps"), "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    sweep_dir = tmp_path / "sweeps" / "mezo-sst2-tiny_llama"
    rows = {r["label"]: r for r in json.loads((sweep_dir / "results" / "results.json").read_text())}
    assert rows["t0"]["status"] == "finished" and rows["t0"]["forward_passes"] == 8
    assert rows["t0"]["test_accuracy"] is not None
    assert rows["t1"]["status"] == "stopped_early" and rows["t1"]["forward_passes"] == 4

    # the end: a short summary on stdout, no JSON dump
    out = res.stdout
    assert not any(ln.lstrip().startswith(("{", '"')) for ln in out.splitlines()), out
    assert out.startswith("sweep mezo-sst2-tiny_llama finished: 2 of 2 trials (1 finished, 1 stopped early)")
    best_cfg = sweep_dir / "results" / "best_config.yaml"
    assert f"best config: {best_cfg}" in out and best_cfg.is_file()
    import yaml

    assert yaml.safe_load(best_cfg.read_text())["precision"] == "fp32"  # --precision reached the trials
    conf = [ln for ln in out.splitlines() if ln.startswith("confirm best-1 vs default: ")]
    assert len(conf) == 1 and "[95% CI " in conf[0] and "over 1 seeds: " in conf[0], out
    assert "importances: not computed: only 0 of the 2 trials" in out and "MLflow sweep: http" in out
    assert len(out.strip().splitlines()) <= 12

    # importances: none drawn from the two defaults; said in results.md (and logged)
    md = (sweep_dir / "results" / "results.md").read_text()
    assert "Parameter importances: not computed: only 0 of the 2 trials" in md and "space's defaults" in md
    assert "parameter importances not computed" in res.stderr

    # the parent's description carries the confirmation table
    _, parent, _ = runs_of(uri, parent_id := json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"])
    note = parent.data.tags["mlflow.note.content"]
    confirm_md = (sweep_dir / "results" / "confirm.md").read_text()
    assert "| rank |" in note and confirm_md.strip() in note, parent_id


def test_json_alone_prints_one_line(tmp_path, uri, monkeypatch):
    monkeypatch.setattr(raytools, "connect", no_ray_here)
    res = CliRunner().invoke(cli, ["sweep", *TINY, *OPTUNA, "--trials", "1", "--scheduler", "none", "--json",
                                   "--storage", str(tmp_path / "sweeps"), "--tracking-uri", uri])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["status"] == "finished", res.stdout
    assert "MLflow sweep: http" in res.stderr


def test_a_sweep_whose_every_trial_failed_exits_non_zero(tmp_path, uri, monkeypatch):
    from pipelines.sweep import SweepCallbacks

    monkeypatch.setattr(raytools, "connect", no_ray_here)

    def boom(out_dir, steps):
        raise RuntimeError("simulated trial failure")

    s = sweep_with(SweepCallbacks(after_step=boom), tmp_path, uri, backend="optuna", max_concurrent=1, trials=2,
                   max_failures=0, scheduler="none")
    assert s["status"] == "failed" and s["counts"]["failed"] == 2, s
    assert s["error"] == "every trial failed; the first: RuntimeError: simulated trial failure", s
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "FAILED" and "every trial failed" in parent.data.tags["zo.end_reason"]
    assert {c.info.status for c in children} == {"FAILED"}
    # the command says so: resumed, the sweep has nothing left to run and is still a failed sweep, exit 1
    code, s, out = sweep(tmp_path, *OPTUNA, "--trials", "2", "--max-failures", "0", "--scheduler", "none",
                         "--resume")
    assert code == 1 and s["status"] == "failed" and s["counts"]["failed"] == 2, out
    err = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert err == ["error: sweep mezo-sst2-tiny_llama: every trial failed; the first: RuntimeError: simulated "
                   "trial failure"], out


def test_a_second_driver_on_the_same_sweep_is_refused_in_one_line(tmp_path, uri, monkeypatch):
    from pipelines.locks import OutDirLock

    monkeypatch.setattr(raytools, "connect", no_ray_here)
    sweep_dir = tmp_path / "sweeps" / "mezo-sst2-tiny_llama"
    with OutDirLock(sweep_dir):  # another driver holds the sweep (a flock conflicts across open files)
        code, _, out = sweep(tmp_path, *OPTUNA, "--trials", "1", "--optuna-storage", str(tmp_path / "j.log"))
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, out
    assert lines[0].startswith("error: sweep 'mezo-sst2-tiny_llama' in ") and "in use by another zo sweep (pid " \
        in lines[0], out
    assert not (sweep_dir / "sweep.json").exists() and not (tmp_path / "j.log").exists()  # nothing written
    code, s, out = sweep(tmp_path, *OPTUNA, "--trials", "1", "--scheduler", "none")  # released: it runs
    assert code == 0 and s["status"] == "finished", out


def test_ctrl_c_stops_the_running_optuna_trials_and_they_resume(tmp_path, uri, monkeypatch):
    """Two trials in two threads; Ctrl-C at the first evaluation. Before: Optuna's thread pool waited for both
    trials to run their 40 steps (FINISHED), the interrupt only stopped new ones."""
    from pipelines.sweep import SweepCallbacks

    monkeypatch.setattr(raytools, "connect", no_ray_here)
    args = list(TINY)
    args[args.index("--steps") + 1], args[args.index("--eval-every") + 1] = "40", "20"
    common = ["--backend", "optuna", "--max-concurrent", "2", "--trials", "2", "--scheduler", "none"]
    s = sweep_with(SweepCallbacks(on_result=once_at(1, ctrl_c=signal.SIGINT)), tmp_path, uri, steps=40,
                   finetune={"eval_every": 20}, backend="optuna", max_concurrent=2, trials=2, scheduler="none")
    assert s["status"] == "interrupted" and "zo sweep --resume" in s["resume_with"], s
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "KILLED" and len(children) == 2
    assert {c.info.status for c in children} == {"KILLED"}, [c.data.tags.get("zo.end_reason") for c in children]
    trials = sorted((Path(s["storage"]) / "trials").iterdir())
    done = [json.loads((d / "state.json").read_text())["history"]["steps_done"] for d in trials]
    assert len(done) == 2 and all(n < 40 for n in done), done  # stopped mid-run, checkpoint kept
    first = {c.data.tags["zo.trial"]: c.info.run_id for c in children}

    res = CliRunner().invoke(cli, ["sweep", *args, *common, "--storage", str(tmp_path / "sweeps"),
                                   "--tracking-uri", uri, "--json", "--resume"])
    assert res.exit_code == 0, res.output
    _, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["zo.trial"]: c.info.run_id for c in children} == first  # continued in the same runs


@pytest.mark.slow
def test_ray_asha_never_cuts_a_trial_at_its_last_evaluation(tmp_path, uri, ray_session):
    """ASHA's first rung at the whole budget (8 forward passes): before, a trial worse than the rung's median was
    stopped at its last evaluation, so it showed "stopped early" with no test accuracy after running all of it."""
    code, s, out = sweep(tmp_path, "--trials", "3", "--max-concurrent", "1", "--scheduler", "asha",
                         "--grace-period", "8", "--reduction-factor", "2", "--objectives", "loss")
    assert code == 0 and s["status"] == "finished", out
    assert s["counts"] == {"finished": 3, "stopped_early": 0, "failed": 0, "interrupted": 0}, s["counts"]
    rows = json.loads((Path(s["storage"]) / "results" / "results.json").read_text())
    assert [r["forward_passes"] for r in rows] == [8, 8, 8]
    assert all(r["test_accuracy"] is not None for r in rows)
    _, _, children = runs_of(uri, s["parent_run_id"])
    assert len(children) == 3 and all("zo.stopped_early" not in c.data.tags for c in children)
    assert all("test_accuracy" in c.data.metrics for c in children)
