"""issue 40: `zo meta-train` and `zo compare` claim nothing they did not measure and refuse
bad input in one line: a meta-train whose held-out signal is not measurable says so on its
verdict and registry card; ``--select best`` never keeps a policy scored below the initial
one; a meta-batch larger than a task's sample is refused before any model loads; the MLflow
run is named after what it meta-trains; two comparisons on one ``--out`` cannot run at once;
a method label that is not one safe path component is refused before any run."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import zoplatform
from pipelines.cli import main as cli
from tests.conftest import DATA, needs_data


TINY_META = ["meta-train", "--model", "tiny:llama", "--tasks", "copa", "--epochs", "2", "--restart", "1",
             "--steps-per-epoch", "2", "--num-train", "16", "--num-dev", "8", "--batch-size", "4",
             "--no-tracking", "--no-progress", "--json"]


def one_line_error(res, msg):
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert msg in res.stderr, res.stderr


def no_model_load(monkeypatch):
    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("model loaded before validation")

    monkeypatch.setattr("zoplatform.models.load_model", boom)


# --------------------------------------------------------------------------- item 4: measurable, selection
def test_policy_verdict_and_card_say_not_measurable_when_no_task_is():
    from meta.registry import policy_card, policy_verdict

    v = policy_verdict(0.089, 0.629, {"copa": False})
    assert "not measurable" in v and "better than uniform" not in v and "copa" in v
    v = policy_verdict(0.089, 0.629, "copa=no,trec=no")
    assert "not measurable" in v and "better than" not in v
    v = policy_verdict(0.089, 0.629, "copa=no,trec=yes")  # one measurable task: a real signal, said on which
    assert "better than uniform on held-out batches, measured on trec only" in v
    tags, text = policy_card("tiny:llama", ["copa"], {"policy_rel_change": "0.089", "meta_val_gain": "0.629",
                                                      "meta_val_measurable": "copa=no"})
    assert "not measurable" in tags["verdict"] and "better than uniform" not in text
    assert "- held-out signal measurable: copa=no" in text


@needs_data
def test_meta_train_without_a_measurable_task_says_not_measurable_on_card_and_verdict(tmp_path, monkeypatch):
    """8 COPA dev examples on tiny:llama: the held-out signal is within noise (measurable copa: false); the
    old card said "better than uniform on held-out batches" from that noise."""
    import meta.registry

    cards = []

    def fake_register(policy_dir, model_id, tasks, data_seed, tracking_uri=None, *, card=None, **kw):
        cards.append(meta.registry.policy_card(model_id, tasks, card, data_seed))
        return {"uri": "models:/x@champion", "version": "1", "version_uri": "models:/x/1"}

    monkeypatch.setattr(meta.registry, "register_policy", fake_register)
    res = CliRunner().invoke(cli, [*TINY_META, "--select", "last", "--register", "--out-dir", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    mv = out["meta_val"]
    assert all(r["measurable"] == {"copa": False} for r in mv["history"])  # the premise
    assert mv["measurable"] == {"copa": False}
    assert "not measurable" in out["verdict"] and "better than" not in out["verdict"]
    (tags, text), = cards
    assert tags["verdict"] == out["verdict"] and tags["meta_val_measurable"] == "copa=no"
    assert "not measurable" in text and "better than uniform" not in text


@needs_data
def test_select_best_keeps_the_initial_policy_when_no_epoch_beats_it(tmp_path, monkeypatch):
    """Every epoch's meta-val gain below the initial policy's (0): the old code kept the best of the
    (worse) epochs; now the initial policy is kept (σ ≡ 1, epoch 0) and the summary and verdict say so."""
    from meta import descent
    from zoplatform.policy import load_policy

    evaluate = descent.MetaValidation.evaluate
    gains = iter([0.0, -0.066, -0.2])

    def scripted(self, sigma):
        return {**evaluate(self, sigma), "gain_over_uniform": next(gains)}

    monkeypatch.setattr(descent.MetaValidation, "evaluate", scripted)
    res = CliRunner().invoke(cli, [*TINY_META, "--out-dir", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    mv = out["meta_val"]
    assert [r["gain_over_uniform"] for r in mv["history"]] == [0.0, -0.066, -0.2]
    assert mv["epoch"] == 0 and mv["gain_over_uniform"] == 0.0
    assert mv["selection"].startswith("initial policy kept: no epoch's meta-val gain beat the initial policy's +0")
    assert "best epoch 1: -0.066" in mv["selection"]
    assert "initial policy kept" in out["verdict"]
    sigma = load_policy(tmp_path / "m" / "policy").weights["sigma"]
    assert torch.equal(sigma, torch.ones_like(sigma)) and out["policy_rel_change"] == 0.0


@needs_data
def test_select_best_keeps_an_epoch_that_beats_the_initial_policy(tmp_path, monkeypatch):
    from meta import descent

    evaluate = descent.MetaValidation.evaluate
    gains = iter([0.0, 0.05, -0.01])

    def scripted(self, sigma):
        return {**evaluate(self, sigma), "gain_over_uniform": next(gains)}

    monkeypatch.setattr(descent.MetaValidation, "evaluate", scripted)
    res = CliRunner().invoke(cli, [*TINY_META, "--out-dir", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    mv = json.loads(res.stdout.strip().splitlines()[-1])["meta_val"]
    assert mv["epoch"] == 1 and mv["gain_over_uniform"] == 0.05
    assert mv["selection"] == "epoch 1 kept: best meta-val gain +0.05, above the initial policy's +0"


# --------------------------------------------------------------------------- batch size, run name
@needs_data
@pytest.mark.parametrize("args,msg", [
    (["--batch-size", "100000"], "batch_size=100000 is invalid"),
    (["--batch-size", "20"], "batch_size=20 exceeds the 16 train examples of copa; allowed: 2..16"),
    (["--tasks", "trec,copa", "--num-train", "1000", "--batch-size", "500"],  # the smallest sample is named
     "batch_size=500 exceeds the {copa} train examples of copa; allowed: 2..{copa}"),  # 400 - 8 on the real data
])
def test_meta_train_refuses_a_batch_larger_than_the_sample_before_loading(monkeypatch, tmp_path, args, msg):
    from zoplatform.data import load_split

    msg = msg.format(copa=len(load_split("copa", "train", DATA)) - 8)  # all of COPA's train split but --num-dev 8
    no_model_load(monkeypatch)
    base = [a for a in TINY_META if a != "--json"]
    i = base.index("--batch-size")
    base = base[:i] + base[i + 2:]
    if "--tasks" in args:
        j = base.index("--tasks")
        base = base[:j] + base[j + 2:]
        j = base.index("--num-train")
        base = base[:j] + base[j + 2:]
    res = CliRunner().invoke(cli, [*base, "--out-dir", str(tmp_path / "m"), *args])
    one_line_error(res, msg)


@needs_data
@pytest.mark.parametrize("extra,name", [([], "meta-train descent on copa (tiny:llama)"),
                                        (["--profile", "paper"], "meta-train paper on copa (tiny:llama)"),
                                        (["--run-name", "mine"], "mine")])
def test_meta_train_mlflow_run_is_named_after_what_it_trains(monkeypatch, tmp_path, extra, name):
    import zoplatform.tracking

    seen = {}

    class Stop(Exception):
        pass

    def fake_tracker(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(zoplatform.tracking, "mlflow_tracker", fake_tracker)
    args = [a for a in TINY_META if a != "--no-tracking"]
    res = CliRunner().invoke(cli, [*args, "--out-dir", str(tmp_path / "meta1"), *extra])
    assert isinstance(res.exception, Stop), res.output
    assert seen["run_name"] == name  # not the out dir's name, "meta1"


# --------------------------------------------------------------------------- compare: the out dir, labels
CMP = ["compare", "--model", "tiny:llama", "--num-train", "16", "--num-dev", "8", "--num-test", "8",
       "--batch-size", "4", "--eval-points", "2", "--seeds", "1", "--forward-budget", "4", "--tasks", "sst2"]


@needs_data
@pytest.mark.parametrize("label", ["../evil", "a/b", "ABS", "..", "a\\b"])
def test_compare_refuses_a_label_that_is_not_one_path_component(tmp_path, label):
    """A --configs label names <out>/runs/<task>/<label>; "../evil" used to write outside --out."""
    label = str(tmp_path / "abs") if label == "ABS" else label  # an absolute path (under tmp_path, in case)
    (tmp_path / "c.yaml").write_text(json.dumps({label: {"method": "mezo"}}))
    res = CliRunner().invoke(cli, [*CMP, "--methods", f"mezo,{label}", "--configs", str(tmp_path / "c.yaml"),
                                   "--out", str(tmp_path / "cmp" / "out"),
                                   "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--json"])
    one_line_error(res, f"method label {label!r} is not a single safe path component")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "evil").exists() and not (tmp_path / "abs").exists()
    assert not (tmp_path / "m.db").exists()


@needs_data
def test_a_second_compare_on_a_locked_out_is_refused_and_the_lock_is_released_after(tmp_path, uri):
    from pipelines.locks import OutDirLock

    out = tmp_path / "cmp"
    args = [*CMP, "--methods", "mezo", "--out", str(out), "--tracking-uri", uri, "--json"]
    with OutDirLock(out):  # a live `zo compare` driving this --out
        res = CliRunner().invoke(cli, args)
        one_line_error(res, f"--out {out} is in use by another zo compare (pid ")
        assert "choose another --out" in res.stderr
        assert not (out / "compare.json").exists() and not (out / "runs").exists()  # no parent run, no runs
    res = CliRunner().invoke(cli, [*args, "--report-only"])
    assert res.exit_code == 0, res.output
    assert (out / "compare.json").is_file()
    with OutDirLock(out):  # the finished driver let go of it
        pass
