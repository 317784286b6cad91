"""Browsing a sweep and a registered policy in MLflow (issue 19), asserted through the MLflow client: a sweep's run
names, its parent's note, metric names, the objective on every trial, results.csv and best_config.yaml, the printed
UI links; the policy card's plain-words verdict. (The Ray backend's names: tests/test_sweep.py; the same store seen
through ``mlflow ui`` and Chromium: tests/test_ui.py.)"""
import json
import urllib.parse
from pathlib import Path

import pytest

from pipelines import raytools
from tests.conftest import needs_data
from tests.test_sweep import no_ray_here, runs_of, sweep


@needs_data
def test_sweep_runs_explain_themselves_in_mlflow(tmp_path, uri, monkeypatch):
    """Issue 19 through the MLflow client: trial names lead with t<N> and the searched values, the parent is named
    by what it sweeps and carries the results table as its note, one name per quantity (best_dev_accuracy), the
    objective on every trial at every evaluation, results.csv objective-first, a best_config.yaml that files a
    plain fine-tune, and the UI links printed and in the summary."""
    import csv

    import yaml

    monkeypatch.setattr(raytools, "connect", no_ray_here)
    code, s, out = sweep(tmp_path, "--backend", "optuna", "--trials", "3", "--max-concurrent", "1",
                         "--scheduler", "none")
    assert code == 0 and s["status"] == "finished", out
    c, parent, children = runs_of(uri, s["parent_run_id"])
    assert parent.info.run_name == "sweep mezo on sst2 (tiny:llama)"
    assert parent.data.tags["zo.sweep"] == s["sweep"] == "mezo-sst2-tiny_llama"
    # the parent's note is the results table, best first, trials by the names of their runs
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("| rank | best_dev_accuracy | trial | lr | eps | status |")  # the table first
    best = s["best"]
    best_t = f"t{int(best['trial'])}"
    assert f"| 1 | {best['best_dev_accuracy']:.4g} | {best_t} |" in note and f"Best: **{best_t}**" in note
    md = (Path(s["storage"]) / "results" / "results.md").read_text()
    assert md == "## sweep mezo on sst2 (tiny:llama)\n\n" + note
    assert "results.md" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    # one name per quantity on the parent
    assert parent.data.metrics["best_dev_accuracy"] == pytest.approx(best["best_dev_accuracy"])
    assert not [k for k in parent.data.metrics if k.startswith("best_best")]
    # trials: t<N>, then the searched values (as the runs table shows them), then method and task
    assert len(children) == 3
    by_trial = {r.data.tags["zo.trial"]: r for r in children}
    rows = {r["trial"]: r for r in json.loads((Path(s["storage"]) / "results" / "results.json").read_text())}
    for key, run in by_trial.items():
        p = rows[key]["params"]
        assert run.info.run_name == f"t{int(key)} lr={p['lr']:.4g} eps={p['eps']:.4g} mezo sst2", run.info.run_name
        # the objective at every evaluation (steps 0, 2, 4), its latest value what the sweep ranked by
        hist = c.get_metric_history(run.info.run_id, "objective.best_dev_accuracy")
        assert [m.step for m in hist] == [0, 2, 4]
        assert hist[-1].value == pytest.approx(rows[key]["best_dev_accuracy"])
        assert [m.value for m in hist] == sorted(m.value for m in hist)  # a best-so-far never drops
    ranked_runs = sorted(children, key=lambda r: -r.data.metrics["objective.best_dev_accuracy"])
    assert ranked_runs[0].data.metrics["objective.best_dev_accuracy"] == pytest.approx(best["best_dev_accuracy"])
    # results.csv: the objective first, then the trial id, then the hyperparameters
    with open(Path(s["storage"]) / "results" / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["best_dev_accuracy", "trial", "lr", "eps", "status"]
    # best_config.yaml files a plain fine-tune: nothing of the sweep's tracking
    best_cfg = yaml.safe_load((Path(s["storage"]) / "results" / "best_config.yaml").read_text())
    assert not {"experiment", "tracking", "tracking_uri", "parent_run_id", "run_name", "out_dir"} & set(best_cfg)
    assert best_cfg["lr"] == best["params"]["lr"] and best_cfg["method"] == "mezo"
    # the UI links: printed and in the summary
    links = s["mlflow_ui"]
    assert links["run"].endswith(f"/runs/{parent.info.run_id}?workflowType=machine_learning")
    assert f"#/experiments/{parent.info.experiment_id}/runs?" in links["runs"]
    assert f"MLflow sweep: {links['run']}" in out and f"MLflow runs: {links['runs']}" in out
    # ... and the trials alone, best first (the runs view reads its filter and sort from the URL)
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(links["trials"].split("#", 1)[1]).query)
    assert q["orderByKey"] == ["metrics.`objective.best_dev_accuracy`"] and q["orderByAsc"] == ["false"]
    found = c.search_runs([parent.info.experiment_id], filter_string=q["searchFilter"][0])
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in children)
    assert f"MLflow trials, best first: {links['trials']}" in out


def test_policy_verdict_says_in_plain_words_whether_meta_training_moved_the_policy():
    from meta.registry import policy_card, policy_verdict

    v = policy_verdict(4.5e-7, 0.0)
    assert v.startswith("untrained: ω moved 4.5e-07 relative") and "no better than uniform" in v
    v = policy_verdict("0.3125", "0.02")
    assert v.startswith("trained: ω moved 0.31 relative") and "gain +0.02 over σ = 1 (better than" in v
    assert policy_verdict(2e-3, "none").endswith("no meta-validation") and "untrained" not in policy_verdict(2e-3)
    tags, text = policy_card("tiny:llama", ["copa"], {"policy_rel_change": "4.5e-07", "meta_val_gain": "0",
                                                      "profile": "paper", "meta_steps": 8}, data_seed=1)
    assert tags["verdict"].startswith("untrained") and "- **quality**: untrained: ω moved 4.5e-07" in text
    assert "meta-trained on copa (data seed 1)" in text and "profile: paper; meta steps: 8" in text
    assert text.splitlines()[-1] == "    " + tags["usage"]
