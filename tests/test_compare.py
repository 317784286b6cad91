"""`zo compare`: equal forward budgets, the results table and plots, MLflow
structure, reuse of finished runs, and one-line errors before any run."""
from __future__ import annotations

import csv
import json
import statistics
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main as cli
from tests.conftest import needs_data
from zoplatform.errors import ConfigError
from pipelines.compare.report import README_END, README_START, forwards_to_reach, machine_line, reference_not_above_start
from pipelines.compare import load_compare_config, markdown, update_readme

TINY = ["--model", "tiny:llama", "--num-train", "16", "--num-dev", "8", "--num-test", "8", "--batch-size", "4",
        "--eval-points", "2"]


def compare(tmp_path, uri, *args):
    res = CliRunner().invoke(cli, ["compare", *TINY, "--out", str(tmp_path / "cmp"), "--tracking-uri", uri,
                                   "--json", *args])
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.startswith("{")]
    return res.exit_code, (json.loads(lines[-1]) if lines else None), res.output


def test_forwards_to_reach_takes_the_first_evaluation_at_or_above_the_target():
    curve = [{"forwards": 0, "dev_accuracy": 0.5}, {"forwards": 10, "dev_accuracy": 0.7},
             {"forwards": 20, "dev_accuracy": 0.6}, {"forwards": 30, "dev_accuracy": 0.8}]
    assert forwards_to_reach(curve, 0.7) == 10
    assert forwards_to_reach(curve, 0.75) == 30
    assert forwards_to_reach(curve, 0.9) is None
    losses = [{"forwards": f, "dev_loss": x} for f, x in ((0, 0.9), (10, 0.7), (20, 0.75), (30, 0.6))]
    assert forwards_to_reach(losses, 0.7, "dev_loss") == 10  # the first at or below: lower loss is better
    assert forwards_to_reach(losses, 0.65, "dev_loss") == 30
    assert forwards_to_reach(losses, 0.5, "dev_loss") is None


def test_report_says_where_the_reference_never_beat_its_step_0_dev_accuracy(tmp_path):
    def run(label, task, accs, status="done"):
        return {"label": label, "task": task, "status": status,
                "curve": [{"forwards": 8 * i, "dev_accuracy": a} for i, a in enumerate(accs)]}

    runs = [run("mezo", "sst2", [0.5, 0.7]), run("mezo", "cb", [0.55, 0.48]),
            run("mezo", "rte", [0.5, 0.5]), run("mezo", "rte", [0.5, 0.6]),  # one seed improved: rte is informative
            run("mezo", "wic", [0.5, 0.4]), run("mezo", "wic", [0.5, 0.9], status="failed"),
            run("fo", "cb", [0.55, 0.8])]
    assert reference_not_above_start(runs, "mezo") == ["cb", "wic"]
    assert reference_not_above_start(runs, "fo") == []

    cfg = load_compare_config(dict(methods="mezo", tasks="sst2,cb", seeds=1, forward_budget=8, model="tiny:llama",
                                   out=str(tmp_path)), None)
    agg = [{"label": "mezo", "task": t, "steps": 4, "seeds": 1, "test_accuracy_mean": 0.6, "test_accuracy_std": 0.0,
            "final_dev_loss_mean": 0.7, "final_dev_loss_std": 0.0, "forwards_to_reference_mean": 0,
            "reached_reference": "1/1", "wall_time_s_mean": 1.0, "peak_memory_mb_max": 10} for t in cfg.tasks]
    assert "orders nothing" not in markdown(cfg, agg, "CPU")
    last = markdown(cfg, agg, "CPU", ["cb"]).strip().splitlines()[-1]
    assert last.startswith("On cb, `mezo` ended no higher than its step-0 dev accuracy")


def test_the_header_names_the_hardware_the_runs_recorded():
    amd, xeon = "CPU AMD EPYC (2 cores)", "CPU Intel Xeon (2 cores, AMX)"
    runs = [{"status": "done", "hardware": amd}, {"status": "done", "hardware": amd}, {"status": "failed",
            "hardware": xeon}]
    assert machine_line("cpu", runs) == f"runs on {amd}"  # a failed run's hardware is not counted
    runs += [{"status": "done", "hardware": xeon}, {"status": "done"}]
    assert machine_line("cpu", runs) == (f"runs on {amd} (2 runs), {xeon} (1 run), hardware not recorded (1 run): "
                                         "wall times compare only within one")
    assert machine_line("cpu", [{"status": "done"}]).startswith("CPU (")  # old runs: this machine's line


