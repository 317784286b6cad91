"""zoplatform.integrations.hf.ZOTrainer: a ZO method through transformers.Trainer.

A tiny random Llama learns a cyclic byte sequence (``abcdabcd...`` at a random
phase: the loss can fall from ln|V| ≈ 5.6 towards 0), so "the loss decreases"
is a real test; the trajectory the Trainer checkpoints must replay to its
final weights bit-exactly, a resumed run must end where an uninterrupted one
does, and the Trainer's logs/scheduler/callbacks must see exactly one ZO step
per optimisation step.
"""
from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

import zoplatform
from zoplatform.errors import ConfigError
from zoplatform.integrations.hf import TRAJECTORY_NAME, ZOTrainer
from zoplatform.models import load_model
from zoplatform.params import model_blocks
from zoplatform.trajectory import Trajectory, layout_digest


class CyclicLM(torch.utils.data.Dataset):
    """Causal-LM examples: ``length`` tokens of the cycle a→b→c→d at a random phase."""

    def __init__(self, tok, n: int, length: int = 16, seed: int = 0):
        alphabet = tok("abcd", add_special_tokens=False)["input_ids"]
        assert len(alphabet) == 4
        g = torch.Generator().manual_seed(seed)
        phases = torch.randint(0, 4, (n,), generator=g).tolist()
        self.items = []
        for ph in phases:
            ids = torch.tensor([alphabet[(ph + j) % 4] for j in range(length)])
            self.items.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _args(out, **kw) -> TrainingArguments:
    base = {"output_dir": str(out), "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
            "learning_rate": 1e-3, "lr_scheduler_type": "constant", "logging_steps": 10, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "use_cpu": True, "seed": 0, "dataloader_num_workers": 0}
    base.update(kw)
    return TrainingArguments(**base)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _replay_onto(model, traj: Trajectory):
    """Replay a trajectory on ``model`` (the initial weights), in place."""
    blocks = model_blocks(model)
    assert layout_digest(blocks) == traj.layout
    zoplatform.replay(zoplatform.make(traj.method, **traj.config), blocks, traj.records)


class StepCounter(TrainerCallback):
    def __init__(self):
        self.optimizer_steps = 0
        self.logs: list[dict] = []

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_steps += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


