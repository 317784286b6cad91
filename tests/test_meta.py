"""ZO Fine-tuner meta-training (meta/) and the policy registry: the trainable
policy is the library's function, meta-gradients reach only the policy, the
meta-step lowers the meta-loss, and a tiny end-to-end meta-train → register →
resolve by alias → fine-tune with zo-finetuner."""
import itertools
import json

import pytest
import torch
from click.testing import CliRunner

import zoplatform
from meta.metatrain import (
    PRESETS,
    MetaStepper,
    MetaTrainConfig,
    PolicyState,
    meta_train,
)
from meta.policy import PerturbationPolicy
from meta.registry import register_policy, registered_name, resolve_policy
from zoplatform.algorithms.zo_finetuner import (
    block_stats,
    effective_counts,
    embedding_block_names,
    load_policy,
    policy_features,
    policy_sigma,
)
from zoplatform.data import resolve_data_dir, sample_splits
from zoplatform.errors import ConfigError
from zoplatform.models import load_model
from zoplatform.objectives import make_scorer
from zoplatform.params import model_blocks

try:
    DATA = resolve_data_dir(None)
except zoplatform.ZOError:  # pragma: no cover
    DATA = None
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data not found")


def tiny_setup(seed=0):
    """A fresh tiny:llama (its own weights: these tests change them), scorer, blocks, policy, counts."""
    model, tok = load_model("tiny:llama", seed=seed)
    scorer = make_scorer(model, tok)
    blocks = model_blocks(model)
    emb = embedding_block_names(model)
    layout = [(b.name, list(b.param.shape), b.name in emb) for b in blocks]
    policy = PerturbationPolicy(layout, base_model="tiny:llama", embedding_rows=32, seed=seed)
    counts = torch.tensor(effective_counts([s for _, s, _ in layout], [e for *_, e in layout], 32),
                          dtype=torch.float64)
    return model, scorer, blocks, policy, counts


def copa_batch(n=4):
    return sample_splits("copa", data_dir=DATA, num_train=n, num_dev=0, num_test=0, seed=0).train


def test_policy_module_is_the_library_function_and_round_trips(tmp_path):
    layout = [("a.weight", [6, 4], True), ("b.weight", [3], False), ("c.bias", [2], False)]
    pol = PerturbationPolicy(layout, base_model="toy", embedding_rows=2, seed=3)
    x = torch.randn(3, 5)
    with torch.no_grad():
        ref = pol(x)
    pol.save(tmp_path / "p", meta={"tasks": ["copa"]})
    lib = load_policy(tmp_path / "p")
    assert torch.equal(policy_sigma(lib.weights, x), ref)
    with torch.no_grad():
        assert torch.equal(PerturbationPolicy.load(tmp_path / "p")(x), ref)
    assert lib.schema["meta"] == {"tasks": ["copa"]} and lib.embedding_rows == 2 and lib.base_model == "toy"
    assert [b["embedding"] for b in lib.schema["blocks"]] == [True, False, False]


@needs_data
def test_meta_gradients_reach_only_the_policy():
    model, scorer, blocks, policy, counts = tiny_setup()
    before = [b.param.detach().clone() for b in blocks]
    step = MetaStepper(model, scorer, policy, blocks, counts, eps=1e-2, eta_u=1e-2, lr_mlp=0.1)
    w0 = {k: v.detach().clone() for k, v in policy.weights().items()}
    state, m = step(copa_batch(), PolicyState.fresh(len(blocks)), seed=11)
    assert all(b.param.grad is None for b in blocks)  # θ got no gradient from the meta step
    assert all(torch.equal(a, b.param) for a, b in zip(before, blocks))  # and was not changed
    for k, p in policy.weights().items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, k
        assert not torch.equal(p.detach(), w0[k]), k  # SGD moved every policy tensor
    assert m["loss_plus"] != m["loss_minus"] and m["policy_grad_norm"] > 0
    assert state.prev_losses.tolist() == [m["loss_plus"], m["loss_minus"]]
    # the features the policy saw are the library's
    x = policy_features(block_stats(blocks), torch.zeros(2, dtype=torch.float64), torch.ones(len(blocks)))
    assert x.shape == (len(blocks), 5) and torch.equal(x[:, 4], torch.ones(len(blocks)))


@needs_data
def test_meta_steps_lower_the_meta_loss_on_a_fixed_batch():
    model, scorer, blocks, policy, counts = tiny_setup(seed=1)
    step = MetaStepper(model, scorer, policy, blocks, counts, eps=1e-2, eta_u=0.05, lr_mlp=0.2)
    batch, state = copa_batch(8), PolicyState.fresh(len(blocks))
    losses = [step(batch, state, seed=5)[1]["meta_loss"] for _ in range(8)]
    assert losses[-1] < losses[0] - 1e-3, losses  # measured: 0.68688 -> 0.67858, every step lower
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 6, losses