def test_update_readme_replaces_only_the_generated_block(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"# T\nintro\n{README_START}\nold\n{README_END}\nafter\n")
    update_readme(p, "| a | b |\n", "zo compare --x")
    text = p.read_text()
    assert text.startswith("# T\nintro\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old" not in text and "| a | b |" in text and "zo compare --x" in text


def test_update_readme_named_block_leaves_the_results_block(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"{README_START}\nres\n{README_END}\n<!-- evidence:start -->\nold\n<!-- evidence:end -->\nz\n")
    update_readme(p, "new body\n", "zo compare --y", block="evidence")
    text = p.read_text()
    assert text.startswith(f"{README_START}\nres\n{README_END}\n<!-- evidence:start -->\n") and text.endswith(
        "<!-- evidence:end -->\nz\n")
    assert "old" not in text and "new body" in text and "zo compare --y" in text
    with pytest.raises(ConfigError, match="no <!-- other:start -->"):
        update_readme(p, "x", "r", block="other")


@pytest.mark.parametrize("args,msg", [
    (["--methods", "mezo,adamzo", "--tasks", "sst2"], "unknown method label 'adamzo'"),
    (["--methods", "mezo", "--tasks", "sst2,sst9"], "unknown task 'sst9'"),
    (["--methods", "curvzo", "--tasks", "sst2"], "--reference 'mezo' is not among --methods"),
    (["--methods", "mezo,mezo", "--tasks", "sst2"], "duplicate entries"),
    (["--methods", "mezo", "--tasks", "sst2", "--forward-budget", "1"], "forward_budget=1 is invalid"),
    (["--methods", "mezo", "--tasks", "sst2", "--task-budget", "sst2"], "'sst2' is not TASK=FORWARD_PASSES"),
    (["--methods", "mezo", "--tasks", "sst2", "--task-budget", "rte=100"],
     "task_budgets names 'rte', which is not among tasks (sst2)"),
    (["--methods", "mezo", "--tasks", "sst2,rte", "--task-budget", "rte=1"], "greater than or equal to 2"),
    (["--methods", "mezo,cz", "--tasks", "sst2", "--configs", "CFG:cz: {method: curvzo, profile: x}"],
     "'profile' is not a finetune option; method hyperparameters go under method_options"),
    (["--methods", "mezo,cz", "--tasks", "sst2", "--configs", "CFG:cz: {method: curvzo, method_options: {profile: x}}"],
     "profile"),
    (["--methods", "mezo,zf", "--tasks", "sst2", "--configs", "CFG:zf: {method: zo-finetuner, policy: /no/such/dir}"],
     "policy '/no/such/dir' is neither an existing path"),
    (["--methods", "mezo", "--tasks", "sst2", "--update-readme", "CFG:# a README without the block"],
     "has no <!-- results:start --> ... <!-- results:end --> block"),
    (["--methods", "mezo", "--tasks", "sst2", "--update-readme", "CFG:<!-- results:start -->\n<!-- results:end -->",
      "--readme-block", "evidence"], "has no <!-- evidence:start -->"),
    (["--methods", "mezo", "--tasks", "sst2", "--readme-block", "My Block"], "readme_block"),
])
def test_bad_input_is_one_line_before_any_run(args, msg, tmp_path, uri):
    args = list(args)
    if "--forward-budget" not in args:
        args += ["--forward-budget", "4"]
    for i, a in enumerate(args):
        if a.startswith("CFG:"):
            (tmp_path / "c.yaml").write_text(a[4:])
            args[i] = str(tmp_path / "c.yaml")
    code, _, out = compare(tmp_path, uri, *args)
    lines = [ln for ln in out.strip().splitlines() if ln.strip() and not ln.startswith("note:")]
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert msg in lines[0], out
    assert not (tmp_path / "cmp" / "runs").exists()


@needs_data
def test_two_methods_two_tasks_two_seeds_table_plots_and_mlflow(tmp_path, uri):
    from mlflow import MlflowClient

    (tmp_path / "configs.yaml").write_text("cz-port: {method: curvzo, lr: 1.0e-3, method_options: {profile: port}}\n"
                                           "mezo: {lr: 1.0e-3, eps: 1.0e-2}\n")
    code, out, text = compare(tmp_path, uri, "--methods", "mezo,cz-port", "--tasks", "sst2,rte", "--seeds", "2",
                              "--forward-budget", "8", "--configs", str(tmp_path / "configs.yaml"))
    assert code == 0, text
    assert out["runs"] == 8 and out["failed"] == 0
    root = tmp_path / "cmp"
    # every run got the same forward budget, and the method config of its label
    for task in ("sst2", "rte"):
        for label in ("mezo", "cz-port"):
            for seed in (0, 1):
                d = root / "runs" / task / label / f"seed{seed}"
                s = json.loads((d / "summary.json").read_text())
                st = json.loads((d / "state.json").read_text())
                assert s["forward_passes"] == 8 and s["steps"] == 4 and s["seed"] == seed
                assert st["config"]["lr"] == 1e-3
                assert st["config"]["method_options"] == ({"profile": "port"} if label == "cz-port" else {})
    # the table's mean ± std are the per-run test accuracies' mean and sample std
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert {(r["label"], r["task"]) for r in rows} == {(m, t) for m in ("mezo", "cz-port") for t in ("sst2", "rte")}
    for r in rows:
        accs = [json.loads((root / "runs" / r["task"] / r["label"] / f"seed{k}" / "summary.json").read_text())
                ["test_accuracy"] for k in (0, 1)]
        assert float(r["test_accuracy_mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(r["test_accuracy_std"]) == pytest.approx(statistics.stdev(accs))
        assert r["seeds"] == "2" and r["reached_reference"].endswith("/2")
    md = (root / "results.md").read_text()
    assert "| mezo |" in md and "| cz-port |" in md and "| method | sst2 | rte |" in md
    for f in ("dev_curves_sst2.png", "dev_curves_rte.png", "peak_memory.png"):
        assert (root / f).stat().st_size > 1000
    # MLflow: one parent with the report, one FINISHED child per run
    c = MlflowClient(tracking_uri=uri)
    parent = c.get_run(out["parent_run_id"])
    kids = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    assert len(kids) == 8 and all(k.info.status == "FINISHED" for k in kids)
    assert {(k.data.tags["task"], k.data.tags["method"]) for k in kids} == {
        (t, m) for t in ("sst2", "rte") for m in ("mezo", "curvzo")}
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.csv", "results.json", "dev_curves_sst2.png", "peak_memory.png"} <= arts
    assert parent.info.status == "FINISHED" and parent.data.tags["zo.kind"] == "compare"
    # browsing (issue 19): named by what they are, the report as the parent's description, resolved params
    assert parent.info.run_name == "compare mezo,cz-port on sst2,rte (tiny:llama)"
    assert sorted(k.info.run_name for k in kids) == sorted(f"{m} {t} s{k}" for m in ("mezo", "cz-port")
                                                           for t in ("sst2", "rte") for k in (0, 1))
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**compare mezo,cz-port on sst2,rte (tiny:llama)** (8 runs")
    assert "| method | sst2 | rte |" in note and (root / "results.md").read_text().split("\n\n")[0] in note
    for k in kids:
        eps = "0.01" if k.data.tags["method"] == "mezo" else "0.001"  # cz-port: CurvZO's default eps
        assert k.data.params["lr"] == "0.001" and k.data.params["eps"] == eps  # the label's, never "None"
        assert k.data.tags["mlflow.note.content"].startswith(f"{k.data.tags['method']} on {k.data.tags['task']}")
    a = next(x for x in out["aggregate"] if x["label"] == "cz-port" and x["task"] == "rte")
    pm = parent.data.metrics
    assert pm["test_accuracy/cz-port/rte"] == pytest.approx(a["test_accuracy_mean"])
    assert pm["test_accuracy_std/cz-port/rte"] == pytest.approx(a["test_accuracy_std"])
    assert pm["final_dev_loss/cz-port/rte"] == pytest.approx(a["final_dev_loss_mean"])
    assert "peak_memory_mb/mezo" in pm
    assert [m.step for m in c.get_metric_history(parent.info.run_id, "test_accuracy/cz-port/rte")] == [0]
    links = out["mlflow_ui"]
    assert links["run"].endswith(f"/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
                                 "?workflowType=machine_learning")
    assert all(k.info.run_id in links["children"] for k in kids)  # the children side by side
    assert f"MLflow comparison: {links['run']}" in text

    # the same command again reuses every finished run: same numbers, no new child runs
    code, again, text = compare(tmp_path, uri, "--methods", "mezo,cz-port", "--tasks", "sst2,rte", "--seeds", "2",
                                "--forward-budget", "8", "--configs", str(tmp_path / "configs.yaml"))
    assert code == 0, text
    assert again["aggregate"] == out["aggregate"] and again["parent_run_id"] == out["parent_run_id"]
    assert len(c.search_runs([parent.info.experiment_id], "tags.mlflow.parentRunId = "
                             f"'{out['parent_run_id']}'")) == 8
    # --report-only with an extra seed runs nothing and reports what exists (n=2 of 3 seeds)
    code, part, text = compare(tmp_path, uri, "--methods", "mezo,cz-port", "--tasks", "sst2,rte", "--seeds", "3",
                               "--forward-budget", "8", "--configs", str(tmp_path / "configs.yaml"), "--report-only")
    assert code == 0 and part["status"] == "partial" and part["missing"] == 4, text
    assert not (root / "runs" / "sst2" / "mezo" / "seed2").exists()
    assert all(a["seeds"] == 2 for a in part["aggregate"]) and "(n=2)" in (root / "results.md").read_text()
    # a saved parent the store does not hold (a fresh mlflow.db at the same URI) gets a new parent, not a crash
    saved = json.loads((root / "compare.json").read_text())
    (root / "compare.json").write_text(json.dumps({**saved, "parent_run_id": "0" * 32}))
    code, fresh, text = compare(tmp_path, uri, "--methods", "mezo,cz-port", "--tasks", "sst2,rte", "--seeds", "2",
                                "--forward-budget", "8", "--configs", str(tmp_path / "configs.yaml"), "--report-only")
    assert code == 0 and f"run {'0' * 32} is not in" in text, text
    assert fresh["parent_run_id"] not in (out["parent_run_id"], "0" * 32) and fresh["aggregate"] == out["aggregate"]
    assert json.loads((root / "compare.json").read_text())["parent_run_id"] == fresh["parent_run_id"]
    # a changed method config does not silently reuse a run made with another one
    (tmp_path / "configs.yaml").write_text("cz-port: {method: curvzo, lr: 1.0e-4, method_options: {profile: port}}\n"
                                           "mezo: {lr: 1.0e-3, eps: 1.0e-2}\n")
    code, _, text = compare(tmp_path, uri, "--methods", "mezo,cz-port", "--tasks", "sst2,rte", "--seeds", "2",
                            "--forward-budget", "8", "--configs", str(tmp_path / "configs.yaml"))
    assert code == 2 and "holds a run with another lr" in text


@needs_data
def test_an_interrupted_fo_run_starts_again_and_finished_runs_are_kept(tmp_path, uri):
    """fo keeps no checkpoint (weights + AdamW state), so a rerun of the comparison runs it again instead of
    failing on --resume; the ZO runs beside it are reused."""
    args = ("--methods", "mezo,fo", "--tasks", "sst2", "--seeds", "1", "--forward-budget", "4")
    code, out, text = compare(tmp_path, uri, *args)
    assert code == 0 and out["failed"] == 0, text
    fo, mezo = (tmp_path / "cmp" / "runs" / "sst2" / m / "seed0" for m in ("fo", "mezo"))
    first = json.loads((fo / "summary.json").read_text())
    mezo_mtime = (mezo / "summary.json").stat().st_mtime_ns
    (fo / "summary.json").unlink()  # as a run killed mid-way leaves it: state.json without a summary
    # alone, the run names why --resume cannot continue it (one line, exit 2)
    res = CliRunner().invoke(cli, ["finetune", "--config", str(fo / "config.json"), "--tracking-uri", uri])
    assert res.exit_code == 2 and "keeps no checkpoint" in res.output, res.output
    code, out, text = compare(tmp_path, uri, *args)
    assert code == 0 and out["failed"] == 0 and out["missing"] == 0, text
    assert "1 interrupted fo run(s) start again" in text
    again = json.loads((fo / "summary.json").read_text())
    assert again["test_accuracy"] == first["test_accuracy"] and again["steps"] == first["steps"]  # same seed, same run
    assert (mezo / "summary.json").stat().st_mtime_ns == mezo_mtime


@needs_data
def test_ray_backend_runs_independent_runs_in_parallel_workers(tmp_path, uri, ray_session):
    code, out, text = compare(tmp_path, uri, "--methods", "mezo", "--tasks", "sst2", "--seeds", "2",
                              "--forward-budget", "4", "--backend", "ray", "--resources", "cpu=1")
    assert code == 0 and out["runs"] == 2 and out["failed"] == 0, text
    runs = json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["done", "done"] and all(r["mlflow_run_id"] for r in runs)
    assert len({r["mlflow_run_id"] for r in runs}) == 2  # one child run each


@pytest.mark.parametrize("recipe", ["compare_cpu.yaml", "compare_sparse.yaml", "compare_minilm.yaml",
                                    "compare_matrix.yaml"])
def test_shipped_recipe_configs_plan_at_equal_forward_passes(recipe, tmp_path):
    """Every label of the benchmark recipes validates, and the plan gives each the same forward-pass budget:
    two-point methods budget/2 steps, LOREN budget/K."""
    import yaml

    from pipelines.compare import load_compare_config, plan

    path = Path(__file__).resolve().parents[1] / "benchmarks" / recipe
    entries = yaml.safe_load(path.read_text())
    labels = [k for k, v in entries.items() if not v.get("policy")]  # registry policies need a store: not here
    cfg = load_compare_config(dict(methods=",".join(labels), tasks="sst2", seeds=1, forward_budget=600,
                                   model="tiny:llama", out=str(tmp_path)), str(path))
    specs = {s.label: s for s in plan(cfg, tmp_path)}
    assert set(specs) == set(labels)
    for label, s in specs.items():
        method = s.config.method
        assert method == entries[label].get("method", label)
        assert s.config.lr == pytest.approx(float(entries[label]["lr"]))
        per_step = 6 if method == "loren" else 2  # LOREN's K = 6 one-sided queries; fo counted like MeZO
        assert s.config.steps * per_step == 600, label


def test_a_task_budget_gives_every_method_of_that_task_the_same_reduced_budget(tmp_path):
    from pipelines.compare import load_compare_config, plan

    cfg = load_compare_config(dict(methods="mezo,loren,fo,zero-shot", tasks="sst2,rte", seeds=1, forward_budget=600,
                                   task_budgets="rte=120", eval_points=6, model="tiny:llama", out=str(tmp_path)),
                              None)
    steps = {(s.task, s.label): (s.config.steps, s.config.eval_every) for s in plan(cfg, tmp_path)}
    assert steps == {("sst2", "mezo"): (300, 50), ("sst2", "loren"): (100, 16), ("sst2", "fo"): (300, 50),
                     ("sst2", "zero-shot"): (0, 1), ("rte", "mezo"): (60, 10), ("rte", "loren"): (20, 3),
                     ("rte", "fo"): (60, 10), ("rte", "zero-shot"): (0, 1)}


def test_dev_curve_plot_draws_zero_shot_as_a_reference_line(tmp_path, monkeypatch):
    import matplotlib.axes

    from pipelines.compare import plots

    cfg = load_compare_config(dict(methods="mezo,zero-shot", tasks="sst2,rte", seeds=1, forward_budget=8,
                                   model="tiny:llama", out=str(tmp_path)), None)
    curve = [{"forwards": 0, "dev_accuracy": 0.5, "dev_loss": 0.9}, {"forwards": 8, "dev_accuracy": 0.7,
                                                                       "dev_loss": 0.6}]
    runs = [{"label": "mezo", "task": "sst2", "curve": curve, "status": "done"},
            {"label": "zero-shot", "task": "sst2", "curve": curve[:1], "status": "done"},
            {"label": "zero-shot", "task": "rte", "curve": curve[:1], "status": "done"}]
    hlines = []
    real = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda ax, y=0, *a, **k: hlines.append((y, k.get("label"))) or real(ax, y, *a, **k))
    with warnings.catch_warnings():  # a task whose only row is zero-shot still gets a legend (no matplotlib warning)
        warnings.simplefilter("error")
        files = plots(cfg, runs, [], tmp_path)
    assert {f.name for f in files} == {"dev_curves_sst2.png", "dev_curves_rte.png"}
    # accuracy then loss, per task: the base model's step-0 values
    assert hlines == [(0.5, "zero-shot (n=1)"), (0.9, "zero-shot (n=1)")] * 2



# ----------------------------------------------------------------------------- paired statistics in the report
def _fake_runs(tmp_path, labels_right, no_predictions=(), n=120):
    """Finished runs as the finetune recipe leaves them (state.json, summary.json, predictions.npz), without
    running a model: ``labels_right[label][seed]`` = which of the ``n`` test examples that run got right."""
    import numpy as np

    from pipelines.compare import plan

    labels = list(labels_right)
    seeds = len(next(iter(labels_right.values())))
    cfg = load_compare_config(dict(methods=",".join(labels), tasks="sst2", seeds=seeds, forward_budget=8,
                                   eval_points=2, num_train=16, num_dev=8, num_test=n, batch_size=4,
                                   model="tiny:llama", out=str(tmp_path / "cmp")), None)  # TINY's sizes
    uid = np.array([f"sst2-validation-{i}" for i in range(n)])
    truth = np.arange(n) % 2
    for spec in plan(cfg, tmp_path / "cmp"):
        right = labels_right[spec.label][spec.seed]
        auc_shift = 0.1 * labels.index(spec.label)  # later labels: a higher dev-loss curve
        evals = [{"step": k, "dev_loss": 0.9 - 0.05 * k + auc_shift + 0.01 * spec.seed, "dev_accuracy": 0.5,
                  "forwards": 2 * k, "wall_s": 1.0} for k in (0, 2, 4)]
        d = spec.out_dir
        d.mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"run_id": None, "config": spec.config.model_dump(),
                                                  "history": {"evals": evals, "steps_done": 4}}))
        (d / "summary.json").write_text(json.dumps({"test_accuracy": float(right.mean()), "forward_passes": 8,
                                                    "wall_time_s": 1.0, "peak_memory_mb": 10.0}))
        if spec.label not in no_predictions:
            pred = np.where(right, truth, 1 - truth)
            np.savez_compressed(d / "predictions.npz", pred=pred.astype(np.int16), label=truth.astype(np.int16),
                                uid=uid)
    return cfg


