"""What a fine-tune run shows in MLflow and on disk besides its numbers: its name, params, one-line note,
summary metrics, the method's end-of-run artifacts and ``curves.png`` (split out of :mod:`pipelines.finetune`)."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import FinetuneConfig

# --------------------------------------------------------------------------- what MLflow shows
# run options that are not logged as params: operational (they do not change what the run computes), the name,
# or logged in their resolved form (lr, eps, direction, weight decay and method options: the method's config)
UNLOGGED = {"progress", "tracking", "resume", "tracking_uri", "experiment", "run_name", "parent_run_id", "dtype",
            "lr", "eps", "direction", "weight_decay", "method_options"}


def resume_command(cfg: FinetuneConfig, out_dir) -> str:
    """The command that continues an interrupted run: ``zo finetune --resume --out-dir DIR`` and the options that
    say how it ran (``--workers``: the launcher starts the worker processes before the stored config is read;
    ``--threads``; ``--no-tracking``), so that running it as printed resumes that run the way it ran."""
    import shlex

    parts = ["zo finetune --resume --out-dir", shlex.quote(str(out_dir))]
    if cfg.workers > 1:
        parts.append(f"--workers {cfg.workers}")
    if cfg.threads is not None:
        parts.append(f"--threads {cfg.threads}")
    if not cfg.tracking:
        parts.append("--no-tracking")
    return " ".join(parts)


def model_short_name(model: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M`` -> ``SmolLM2-135M``; packaged names and ``tiny:*`` unchanged."""
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def default_run_name(cfg: FinetuneConfig) -> str:
    """The MLflow run name: what tells this run apart first (``mezo sst2 s0 smollm2-135m``; the out dir keeps
    its timestamp)."""
    return " ".join([cfg.method, cfg.task, f"s{cfg.seed}", model_short_name(cfg.model)] + (["lora"] if cfg.lora else []))


def run_params(cfg: FinetuneConfig, method, num_train: int, num_dev: int, precision: str, out_dir) -> dict:
    """The params logged once per run: the method's resolved hyperparameters as top-level keys (``lr``, ``eps``,
    ``direction``, ..., with the method's defaults filled in) and the run's options, each under one name (no
    ``method_config.*`` / ``method_options.*`` copies); unset options are left out. With ``policy``, the
    requested policy is ``policy`` and the local copy the method read is ``policy_path``."""
    from zoplatform.models import default_protocol

    opts = {k: v for k, v in cfg.model_dump().items() if k not in UNLOGGED and v is not None}
    if not cfg.lora:
        opts.pop("lora_r", None), opts.pop("lora_alpha", None)
    opts.update(num_train=num_train, num_dev=num_dev, precision=precision, out_dir=str(out_dir),
                protocol=cfg.protocol or default_protocol(cfg.model))
    if method is None:  # fo: AdamW's resolved lr
        hyper = {"lr": cfg.lr or 1e-5, "weight_decay": cfg.weight_decay}
    else:
        hyper = method.config.model_dump()
        if cfg.policy is not None and "policy" in hyper:
            hyper["policy_path"] = hyper.pop("policy")
    return opts | {k: v for k, v in hyper.items() if v is not None}


def hardware(device: str) -> str:
    """What a run's wall time depends on, recorded in its summary: the GPU's name, or the CPU's model with its
    core count and whether it has AMX (Intel's matrix units: bf16 matmuls several times faster), e.g.
    ``CPU AMD EPYC (2 cores)``. Reports group runs by it: wall times compare only within one."""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    if not device.startswith("cpu"):  # another accelerator: its device name is all that is known here
        return device
    info: dict[str, str] = {}
    try:  # Linux: the first core's model name and flags
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = info.get("flags", "")
    amx = ", AMX" if "amx_bf16" in flags.split() else ""
    return f"CPU {model} ({os.cpu_count()} cores{amx})"


SUMMARY_METRICS = ("test_accuracy", "test_loss", "best_dev_accuracy", "best_step", "wall_time_s", "train_time_s",
                   "peak_memory_mb")