@needs_data
def test_meta_train_restarts_the_trajectory_and_decays_the_fo_lr(monkeypatch):
    model, tok = load_model("tiny:llama")
    scorer = make_scorer(model, tok)
    base = [p.detach().clone() for p in model.parameters()]
    train = {"copa": copa_batch(8), "sst2": sample_splits("sst2", data_dir=DATA, num_train=8, num_dev=0,
                                                          num_test=0, seed=0).train}
    starts, original = [], MetaStepper.__call__

    def spy(self, *a, **k):  # θ at the start of every meta step
        starts.append([p.detach().clone() for p in model.parameters()])
        return original(self, *a, **k)

    monkeypatch.setattr(MetaStepper, "__call__", spy)
    cfg = MetaTrainConfig(tasks=["sst2", "copa"], epochs=2, restart=1, steps_per_epoch=3, batch_size=4,
                          eta_u=1e-2, lr_llm=0.05)
    res = meta_train(model, scorer, train, cfg)
    h = res.history
    assert res.steps == 6 and h["lr_llm"] == pytest.approx([0.05, 0.05 * 2 / 3, 0.05 / 3] * 2)
    assert h["task_index"] == [0, 1, 0, 1, 0, 1]  # round robin over the mixture
    same = [all(torch.equal(a, b) for a, b in zip(base, s)) for s in starts]
    assert same == [True, False, False, True, False, False]  # FO steps move θ; the restart resets it
    assert PRESETS["single"]["lr_mlp"] == 0.1 and MetaTrainConfig().tasks == ["copa"]


def test_registered_model_names_are_sanitised():
    assert registered_name("tiny:llama") == "zo-policy-tiny_llama"
    assert registered_name("HuggingFaceTB/SmolLM2-135M") == "zo-policy-HuggingFaceTB_SmolLM2-135M"
    assert registered_name("/models/my llama/") == "zo-policy-my_llama"