def test_report_pairs_runs_by_seed_with_verdicts_and_dashes_for_runs_without_predictions(tmp_path, uri):
    import numpy as np
    from mlflow import MlflowClient

    rng = np.random.default_rng(0)
    n = 120
    base = [rng.random(n) < 0.6 for _ in range(3)]
    runs = {"mezo": base,
            "curvzo": [b | (rng.random(n) < 0.5) for b in base],  # right wherever mezo is, and on half the rest
            "sparse-mezo": [b.copy() for b in base],  # the same predictions as mezo
            "loren": [b.copy() for b in base]}  # an old run: no predictions.npz
    _fake_runs(tmp_path, runs, no_predictions=("loren",), n=n)
    (tmp_path / "README.md").write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    code, out, text = compare(tmp_path, uri, "--methods", "mezo,curvzo,sparse-mezo,loren", "--tasks", "sst2",
                              "--seeds", "3", "--forward-budget", "8", "--num-test", str(n), "--report-only",
                              "--update-readme", str(tmp_path / "README.md"))
    assert code == 0 and out["status"] == "finished", text
    by = {a["label"]: a for a in out["aggregate"]}
    assert "paired" not in by["mezo"]  # the reference
    cz, same, old = by["curvzo"]["paired"], by["sparse-mezo"]["paired"], by["loren"]["paired"]
    assert {"delta_acc", "ci95", "p_value", "verdict", "seeds"} <= set(cz)
    true_delta = np.mean([c.mean() - b.mean() for c, b in zip(runs["curvzo"], base)])
    assert cz["delta_acc"] == pytest.approx(true_delta) and cz["seeds"] == 3
    assert cz["verdict"] == "better" and cz["ci95"][0] > 0 and cz["p_value"] < 0.05
    assert [m["c"] for m in cz["mcnemar"]] == [0, 0, 0]  # curvzo is never wrong where mezo is right
    assert same["delta_acc"] == 0 and same["ci95"] == [0, 0] and same["verdict"] == "no difference"
    assert old["delta_acc"] is None and old["verdict"] is None and old["seeds"] == 0
    assert "without predictions.npz" in old["note"]
    # dev-loss columns come from the curves, so old runs have them too: loren's curve is 0.3 above mezo's
    assert old["delta_final_dev_loss"]["delta"] == pytest.approx(0.3)
    assert old["delta_dev_loss_auc"]["delta"] == pytest.approx(0.3) and old["delta_dev_loss_auc"]["verdict"] == "worse"

    root = tmp_path / "cmp"
    md = (root / "results.md").read_text()
    table = md[md.index("| method | task | seeds | Δ test acc"):]
    rows = {ln.split(" | ")[0].strip("| "): ln.split(" | ") for ln in table.splitlines()[2:] if ln.startswith("|")}
    assert rows["curvzo"][5] == "better" and rows["sparse-mezo"][5] == "no difference"
    assert rows["loren"][2:8] == ["–"] * 6  # seeds, Δ, p, verdict, resolves, seed share
    assert "- loren on sst2: seeds 0, 1, 2 without predictions.npz (older runs)" in md
    assert "| curvzo | sst2 | 3 |" in (tmp_path / "README.md").read_text()  # the README block has the table
    csv_rows = {r["label"]: r for r in csv.DictReader(open(root / "results.csv"))}
    assert csv_rows["curvzo"]["paired.verdict"] == "better"
    assert float(csv_rows["curvzo"]["paired.ci95_lo"]) == pytest.approx(cz["ci95"][0])
    assert csv_rows["mezo"]["paired.verdict"] == ""
    saved = json.loads((root / "results.json").read_text())
    assert {a["label"]: a.get("paired") for a in saved["aggregate"]}["curvzo"] == cz
    parent = MlflowClient(tracking_uri=uri).get_run(out["parent_run_id"])
    assert parent.data.metrics["paired.curvzo.sst2.delta_acc"] == pytest.approx(cz["delta_acc"])
    assert parent.data.metrics["paired.curvzo.sst2.p_value"] == pytest.approx(cz["p_value"])
    assert parent.data.tags["paired.curvzo.sst2.verdict"] == "better"
    assert "paired.loren.sst2.delta_acc" not in parent.data.metrics