def summary_metrics(summary: dict) -> dict[str, float]:
    """The run's one-off results, logged once at step 0: MLflow 3.17's UI draws a metric whose latest step is 0
    as a bar with its value (a metric at a later step gets a step-axis line chart: one lone dot), and the runs
    table shows the value either way. Zero-shot and probe accuracies are logged at step 0 where measured."""
    return {k: summary[k] for k in SUMMARY_METRICS if isinstance(summary.get(k), (int, float))}


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def run_note(cfg: FinetuneConfig, summary: dict, method=None) -> str:
    """The run's one-line description: model, task, method, budget and result, e.g. ``mezo on sst2
    (smollm2-135m): 300 steps = 600 forward passes, test acc 66.6% (zero-shot 51.6%), best dev step 250``."""
    head = f"{cfg.method} on {cfg.task} ({cfg.model})"
    steps = summary.get("steps", cfg.steps)
    status = summary.get("status")
    if status is None:  # at the start: the plan
        plan = (f"{steps} forward+backward steps" if method is None else
                f"{steps} steps = {steps * method.forwards_per_step} forward passes")
        return f"{head}: {plan} planned, batch {cfg.batch_size}, seed {cfg.seed}; running"
    fwd = summary.get("forward_passes")
    budget = f"{steps} steps" + (f" = {fwd} forward passes" if fwd is not None else "")
    from .config import FO_METHODS

    if cfg.method in FO_METHODS:
        budget = f"{steps} forward+backward steps"
    zs = summary.get("zero_shot_test_accuracy")
    zs_text = f" (zero-shot {_pct(zs)})" if zs is not None else ""
    if status == "diverged":
        return (f"{head}: diverged at step {summary.get('diverged_at_step')} of {steps}; best dev step "
                f"{summary.get('best_step')} (dev acc {_pct(summary.get('best_dev_accuracy') or 0)}){zs_text}")
    chosen = (f"best dev step {summary.get('best_step')}" if cfg.select == "best"
              else f"last step {summary.get('best_step')} tested")
    return f"{head}: {budget}, test acc {_pct(summary['test_accuracy'])}{zs_text}, {chosen}"


def method_report(method, state, blocks, out_dir, cfg: FinetuneConfig) -> list:
    """The method's end-of-run artifacts (:mod:`pipelines.finetune.method_reports`), titled with what the run was
    (``curvzo on sst2 (smollm2-135m)``)."""
    from . import method_reports

    return method_reports.write(method, state, blocks, out_dir, run=f"{cfg.method} on {cfg.task} ({cfg.model})")


def plot_history(history, path: Path, title: str) -> Path:
    """``curves.png``: train and dev loss, and dev accuracy with the best dev step marked, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    if history.train:
        s, l = zip(*history.train)
        few = len(s) <= 30  # a short run: every step visible as a point
        ax[0].plot(s, l, ".-" if few else "-", lw=0.8 if few else 0.6, alpha=0.6, label="train loss (L+)")
    if history.evals:
        steps = [e["step"] for e in history.evals]
        ax[0].plot(steps, [e["dev_loss"] for e in history.evals], "o-", label="dev loss")
        ax[1].plot(steps, [e["dev_accuracy"] for e in history.evals], "o-", label="dev accuracy")
        if history.best_step in steps:
            ax[1].plot([history.best_step], [history.best_dev_accuracy], "*", ms=14, c="tab:red",
                       label=f"best: step {history.best_step} ({history.best_dev_accuracy:.3f})")
        ax[1].legend(fontsize=8, loc="best")
    ax[0].set(xlabel="step", ylabel="loss", title="loss")
    if ax[0].get_legend_handles_labels()[0]:
        ax[0].legend(fontsize=8)
    ax[1].set(xlabel="step", ylabel="accuracy", title="dev accuracy")
    for a in ax:
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PREDICTIONS_FILE = "predictions.npz"


def save_predictions(path: Path, result, examples) -> Path:
    """Per-example test predictions of the selected model (``pred``, ``label``, ``uid`` in test-set order), so
    paired statistics can be recomputed from finished runs without re-running them."""
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, pred=np.asarray(result.predictions, dtype=np.int16),
                        label=np.asarray(result.labels, dtype=np.int16),
                        uid=np.asarray([e.uid for e in examples], dtype=str))
    tmp.replace(path)
    return path


def replica_hashes(named) -> list[str]:
    """sha256 of this worker's trainable weights, gathered from every worker (rank order)."""
    import hashlib

    import torch.distributed as dist

    h = hashlib.sha256()
    for _, p in named:
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, h.hexdigest())
    return out


def fo_autocast(method, precision: str, device):
    """The first-order baseline in a mixed mode: fp32 weights and AdamW, the forward under autocast."""
    import contextlib

    from zoplatform.precision import compute_dtype, is_mixed

    if method is not None or not is_mixed(precision):
        return contextlib.nullcontext
    # cache_enabled=False: autocast caches the low-precision copy of each fp32 leaf weight until the outermost
    # autocast context exits, and the training loop runs inside one context, so with the cache every step after the
    # first would run its forward and backward on the step-0 copies while AdamW moves the fp32 weights (the bug
    # behind the round-6 `fo` runs that diverged on dev: train loss flat, dev loss 1.1 -> 15.8)
    return lambda: torch.autocast(device_type=device.type, dtype=compute_dtype(precision), cache_enabled=False)


def history_from(h: dict):
    """A :class:`~zoplatform.loop.History` from its JSON form (null best loss = none yet)."""
    from zoplatform.loop import History

    return History(train=[tuple(x) for x in h["train"]], evals=h["evals"], best_step=h["best_step"],
                   best_dev_accuracy=h["best_dev_accuracy"],
                   best_dev_loss=math.inf if h["best_dev_loss"] is None else h["best_dev_loss"],
                   forwards=h["forwards"], steps_done=h["steps_done"], wall_s=h["wall_s"])
