"""issue 40: replaying a trajectory never silently rewrites the wrong weights.

A trajectory is refused (one line, both layout digests) on parameters it was not written for — by
``zoplatform.replay`` given the Trajectory, by ``zo eval --trajectory`` — and a peft LoRA trajectory
records what rebuilds its initial adapter (config, seed, a digest of the initial values), so the
documented replay is exact for peft models too.  Seeded model initialisation is thread-safe (Optuna
runs sweep trials in threads).  Also: ZOTrainer logs its ZO method/config and trajectory to MLflow,
``ZOOptimizer.state_dict()`` has torch's ``param_groups``, a binary ``--trajectory`` is one line.
"""
from __future__ import annotations

import json
import threading

import pytest
import torch
from click.testing import CliRunner

import zoplatform
from pipelines.cli import main as cli
from tests.test_finetune import TINY, needs_data
from tests.test_hf_trainer import CyclicLM, _args, _assert_same_weights, _state
from zoplatform.errors import ConfigError, DataError
from zoplatform.integrations.hf import TRAJECTORY_NAME, ZOTrainer
from zoplatform.models import load_model
from zoplatform.params import model_blocks
from zoplatform.trajectory import Trajectory, layout_digest

LORA_CHECKPOINT_STEPS = 4


def _train_lora(out, seed: int = 0, save_steps: int = LORA_CHECKPOINT_STEPS, resume=None):
    model, tok = load_model("tiny:llama", lora={"r": 4}, seed=seed)
    initial = _state(model)
    trainer = ZOTrainer(model=model, args=_args(out, max_steps=LORA_CHECKPOINT_STEPS, learning_rate=1e-2,
                                                save_strategy="steps", save_steps=save_steps),
                        train_dataset=CyclicLM(tok, 16), zo_method="mezo", zo_config={"eps": 1e-3})
    trainer.train(resume_from_checkpoint=resume)
    traj = Trajectory.load(out / f"checkpoint-{LORA_CHECKPOINT_STEPS}" / TRAJECTORY_NAME)
    return model, initial, traj, trainer


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    model, initial, traj, _ = _train_lora(out)
    return _state(model), initial, traj


# ---------------------------------------------------------------- 1. a layout mismatch is refused
def test_replay_of_a_lora_trajectory_onto_the_base_is_refused_and_changes_nothing(lora_run):
    _, _, traj = lora_run
    base, _ = load_model("tiny:llama", seed=0)
    before = _state(base)
    blocks = model_blocks(base)
    method = zoplatform.make(traj.method, **traj.config)
    with pytest.raises(ConfigError) as e:  # the docs' snippet (docs/hf-trainer.md): the Trajectory itself is passed
        zoplatform.replay(method, blocks, traj)
    msg = str(e.value)
    assert "\n" not in msg
    assert traj.layout in msg and layout_digest(blocks) in msg and "LoRA r=4" in msg, msg
    with pytest.raises(ConfigError, match=traj.layout):  # raw records: expect_layout= checks them
        zoplatform.replay(method, blocks, traj.records, expect_layout=traj.layout)
    _assert_same_weights(_state(base), before)


# ---------------------------------------------------------------- 2. a peft adapter's init is recorded
def test_a_peft_trajectory_records_its_adapter_and_replays_exactly(lora_run, tmp_path):
    from zoplatform.models import apply_lora

    final, initial, traj = lora_run
    assert traj.info["lora"] == {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                                 "task_type": "CAUSAL_LM", "seed": 0}
    # the documented peft form: the base, wrapped with the recorded adapter, then the trajectory
    base, _ = load_model("tiny:llama")
    base = apply_lora(base, traj.info["lora"])
    _assert_same_weights(_state(base), initial)  # lora_A's random init too, not only lora_B's zeros
    zoplatform.replay(zoplatform.make(traj.method, **traj.config), model_blocks(base), traj)
    _assert_same_weights(_state(base), final)

    # an adapter with the same layout but another init is refused, and not touched
    other, _ = load_model("tiny:llama", lora={"r": 4}, seed=1)
    before = _state(other)
    with pytest.raises(ConfigError) as e:
        zoplatform.replay(zoplatform.make(traj.method, **traj.config), model_blocks(other), traj)
    msg = str(e.value)
    assert "\n" not in msg and "initial values" in msg and traj.info["init_sha256"] in msg, msg
    _assert_same_weights(_state(other), before)

    # resume onto the wrong init is refused the same way
    opt = zoplatform.optimizer(traj.method, other.named_parameters(), **traj.config)
    with pytest.raises(ConfigError, match="initial values"):
        opt.resume(traj)
    assert opt.steps == 0


def test_a_resumed_lora_run_still_replays_from_the_initial_adapter(lora_run, tmp_path):
    from zoplatform.models import apply_lora

    final, _, whole = lora_run
    _train_lora(tmp_path / "a", save_steps=2)
    model, _, traj, _ = _train_lora(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert traj.records == whole.records and traj.info["init_sha256"] == whole.info["init_sha256"]
    assert traj.info["lora"] == whole.info["lora"]
    base = apply_lora(load_model("tiny:llama")[0], traj.info["lora"])
    opt = zoplatform.optimizer(traj.method, base.named_parameters(), **traj.config)
    opt.resume(traj)  # a Trajectory is checked, then replayed: the run's final weights
    assert opt.steps == LORA_CHECKPOINT_STEPS
    _assert_same_weights(_state(base), final)


# ---------------------------------------------------------------- zo eval --trajectory
@needs_data
def test_zo_eval_refuses_another_models_trajectory_naming_both_layouts(tmp_path):
    from pipelines.finetune import load_config, run

    run(load_config(None, TINY | dict(model="tiny:gpt2", steps=2, tracking=False, out_dir=str(tmp_path / "r"))))
    path = tmp_path / "r" / "trajectory.jsonl"
    traj = Trajectory.load(path)
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", "--num-train", "48",
                                   "--num-dev", "16", "--num-test", "24", "--trajectory", str(path)])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in res.output
    assert traj.layout in err and "tiny:gpt2" in err, err
    llama = layout_digest(model_blocks(load_model("tiny:llama")[0]))
    assert llama in err, err