def test_runs_tested_on_other_examples_are_not_paired(tmp_path):
    import numpy as np

    from pipelines.compare import collect, plan

    rng = np.random.default_rng(1)
    runs = {"mezo": [rng.random(40) < 0.6 for _ in range(2)], "curvzo": [rng.random(40) < 0.6 for _ in range(2)]}
    cfg = _fake_runs(tmp_path, runs, n=40)
    specs = plan(cfg, tmp_path / "cmp")
    d = next(s.out_dir for s in specs if s.label == "curvzo" and s.seed == 1)
    z = dict(np.load(d / "predictions.npz"))
    np.savez(d / "predictions.npz", **(z | {"uid": np.array([f"other-{i}" for i in range(40)])}))
    _, agg = collect(cfg, specs)
    p = next(a for a in agg if a["label"] == "curvzo")["paired"]
    assert p["seeds"] == 1 and p["note"] == "seed 1: tested on other examples than the reference"
    # the same examples in another order are paired, example by example
    z0 = dict(np.load(d.parent / "seed0" / "predictions.npz"))
    perm = rng.permutation(40)
    np.savez(d.parent / "seed0" / "predictions.npz", **{k: v[perm] for k, v in z0.items()})
    _, again = collect(cfg, specs)
    q = next(a for a in again if a["label"] == "curvzo")["paired"]
    assert q["delta_acc"] == pytest.approx(p["delta_acc"]) and q["mcnemar"] == p["mcnemar"]