@needs_data
def test_meta_train_register_resolve_by_alias_and_finetune(tmp_path, uri):
    from mlflow import MlflowClient

    from pipelines.finetune import FinetuneConfig
    from pipelines.finetune import run as finetune
    from pipelines.meta_train import load_config, run

    cfg = load_config(None, {"model": "tiny:llama", "tasks": "copa", "epochs": 2, "restart": 1, "steps_per_epoch": 2,
                                 "num_train": 16, "num_dev": 4, "batch_size": 4, "eta_u": 1e-2, "register_policy": True,
                                 "tracking_uri": uri, "out_dir": str(tmp_path / "meta"), "progress": False})
    s = run(cfg)
    assert s["steps"] == 4 and s["registered"]["uri"] == "models:/zo-policy-tiny_llama@champion"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    r = client.get_run(s["mlflow_run_id"])
    assert r.info.status == "FINISHED" and r.data.params["lr_mlp"] == "0.1"
    assert len(client.get_metric_history(r.info.run_id, "meta_loss")) == 4
    assert {"loss_plus", "loss_minus", "sigma_mean", "dev_loss_copa"} <= set(r.data.metrics)
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"policy", "policy_sigma.png", "meta_curves.png", "summary.json"} <= arts
    mv = client.get_model_version_by_alias("zo-policy-tiny_llama", "champion")
    assert str(mv.version) == "1" and mv.tags["base_model"] == "tiny:llama"
    assert mv.tags["meta_tasks"] == "copa" and mv.tags["data_seed"] == "0"

    local = resolve_policy("models:/zo-policy-tiny_llama@champion", tracking_uri=uri, dst_path=tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()) == ["policy.json",
                                                                                   "policy.safetensors"]
    assert load_policy(resolve_policy("models:/zo-policy-tiny_llama/1", tracking_uri=uri)).schema == \
        load_policy(local).schema
    # fine-tune on another task with the registered policy
    ft = {"model": "tiny:llama", "task": "sst2", "method": "zo-finetuner", "method_options": {"policy": local}, "steps": 4,
              "num_train": 16, "num_dev": 4, "num_test": 8, "batch_size": 4, "eval_every": 2, "lr": 1e-4, "eps": 1e-2, "progress": False,
              "tracking_uri": uri, "experiment": "ft"}
    # ... as a user does: zo finetune --policy models:/...@champion (downloaded into the run's out dir)
    from click.testing import CliRunner

    from pipelines.cli import main as cli

    res = CliRunner().invoke(cli, ["finetune", "--model", "tiny:llama", "--task", "sst2", "--method", "zo-finetuner",
                                   "--policy", "models:/zo-policy-tiny_llama@champion", "--steps", "4",
                                   "--num-train", "16", "--num-dev", "4", "--num-test", "8", "--batch-size", "4",
                                   "--eval-every", "2", "--lr", "1e-4", "--eps", "1e-2", "--tracking-uri", uri,
                                   "--experiment", "ft", "--out-dir", str(tmp_path / "ft"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["forward_passes"] == 8 and 0.0 <= out["test_accuracy"] <= 1.0
    frun = client.get_run(out["mlflow_run_id"])
    assert frun.data.params["method"] == "zo-finetuner"
    assert frun.data.params["policy"] == "models:/zo-policy-tiny_llama@champion"
    assert frun.data.params["method_config.policy"].startswith(str((tmp_path / "ft" / "policy").resolve()))
    assert load_policy(frun.data.params["method_config.policy"]).schema == load_policy(local).schema
    assert "sigma_mean" in frun.data.metrics and "zo_finetuner_sigma.csv" in {
        a.path for a in client.list_artifacts(frun.info.run_id)}
    # the same policy on another layout (tiny:opt) is refused, before any step
    with pytest.raises(ConfigError, match="meta-trained for 'tiny:llama'.*does not match"):
        finetune(FinetuneConfig(**(ft | {"model": "tiny:opt", "tracking": False}), out_dir=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="not found in the registry"):
        resolve_policy("models:/zo-policy-tiny_llama@nosuch", tracking_uri=uri)
    with pytest.raises(ConfigError, match="neither an existing path"):
        resolve_policy(str(tmp_path / "missing"))


@pytest.mark.slow
def test_register_and_resolve_through_a_real_mlflow_server(tmp_path, mlflow_template):
    from tests.conftest import mlflow_server

    pol = PerturbationPolicy([("w", [3, 2], False), ("b", [3], False)], base_model="toy", seed=1)
    pol.save(tmp_path / "p")
    with mlflow_server(tmp_path, db_template=mlflow_template) as uri:
        reg = register_policy(tmp_path / "p", "toy", ["copa"], 0, uri)
        reg2 = register_policy(tmp_path / "p", "toy", ["sst2", "copa"], 1, uri)
        assert (reg["version"], reg2["version"]) == ("1", "2") and reg["source"].startswith("mlflow-artifacts:")
        local = resolve_policy("models:/zo-policy-toy@champion", tracking_uri=uri)
        assert load_policy(local).schema == pol.schema()
        from mlflow import MlflowClient

        mv = MlflowClient(tracking_uri=uri).get_model_version_by_alias("zo-policy-toy", "champion")
        assert str(mv.version) == "2" and mv.tags["meta_tasks"] == "sst2,copa" and mv.tags["data_seed"] == "1"


@needs_data
@pytest.mark.parametrize("args,msg", [
    (["--tasks", "nosuch"], "unknown task 'nosuch'"),
    (["--tasks", "copa", "--lr-mlp", "-1"], "lr_mlp=-1.0 is invalid"),
    (["--tasks", "copa,copa"], "tasks must be distinct"),
    (["--preset", "huge"], "unknown meta-train preset 'huge'"),
    (["--model", "tiny:nosuch"], "unknown tiny fixture"),
])
def test_meta_train_cli_rejects_bad_input_before_loading_a_model(monkeypatch, tmp_path, args, msg):
    from pipelines.cli import main as cli

    def boom(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("model loaded before validation")

    monkeypatch.setattr("zoplatform.models.load_model", boom)
    res = CliRunner().invoke(cli, ["meta-train", "--model", "tiny:llama", "--no-tracking", "--out-dir",
                                              str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert msg in res.stderr and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr


@needs_data
def test_meta_train_cli_prints_a_json_summary_last(tmp_path):
    from pipelines.cli import main as cli

    res = CliRunner().invoke(cli, ["meta-train", "--model", "tiny:llama", "--tasks", "copa", "--epochs", "1",
                                              "--steps-per-epoch", "1", "--num-train", "8", "--num-dev", "0",
                                              "--batch-size", "2", "--no-tracking", "--no-progress",
                                              "--out-dir", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["steps"] == 1 and (tmp_path / "o" / "policy" / "policy.safetensors").is_file()
    # the one-time cost: this process's peak RSS (CPU), which bounds what the summary recorded
    from zoplatform.loop import peak_memory_bytes

    assert 0 < out["peak_memory_mb"] <= peak_memory_bytes() / 2**20 + 0.1
    # how far the policy moved from its initialisation (same seed -> same ω₀), recomputed from the saved file
    trained = PerturbationPolicy.load(tmp_path / "o" / "policy").weights()
    start = PerturbationPolicy(trained_layout(trained), seed=0).weights()
    num = sum(float(((trained[k] - start[k]) ** 2).sum()) for k in start)
    den = sum(float((start[k] ** 2).sum()) for k in start)
    assert out["policy_rel_change"] == pytest.approx((num / den) ** 0.5, rel=1e-6) and out["policy_rel_change"] > 0


def trained_layout(w):
    """A layout with as many blocks as ``w`` has (initial weights depend only on the count and the seed)."""
    return [(f"b{i}", [1], False) for i in range(w["b2"].shape[0])]