# ---------------------------------------------------------------- train, log, checkpoint, replay
def test_trainer_learns_logs_each_step_and_its_trajectory_replays(tmp_path):
    model, tok = load_model("tiny:llama", seed=0)
    initial = _state(model)
    steps = 120
    counter = StepCounter()
    trainer = ZOTrainer(
        model=model, args=_args(tmp_path, max_steps=steps, lr_scheduler_type="linear", warmup_steps=10,
                                learning_rate=2e-3, save_strategy="steps", save_steps=steps),
        train_dataset=CyclicLM(tok, 64), eval_dataset=CyclicLM(tok, 16, seed=1), callbacks=[counter],
        zo_method="mezo", zo_config={"eps": 1e-3}, zo_seed=7)
    eval_before = trainer.evaluate()["eval_loss"]
    assert math.isclose(eval_before, math.log(len(tok)), rel_tol=0.1)  # random init: ≈ uniform over the vocab
    _assert_same_weights(_state(model), initial)  # evaluation is forward-only
    trainer.train()

    # it learned: Trainer.evaluate (model.eval loss) and the logged training losses fall
    eval_after = trainer.evaluate()["eval_loss"]
    assert eval_after < eval_before - 1.0, (eval_before, eval_after)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logs]
    assert len(losses) == steps // 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses

    # exactly one ZO step (two forward passes) per optimisation step
    traj = trainer.zo_trajectory
    assert len(traj.records) == steps == trainer.state.global_step == counter.optimizer_steps
    assert all(len(r.losses) == 2 for r in traj.records)
    assert logs[-1]["zo_forward_passes"] == 2 * steps
    assert "grad_norm" not in logs[-1]
    assert [r.seed for r in traj.records] == [zoplatform.step_seed(7, t) for t in range(steps)]
    # the logged loss is the mean over its window of each step's first loss; the logged lr is the one the step used
    for h in logs:
        window = traj.records[h["step"] - 10:h["step"]]
        assert math.isclose(h["loss"], sum(r.losses[0] for r in window) / 10, rel_tol=1e-5)
        assert h["learning_rate"] == traj.records[h["step"] - 1].lr
    # the Trainer's scheduler drives the ZO lr: linear warmup then linear decay
    lrs = [r.lr for r in traj.records]
    assert lrs[0] == 0.0 and math.isclose(max(lrs), 2e-3) and lrs.index(max(lrs)) == 10
    assert all(a < b for a, b in pairwise(lrs[:11])) and all(a > b for a, b in pairwise(lrs[10:]))
    assert counter.logs and any("loss" in m for m in counter.logs)

    # the checkpoint holds the trajectory and the weights
    ckpt = tmp_path / f"checkpoint-{steps}"
    saved = Trajectory.load(ckpt / TRAJECTORY_NAME)
    assert saved.records == traj.records and saved.method == "mezo" and saved.run_seed == 7
    final = _state(model)
    weights = load_file(ckpt / "model.safetensors")
    assert all(torch.equal(weights[k], final[k]) for k in weights)
    assert any(not torch.equal(final[k], initial[k]) for k in final)

    # replaying the trajectory on a fresh copy of the initial weights gives the Trainer's weights bit-exactly
    fresh, _ = load_model("tiny:llama", seed=0)
    _assert_same_weights(_state(fresh), initial)
    _replay_onto(fresh, saved)
    _assert_same_weights(_state(fresh), final)

    # save_model writes the trajectory next to the weights
    trainer.save_model(str(tmp_path / "final"))
    assert Trajectory.load(tmp_path / "final" / TRAJECTORY_NAME).records == traj.records


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("method,config,lr", [("mezo", {"eps": 1e-3}, 1e-3), ("loren", {"eps": 1e-3}, 1e-4)])
def test_resume_from_checkpoint_equals_uninterrupted(tmp_path, method, config, lr):
    # 40 examples / batch 8 = 5 steps per epoch: the checkpoint at step 6 is inside epoch 2, so the
    # resumed run must also skip the right batches; the linear schedule makes the lr step-dependent
    steps = 12

    def trainer(out, model, tok, **kw):
        return ZOTrainer(model=model, args=_args(out, max_steps=steps, learning_rate=lr, lr_scheduler_type="linear",
                                                  save_strategy="steps", save_steps=6, logging_steps=3),
                         train_dataset=CyclicLM(tok, 40), zo_method=method, zo_config=kw.get("config", config))

    model_a, tok = load_model("tiny:llama", seed=0)
    run_a = trainer(tmp_path / "a", model_a, tok)
    run_a.train()
    final_a = _state(model_a)

    model_b, _ = load_model("tiny:llama", seed=0)
    run_b = trainer(tmp_path / "b", model_b, tok)
    run_b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))
    assert run_b.state.global_step == steps
    _assert_same_weights(_state(model_b), final_a)
    assert run_b.zo_trajectory.records == run_a.zo_trajectory.records
    # the resumed run's last checkpoint holds the whole trajectory: it replays from the initial weights
    whole = Trajectory.load(tmp_path / "b" / f"checkpoint-{steps}" / TRAJECTORY_NAME)
    assert len(whole.records) == steps
    fresh, _ = load_model("tiny:llama", seed=0)
    _replay_onto(fresh, whole)
    _assert_same_weights(_state(fresh), final_a)

    if method == "mezo":  # resuming with other ZO settings is refused, in one line
        model_c, _ = load_model("tiny:llama", seed=0)
        run_c = trainer(tmp_path / "c", model_c, tok, config={"eps": 1e-2})
        with pytest.raises(ConfigError) as e:
            run_c.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))
        msg = str(e.value)
        assert "\n" not in msg and "zo_config" in msg and "checkpoint-6" in msg


