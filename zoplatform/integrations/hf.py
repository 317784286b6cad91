"""``ZOTrainer``: any registered ZO method inside the Hugging Face ``Trainer``.

Use (``tests/test_hf_trainer.py`` runs it on a tiny model)::

    from zoplatform.integrations.hf import ZOTrainer
    trainer = ZOTrainer(model=model, args=TrainingArguments(output_dir="out", learning_rate=1e-6),
                        train_dataset=train, zo_method="mezo", zo_config={"eps": 1e-3})
    trainer.train()

How one optimisation step of the Trainer maps onto a ZO step
------------------------------------------------------------
* ``create_optimizer`` builds a :class:`~zoplatform.optim.ZOOptimizer` over the
  model's trainable ``named_parameters()`` (names key the random streams, so a
  peft model perturbs only its adapters; the no-decay set is
  :func:`~zoplatform.params.no_decay_names`).  It is a torch optimizer with one
  param group, so the Trainer's LR scheduler drives it unchanged.
* ``training_step`` runs the method's ``step`` on the Trainer's batch with a
  forward-only closure: ``model.eval()`` (no dropout: the losses of one step
  must differ only by the perturbation), ``torch.inference_mode()``, the loss of
  :meth:`Trainer.compute_loss` (so a custom ``compute_loss`` or
  ``compute_loss_func`` is the ZO objective) as fp32.  Nothing calls
  ``backward``.  It returns the step's first loss, detached, on the Trainer's
  device (the number ``zo finetune`` logs as ``train_loss``: MeZO's
  L(θ + εz), FZOO's unperturbed L(θ)), so the Trainer's logging averages it.
* The Trainer then calls ``optimizer.step()``: that call only acknowledges the
  ZO step already taken (a second ZO step never happens; ``step()`` without a
  preceding ``training_step`` raises).  The learning rate of step t is the
  scheduler's value at t, recorded in the trajectory.
* Gradient clipping and the gradient norm are skipped (no gradients exist:
  ``max_grad_norm`` is ignored and ``grad_norm`` is not logged); the training
  logs gain ``zo_forward_passes`` (cumulative).  ``floating_point_ops`` counts
  forward passes only.

Hyperparameters: ``zo_method`` is a registry name, ``zo_config`` the method's
options (validated by its config, one-line :class:`ConfigError`).  The
learning rate and weight decay are the Trainer's (``TrainingArguments.
learning_rate`` / ``weight_decay``); a different ``lr``/``weight_decay`` in
``zo_config`` is refused.  ``zo_seed`` (default ``TrainingArguments.seed``) is
the run seed: step t uses ``rng.step_seed(zo_seed, t)``.

Checkpoints: every checkpoint folder (and ``save_model``'s output) holds
``zo_trajectory.jsonl`` (``zoplatform.Trajectory``: one (seed, losses, lr)
line per step), which replays on the initial weights to the saved ones
bit-exactly; ``optimizer.pt`` holds the ZO optimizer's state (step count,
method state).  ``train(resume_from_checkpoint=...)`` continues exactly — the
same step seeds, batches and learning rates as an uninterrupted run — and the
trajectory continues from the checkpoint's.
The trajectory's header holds a digest of the initial trainable values and, for a
peft model, the adapter (``info["lora"]``, see :func:`zoplatform.models.lora_spec`;
``zoplatform.models.apply_lora(base, traj.info["lora"])`` rebuilds the initial
adapter): ``zoplatform.replay(method, blocks, traj)`` refuses other parameters.

MLflow (``report_to=["mlflow"]``): the Trainer's MLflow run also gets the params
``zo_method``, ``zo_seed``, ``zo_config.<option>`` (``optim`` is logged as
``zoplatform:<method>``) and the trajectory as the artifact ``zo_trajectory.jsonl``.

Not supported (refused with a one-line ``ConfigError``): gradient
accumulation (a ZO step scores one whole batch: raise the batch size
instead), fp16 AMP (its gradient scaler needs gradients; bf16 autocast works),
more than one process or device (data-parallel ZO is ``zo finetune
--workers``), DeepSpeed and FSDP, and a user-supplied optimizer.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME

from ..config import validate
from ..errors import ConfigError, DataError
from ..optim import ZOOptimizer
from ..params import no_decay_names
from ..registry import get_method, method_names
from ..trajectory import Trajectory

__all__ = ["TRAJECTORY_NAME", "ZOTrainer"]

TRAJECTORY_NAME = "zo_trajectory.jsonl"


class _TrainerZOOptimizer(ZOOptimizer):
    """A ZOOptimizer whose step is taken in ``ZOTrainer.training_step``
    (which has the batch); the Trainer's ``optimizer.step()`` that follows only
    acknowledges it, so exactly one ZO step happens per optimisation step."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pending = False

    def zo_step(self, closure) -> torch.Tensor:
        if self._pending:
            raise RuntimeError("ZOTrainer: a second ZO step before the Trainer's optimizer.step() "
                               "(gradient accumulation is not supported)")
        loss = super().step(closure)
        self._pending = True
        return loss

    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:  # plain ZOOptimizer use
            return super().step(closure)
        if not self._pending:
            raise RuntimeError("ZOTrainer's optimizer steps inside training_step; optimizer.step() was called "
                               "without a preceding training_step")
        self._pending = False
        return None