def test_report_header_states_the_direction_law_and_precision_of_the_rows(tmp_path):
    from pipelines.compare import plan
    from pipelines.compare.report import settings_line

    cfg = load_compare_config(dict(methods="mezo,fzoo,zero-shot", tasks="sst2", seeds=1, forward_budget=18,
                                   model="tiny:llama", out=str(tmp_path), precision="bf16-mixed"),
                              None)
    cfg = cfg.model_copy(update={"configs": {"mezo": {"method": "mezo", "direction": "rademacher"}}})
    specs = plan(cfg, tmp_path)
    assert {s.config.precision for s in specs} == {"bf16-mixed"}
    from pipelines.compare.report import collect

    runs, _ = collect(cfg, specs)
    assert settings_line(runs, cfg.methods) == ("Every row: rademacher directions (where a method draws them), "
                                                "precision bf16-mixed.")
    # a label with its own precision: the line goes per label
    cfg2 = cfg.model_copy(update={"configs": {"mezo": {"method": "mezo", "precision": "fp32"}}})
    runs2, _ = collect(cfg2, plan(cfg2, tmp_path / "b"))
    line = settings_line(runs2, cfg2.methods)
    assert line.startswith("Direction law / precision per row:")
    assert "mezo gaussian/fp32" in line and "fzoo rademacher/bf16-mixed" in line and "zero-shot -/bf16-mixed" in line