# ---------------------------------------------------------------- peft LoRA
def test_lora_trains_only_the_adapters_and_resumes(tmp_path):
    model, tok = load_model("tiny:llama", lora={"r": 4}, seed=0)
    initial = _state(model)
    trainer = ZOTrainer(model=model, args=_args(tmp_path / "a", max_steps=10, learning_rate=1e-2,
                                                save_strategy="steps", save_steps=5),
                        train_dataset=CyclicLM(tok, 40), zo_method="mezo", zo_config={"eps": 1e-3})
    trainer.train()
    final = _state(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    blocks = [b.name for b in trainer.zo_optimizer.blocks]
    assert set(blocks) == trainable
    changed = {k for k in final if not torch.equal(final[k], initial[k])}
    assert changed and all("lora_" in k for k in changed)  # base weights untouched
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapter really moved

    ckpt = tmp_path / "a" / "checkpoint-10"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    fresh, _ = load_model("tiny:llama", lora={"r": 4}, seed=0)
    _replay_onto(fresh, Trajectory.load(ckpt / TRAJECTORY_NAME))
    _assert_same_weights(_state(fresh), final)

    # resuming a peft run (the Trainer reloads the adapter) ends at the same weights
    model_b, _ = load_model("tiny:llama", lora={"r": 4}, seed=0)
    run_b = ZOTrainer(model=model_b, args=_args(tmp_path / "b", max_steps=10, learning_rate=1e-2,
                                                save_strategy="steps", save_steps=5),
                      train_dataset=CyclicLM(tok, 40), zo_method="mezo", zo_config={"eps": 1e-3})
    run_b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-5"))
    _assert_same_weights(_state(model_b), final)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("trainer_kw,args_kw,needles", [
    ({"zo_method": "nope"}, {}, ["'nope'", "mezo", "loren"]),
    ({"zo_method": 3}, {}, ["zo_method", "mezo"]),
    ({"zo_config": {"epsilon": 1e-3}}, {}, ["'epsilon'", "allowed", "eps"]),
    ({"zo_config": {"eps": -1.0}}, {}, ["zo_config for 'mezo'", "eps=-1.0"]),
    ({"zo_config": "eps=1e-3"}, {}, ["zo_config must be a mapping"]),
    ({"zo_config": {"lr": 1e-2}}, {}, ["lr=0.01", "learning_rate=0.001"]),
    ({"zo_seed": "1"}, {}, ["zo_seed"]),
    ({}, {"gradient_accumulation_steps": 2}, ["gradient_accumulation_steps=2", "per_device_train_batch_size"]),
    ({}, {"fp16": True}, ["fp16=True", "bf16"]),
])
def test_bad_settings_raise_one_line_config_error(tmp_path, tiny, trainer_kw, args_kw, needles):
    model, tok = tiny("tiny:llama")
    kw = {"zo_method": "mezo", **trainer_kw}
    with pytest.raises(ConfigError) as e:
        ZOTrainer(model=model, args=_args(tmp_path, max_steps=1, **args_kw), train_dataset=CyclicLM(tok, 8), **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_a_user_optimizer_is_refused(tmp_path, tiny):
    model, tok = tiny("tiny:llama")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="optimizers="):
        ZOTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=CyclicLM(tok, 8),
                  optimizers=(sgd, None))


# ---------------------------------------------------------------- MLflow callback
def test_mlflow_callback_logs_the_zo_loss(tmp_path, uri, monkeypatch):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "zo-hf-trainer")
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # the env var decides, whatever ran before
    model, tok = load_model("tiny:llama", seed=0)
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=20, logging_steps=5, report_to=["mlflow"],
                                                run_name="zo-trainer-test"),
                        train_dataset=CyclicLM(tok, 40), zo_method="mezo", zo_config={"eps": 1e-3})
    trainer.train()
    mlflow.flush_async_logging()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("zo-hf-trainer")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "zo-trainer-test"
    run = runs[0].info.run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(run, "loss"))
    logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert [s for s, _ in history] == [5, 10, 15, 20] == [s for s, _ in logged]
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(history, logged))
    forwards = sorted((m.step, m.value) for m in client.get_metric_history(run, "zo_forward_passes"))
    assert forwards == [(5, 10.0), (10, 20.0), (15, 30.0), (20, 40.0)]
    assert float(runs[0].data.params["learning_rate"]) == 1e-3