class _ZOMLflowCallback(TrainerCallback):
    """Runs just before the Trainer's ``MLflowCallback``: sets its run up with ``optim`` logged as
    ``zoplatform:<method>`` (not the AdamW ``TrainingArguments.optim`` names, which never runs), logs
    ``zo_method``, ``zo_seed`` and ``zo_config.<option>`` as params, and the trajectory as the
    artifact ``zo_trajectory.jsonl`` at each save and at the end of training."""

    def __init__(self, mlflow_cb, trainer: ZOTrainer):
        self.cb, self.trainer, self._logged = mlflow_cb, trainer, False

    def _setup(self, args, state, model) -> None:
        if not self.cb._initialized:
            view = copy.copy(args)
            view.optim = f"zoplatform:{self.trainer.zo_method}"
            self.cb.setup(view, state, model)
        mlflow = self.cb._ml_flow
        if not self._logged and state.is_world_process_zero and mlflow.active_run() is not None:
            t = self.trainer
            mlflow.log_params({"zo_method": t.zo_method, "zo_seed": t.zo_seed,
                               **{f"zo_config.{k}": v for k, v in t.zo_config.items()}})
            self._logged = True

    def _log_trajectory(self, state) -> None:
        import tempfile

        traj = self.trainer.zo_trajectory
        mlflow = self.cb._ml_flow
        if traj is None or not self.cb._initialized or not state.is_world_process_zero or mlflow.active_run() is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(traj.save(Path(tmp) / TRAJECTORY_NAME)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._setup(args, state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        self._setup(args, state, model)

    def on_save(self, args, state, control, **kwargs):
        self._log_trajectory(state)

    def on_train_end(self, args, state, control, **kwargs):  # before MLflowCallback ends the run
        self._log_trajectory(state)


def _normalise(obj: Any) -> Any:
    """JSON round trip (tuples -> lists), to compare configs read from files."""
    return json.loads(json.dumps(obj))


class ZOTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is a registered ZO method.

    Args:
        *args, **kwargs: ``transformers.Trainer``'s (model, args, datasets,
            collator, callbacks, ...); ``optimizers`` must stay ``(None, None)``.
        zo_method: registry name (``zoplatform.method_names()``).
        zo_config: the method's options except ``lr``/``weight_decay``, which
            come from ``TrainingArguments``.
        zo_seed: run seed of the ZO directions (default: ``args.seed``).
    """

    def __init__(self, *args: Any, zo_method: str = "mezo", zo_config: Mapping[str, Any] | None = None,
                 zo_seed: int | None = None, **kwargs: Any):
        # Validate the ZO options before the Trainer sets anything up.
        if not isinstance(zo_method, str):
            raise ConfigError(f"zo_method must be a method name, got {zo_method!r}; "
                              f"choose one of: {', '.join(method_names())}")
        cls = get_method(zo_method)
        if zo_config is None:
            zo_config = {}
        if not isinstance(zo_config, Mapping):
            raise ConfigError(f"zo_config must be a mapping of {zo_method} options, got {type(zo_config).__name__}")
        fields = list(cls.Config.model_fields)
        unknown = sorted(set(zo_config) - set(fields))
        if unknown:
            raise ConfigError(f"zo_config: unknown option(s) {', '.join(map(repr, unknown))} for {zo_method!r}; "
                              f"allowed: {', '.join(fields)}")
        where = f"zo_config for {zo_method!r}"
        validate(cls.Config, dict(zo_config), where)
        if zo_seed is not None and (isinstance(zo_seed, bool) or not isinstance(zo_seed, int)):
            raise ConfigError(f"zo_seed must be an integer, got {zo_seed!r}")

        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None:  # refuse before the Trainer sets up devices and mixed precision
            _check_args(training_args)
        super().__init__(*args, **kwargs)
        _check_args(self.args)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ConfigError("ZOTrainer does not support DeepSpeed or FSDP (a ZO step perturbs whole tensors in "
                              "place); unset deepspeed=/fsdp=")
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            raise ConfigError("ZOTrainer builds its own ZO optimizer from zo_method/zo_config; "
                              "do not pass optimizers= or optimizer_cls_and_kwargs=")
        hyper = dict(zo_config)
        for key, arg, value in (("lr", "learning_rate", self.args.learning_rate),
                                ("weight_decay", "weight_decay", self.args.weight_decay)):
            if key in hyper and float(hyper[key]) != float(value):
                raise ConfigError(f"zo_config {key}={hyper[key]!r} differs from TrainingArguments.{arg}={value!r}: "
                                  f"the Trainer's {arg} is the ZO {key} (its scheduler drives it); set it there")
            if key == "weight_decay" and key not in fields:
                if float(value) != 0.0:
                    raise ConfigError(f"TrainingArguments.weight_decay={value!r}: {zo_method} has no weight decay; "
                                      "use weight_decay=0.0")
                continue
            hyper[key] = float(value)
        self.zo_method = zo_method
        self.zo_config = validate(cls.Config, hyper, where).model_dump()
        self.zo_seed = int(self.args.seed if zo_seed is None else zo_seed)
        self._zo_opt: _TrainerZOOptimizer | None = None
        self._zo_forwards = 0
        self._zo_last_calls = 0
        from transformers.integrations import MLflowCallback

        callbacks = self.callback_handler.callbacks
        for i, cb in reversed(list(enumerate(callbacks))):
            if isinstance(cb, MLflowCallback):  # report_to=["mlflow"]: the run gets the ZO method and trajectory
                callbacks.insert(i, _ZOMLflowCallback(cb, self))

    # ------------------------------------------------------------ accessors
    @property
    def zo_optimizer(self) -> ZOOptimizer | None:
        """The ZO optimizer (built when training starts)."""
        return self._zo_opt

    @property
    def zo_trajectory(self) -> Trajectory | None:
        """The run's trajectory so far (``None`` before training starts)."""
        return None if self._zo_opt is None else self._zo_opt.trajectory

    # ------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            self._zo_opt = _TrainerZOOptimizer(
                opt_model.named_parameters(), self.zo_method, seed=self.zo_seed,
                no_decay=no_decay_names(opt_model), **self.zo_config)
            if not self._zo_opt.blocks:
                raise ConfigError("ZOTrainer: the model has no trainable parameters (requires_grad=True)")
            import transformers

            from ..models import lora_spec

            self._zo_opt.trajectory.info.update({
                "integration": "zoplatform.integrations.hf.ZOTrainer",
                "transformers": transformers.__version__,
                "model": str(getattr(getattr(opt_model, "config", None), "name_or_path", "") or ""),
                # a peft model: what rebuilds its initial adapter (zoplatform.models.apply_lora)
                "lora": lora_spec(opt_model),
            })
            self.optimizer = self._zo_opt
        return self.optimizer

    # ------------------------------------------------------------ the step
    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        opt = self._zo_opt
        if opt is None:
            raise RuntimeError("ZOTrainer.training_step before create_optimizer")
        model.eval()  # deterministic forwards: the losses of one step differ only by the perturbation
        inputs = self._prepare_inputs(inputs)
        calls = 0

        def closure() -> torch.Tensor:
            nonlocal calls
            calls += 1
            # compute_loss may pop keys (labels with a label smoother): give it a fresh shallow copy
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, copy.copy(inputs), num_items_in_batch=num_items_in_batch)
            return loss.float().mean()

        with torch.inference_mode():
            opt.zo_step(closure)
        self._zo_last_calls = calls
        self._zo_forwards += calls
        loss = opt.last_record.losses[0]
        return torch.tensor(loss, dtype=torch.float32, device=self.args.device)

    def _clip_grad_norm(self, model):  # no gradients to clip: max_grad_norm is ignored
        return None

    def _get_grad_norm(self, model, grad_norm=None):  # no gradients: grad_norm is not logged
        return None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        # The base estimate is 6·N·tokens: forward + backward (≈ 3 forwards); a ZO step is `calls` forwards.
        return int(super().floating_point_ops(inputs) * self._zo_last_calls / 3)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._zo_opt is not None:
            logs["zo_forward_passes"] = self._zo_forwards
        super().log(logs, start_time)

    # ------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        traj = self.zo_trajectory
        if traj is not None and self.args.should_save:
            traj.save(Path(output_dir if output_dir is not None else self.args.output_dir) / TRAJECTORY_NAME)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self._zo_opt is not None:
            self._zo_resume(Path(checkpoint))

    def _zo_resume(self, ckpt: Path) -> None:
        """Check the restored optimizer state against the checkpoint's
        trajectory and continue that trajectory."""
        if not (ckpt / OPTIMIZER_NAME).is_file():
            raise DataError(f"checkpoint {ckpt} has no {OPTIMIZER_NAME} (saved with save_only_model=True?): a ZO run "
                            "resumes from its optimizer state (step count, method state); use a full checkpoint")
        if not (ckpt / TRAJECTORY_NAME).is_file():
            raise DataError(f"checkpoint {ckpt} has no {TRAJECTORY_NAME}: not a ZOTrainer checkpoint")
        saved = Trajectory.load(ckpt / TRAJECTORY_NAME)
        opt = self._zo_opt
        mine = opt.trajectory
        for what, theirs, ours in (("zo_method", saved.method, mine.method),
                                   ("zo_config", _normalise(saved.config), _normalise(mine.config)),
                                   ("zo_seed", saved.run_seed, mine.run_seed),
                                   ("trainable layout", saved.layout, mine.layout)):
            if theirs != ours:
                raise ConfigError(f"checkpoint {ckpt} was trained with {what} {theirs!r}, "
                                  f"this ZOTrainer has {ours!r}; resume with the same settings")
        if not (len(saved.records) == opt.steps == self.state.global_step):
            raise DataError(f"checkpoint {ckpt} is inconsistent: {len(saved.records)} trajectory steps, "
                            f"optimizer step {opt.steps}, trainer step {self.state.global_step}")
        mine.records = list(saved.records)
        # the weights now are the checkpoint's, not the initial ones: the trajectory keeps the run's start
        for key in ("init_sha256", "lora"):
            if key in saved.info:
                mine.info[key] = saved.info[key]
            else:
                mine.info.pop(key, None)
        # every registered method records one loss per forward pass
        self._zo_forwards = sum(len(r.losses) for r in saved.records)


def _check_args(args) -> None:
    """Refuse the TrainingArguments a ZO step cannot honour (one line each)."""
    if args.gradient_accumulation_steps != 1:
        raise ConfigError(f"gradient_accumulation_steps={args.gradient_accumulation_steps} is not supported by "
                          "ZOTrainer: a ZO step scores one whole batch; use 1 and a larger "
                          "per_device_train_batch_size")
    if args.fp16:
        raise ConfigError("fp16=True is not supported by ZOTrainer: fp16 AMP steps through a gradient scaler and a "
                          "ZO step has no gradients; use bf16=True, or a float16 model with fp16=False")
    if args.world_size > 1 or args.n_gpu > 1:
        raise ConfigError(f"ZOTrainer runs in one process on one device (world_size={args.world_size}, "
                          f"n_gpu={args.n_gpu}); set CUDA_VISIBLE_DEVICES to one GPU, or run data-parallel ZO "
                          "with `zo finetune --workers N`")
    if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
        raise ConfigError("ZOTrainer does not support DeepSpeed or FSDP (a ZO step perturbs whole tensors in "
                          "place); unset deepspeed=/fsdp=")