@needs_data
def test_zo_eval_rebuilds_a_lora_runs_adapter(tmp_path):
    """A LoRA run at seed 1 (tiny weights and lora_A are seeded) evaluates to its own test result."""
    from pipelines.finetune import load_config, run

    s = run(load_config(None, TINY | dict(steps=4, select="last", tracking=False, out_dir=str(tmp_path / "r"),
                                          seed=1, lora=True, lora_r=2)))
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", "--num-train", "48",
                                   "--num-dev", "16", "--num-test", "24", "--json", "--seed", "1",
                                   "--trajectory", str(tmp_path / "r" / "trajectory.jsonl")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["steps_applied"] == 4
    assert out["loss"] == pytest.approx(s["test_loss"], abs=1e-6) and out["accuracy"] == s["test_accuracy"]


@needs_data
def test_zo_eval_on_another_data_seed_keeps_the_runs_initial_weights(tmp_path):
    """--seed picks the data sample; the weights are still those the run (seed 1) started from."""
    from pipelines.finetune import load_config, run
    from zoplatform.data import sample_splits
    from zoplatform.loop import evaluate
    from zoplatform.objectives import make_scorer

    run(load_config(None, TINY | dict(steps=4, tracking=False, out_dir=str(tmp_path / "r"), seed=1)))
    path = tmp_path / "r" / "trajectory.jsonl"
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", "--num-train", "48",
                                   "--num-dev", "16", "--num-test", "24", "--json", "--trajectory", str(path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    model, tok = load_model("tiny:llama", seed=1)
    traj = Trajectory.load(path)
    zoplatform.replay(zoplatform.make(traj.method, **traj.config), model_blocks(model), traj)
    test = sample_splits("sst2", num_train=48, num_dev=16, num_test=24, seed=0).test
    want = evaluate(make_scorer(model, tok), test, 32)
    assert out["loss"] == pytest.approx(want.loss, abs=1e-6) and out["accuracy"] == want.accuracy


def test_zo_eval_of_a_binary_trajectory_is_one_line(tmp_path):
    path = tmp_path / "traj.bin"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(DataError, match="not a zoplatform trajectory"):
        Trajectory.load(path)
    res = CliRunner().invoke(cli, ["eval", "--model", "tiny:llama", "--task", "sst2", "--trajectory", str(path)])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and str(path) in err and "UTF-8" in err, err


# ---------------------------------------------------------------- H3. seeded init is thread-safe
def _build(spec: str, seed: int, lora: dict | None):
    return _state(load_model(spec, seed=seed, lora=lora)[0])


@pytest.mark.parametrize("spec,lora", [("tiny:llama", None), ("tiny:gpt2", {"r": 2})])
def test_models_built_in_threads_equal_models_built_alone(spec, lora):
    seeds = list(range(6))
    alone = {s: _build(spec, s, lora) for s in seeds}
    for _ in range(3):
        got: dict[int, dict] = {}
        barrier = threading.Barrier(len(seeds))

        def work(s):
            barrier.wait()
            got[s] = _build(spec, s, lora)

        threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in seeds:
            _assert_same_weights(got[s], alone[s])


# ---------------------------------------------------------------- low: MLflow, state_dict
def test_mlflow_run_of_a_zo_trainer_has_the_zo_method_config_and_trajectory(tmp_path, uri, monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "zo-hf-params")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    model, tok = load_model("tiny:llama", seed=0)
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=3, logging_steps=1, report_to=["mlflow"]),
                        train_dataset=CyclicLM(tok, 16), zo_method="mezo", zo_config={"eps": 1e-2}, zo_seed=5)
    trainer.train()
    mlflow.flush_async_logging()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("zo-hf-params").experiment_id])
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["zo_method"] == "mezo" and params["zo_seed"] == "5"
    assert float(params["zo_config.eps"]) == 1e-2 and float(params["zo_config.lr"]) == trainer.args.learning_rate
    assert params["optim"] == "zoplatform:mezo"  # not the AdamW the Trainer would have built
    run = runs[0].info.run_id
    assert TRAJECTORY_NAME in {a.path for a in client.list_artifacts(run)}
    local = client.download_artifacts(run, TRAJECTORY_NAME, str(tmp_path / "dl"))
    assert Trajectory.load(local).records == trainer.zo_trajectory.records


def test_zo_optimizer_state_dict_has_param_groups_and_round_trips():
    model = torch.nn.Linear(4, 2)
    opt = zoplatform.optimizer("mezo", model.named_parameters(), lr=1e-2, eps=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    for _ in range(3):
        opt.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        sched.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1]]
    assert sd["param_groups"][0]["lr"] == pytest.approx(1e-2 / 4) and sd["param_groups"][0]["initial_lr"] == 1e-2
    fresh = zoplatform.optimizer("mezo", torch.nn.Linear(4, 2).named_parameters(), lr=1e-2, eps=1e-3)
    fresh.load_state_dict(sd)
    assert fresh.state_dict()["param_groups"] == sd["param_groups"] and fresh.steps == 3
