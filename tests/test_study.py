"""`zo study`: the study file's one-line errors, a tiny study run -> report -> rerun (finished runs reused), the
report from the run dirs == the report from the compact archive, and the committed evidence archive reproducing
the committed numbers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main as cli
from tests.conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "protocol": {"model": "tiny:llama", "forward_budget": 8, "eval_points": 2, "batch_size": 4, "num_train": 16,
                 "num_dev": 8, "num_test": 8},
    "tasks": ["sst2"],
    "seeds": 2,
    "reference": "mezo",
    "arms": {"mezo": {"lr": 1.0e-3, "eps": 1.0e-2},
             "cz-port": {"method": "curvzo", "lr": 1.0e-3, "method_options": {"profile": "port"}}},
    "tracking": {"experiment": "zo-study-test"},
    "reports": [{"name": "main", "update": "notes.md", "block": "tiny"}],
}


def zo(*args):
    res = CliRunner().invoke(cli, ["study", *args])
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.startswith("{")]
    return res.exit_code, (json.loads(lines[-1]) if lines else None), res.stderr


def write_study(path: Path, **changes) -> Path:
    data = {**TINY, **changes}
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False))
    return path


@pytest.mark.parametrize("changes, args, msg", [
    ({"colour": "red"}, (), "unknown option 'colour'"),
    ({"name": "Has Space"}, (), "name"),
    ({"reference": "fzoo"}, (), "reference 'fzoo' is not an arm (mezo, cz-port)"),
    ({"arms": {"mezo": {"lr": 1e-3, "steps": 5}}}, (), "'steps' is not an arm option"),
    ({"arms": {"mezo": {}, "zf": {"method": "zo-finetuner", "policy": "/abs/policy"}}}, (),
     "policy '/abs/policy' must be a path relative to the repository root"),
    ({"runs": "../elsewhere"}, (), "runs '../elsewhere' must be a path relative"),
    ({"arms": {"mezo": {}, "m2": {"seeds": [7]}}}, (), "arm m2: seeds 7 is not among the study's seeds (0, 1)"),
    ({"arms": {"mezo": {"tasks": ["sst2"]}}}, (), "the reference arm mezo runs on every task and seed"),
    ({"reports": [{"name": "x", "arms": ["fo"]}]}, (), "report x: arm 'fo' is not among arms"),
    ({"seeds": 0}, (), "seeds 0: give a count >= 1 or a list"),
    ({"arms": {"a/b": {}}, "reference": "a/b"}, (), "not a single safe path component"),
    (None, ("--seeds", "0,5"), "--seeds 5 is not among the study's seeds (0, 1)"),
    (None, ("--seeds", "one"), "--seeds 'one': give comma-separated seed numbers"),
    (None, ("--arms", "fo"), "--arms 'fo' is not among the study's arms (mezo, cz-port)"),
])
def test_a_bad_study_or_filter_is_one_line_and_exit_2_before_any_run(changes, args, msg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "s.yaml", **(changes or {}))
    code, _, err = zo("run", "s.yaml", *args)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert msg in lines[0], err
    assert not (tmp_path / "studies").exists()


def test_a_missing_study_file_or_block_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = zo("report", "nope.yaml")
    assert code == 2 and err.strip() == "error: study file nope.yaml does not exist", err
    write_study(tmp_path / "s.yaml")
    (tmp_path / "notes.md").write_text("# no generated block\n")
    code, _, err = zo("report", "s.yaml")
    assert code == 2 and "has no <!-- tiny:start --> ... <!-- tiny:end --> block" in err.strip(), err


def _outputs(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "studies/results/tiny/main").iterdir())}


@needs_data
def test_tiny_study_run_report_rerun_and_archive_round_trip(tmp_path, monkeypatch, uri):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "s.yaml", tracking={"experiment": "zo-study-test", "uri": uri})
    (tmp_path / "notes.md").write_text("intro\n<!-- tiny:start -->\nold\n<!-- tiny:end -->\nend\n")
    code, out, err = zo("run", "s.yaml", "--json")
    assert code == 0 and out["status"] == "finished" and out["runs"] == 4 and out["failed"] == 0, err
    runs = tmp_path / "studies/runs/tiny/runs/sst2"
    for label in ("mezo", "cz-port"):
        for seed in (0, 1):
            s = json.loads((runs / label / f"seed{seed}" / "summary.json").read_text())
            assert s["forward_passes"] == 8 and s["seed"] == seed and s["status"] == "finished"
    first = _outputs(tmp_path)
    assert set(first) == {"results.md", "results.csv", "results.json", "dev_curves_sst2.png"}  # one figure a task
    md = first["results.md"].decode()
    mezo = [json.loads((runs / "mezo" / f"seed{k}" / "summary.json").read_text())["test_accuracy"] for k in (0, 1)]
    agg = {a["label"]: a for a in json.loads(first["results.json"])["aggregate"]}
    assert agg["mezo"]["test_accuracy_mean"] == pytest.approx(sum(mezo) / 2) and agg["cz-port"]["paired"]["seeds"] == 2
    assert "| mezo | sst2 | 4 |" in md and "| cz-port | sst2 | 2 |" in md  # the paired row, 2 seeds
    notes = (tmp_path / "notes.md").read_text()
    assert notes.startswith("intro\n<!-- tiny:start -->\n<!-- generated by: zo study report s.yaml -->")
    assert md in notes and notes.endswith("<!-- tiny:end -->\nend\n")
    # MLflow: the runs are children of the study's comparison in its experiment
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("zo-study-test")
    kids = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{out['parent_run_ids'][0]}'")
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)

    # the same command again reuses every finished run
    code, again, err = zo("run", "s.yaml", "--json")
    assert code == 0 and "4 runs, 4 already done, 0 to run" in err, err
    assert again["parent_run_ids"] == out["parent_run_ids"] and _outputs(tmp_path) == first
    assert len(c.search_runs([exp.experiment_id], "")) == 5  # the parent and its 4 children, no new runs

    # archive, then report without the run dirs: byte for byte the same report
    code, packed, err = zo("archive", "s.yaml", "--json")
    assert code == 0 and packed["runs"] == 4 and packed["with_predictions"] == 4, err
    shutil.move(tmp_path / "studies/runs", tmp_path / "moved-away")
    for f in (tmp_path / "studies/results/tiny/main").iterdir():
        f.unlink()
    code, rep, err = zo("report", "s.yaml", "--json")
    assert code == 0 and rep["sources"] == {"run_dirs": 0, "archive": 4, "absent": 0}, err
    assert _outputs(tmp_path) == first
    # archiving again with no run dirs keeps the archive as it was
    before = (tmp_path / "studies/results/tiny/runs.jsonl").read_bytes()
    code, packed, err = zo("archive", "s.yaml", "--json")
    assert code == 0 and packed["from_run_dirs"] == 0 and packed["runs"] == 4, err
    assert (tmp_path / "studies/results/tiny/runs.jsonl").read_bytes() == before


def test_the_committed_evidence_archive_reproduces_the_committed_numbers(tmp_path, monkeypatch):
    """A fresh clone's `zo study report studies/evidence.yaml`: no run dirs, the archive only."""
    study = yaml.safe_load((ROOT / "studies/evidence.yaml").read_text())
    study["reports"] = [{"name": "check", "arms": ["mezo", "fzoo-lr3e-3", "zero-shot"]}]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")  # the policies the arms name
    shutil.copytree(ROOT / "studies/results/evidence-bf16", tmp_path / "studies/results/evidence-bf16",
                    ignore=shutil.ignore_patterns("matrix", "ablation-vs-random"))
    (tmp_path / "evidence.yaml").write_text(yaml.safe_dump(study))
    code, rep, err = zo("report", "evidence.yaml", "--json")
    assert code == 0 and rep["sources"] == {"run_dirs": 0, "archive": 168, "absent": 0}, err
    md = (tmp_path / "studies/results/evidence-bf16/check/results.md").read_text()
    assert "| mezo | 65.3 ± 3.4 | 68.2 ± 0.6 | 79.5 ± 0.7 |" in md
    assert "| zero-shot | 51.6 ± 0.0 | 53.2 ± 0.0 | 66.2 ± 0.0 |" in md
    assert "| fzoo-lr3e-3 | sst2 | 5 | +2.9 [+1.1, +4.9] | 0.002 | better |" in md
    committed = (ROOT / "studies/results/evidence-bf16/matrix/results.md").read_text()
    for line in md.splitlines():  # every row of this report is the committed matrix report's row
        if line.startswith(("| mezo | sst2", "| fzoo-lr3e-3 | ", "| zero-shot | cr")):
            assert line in committed, line
