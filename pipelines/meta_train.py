"""Recipe: meta-train a ZO Fine-tuner policy for one base model, tracked in MLflow.

Zhang et al., *ZO Fine-tuner*, ICML 2026, arXiv:2510.00419 (docs/algorithms.md §5.2).
Reads top to bottom: validate the config and sample every task's data (before
anything heavy), open the MLflow run, load the model in fp32, meta-train
(:func:`meta.metatrain.meta_train`), save the policy (safetensors + JSON) to
``<out>/policy``, log artifacts, optionally register it as a new version of
``zo-policy-<model>`` with alias ``champion``, print the summary.

Profiles (``--profile``): ``descent`` (default; a per-block scale fitted to the
closed-form expected ZO descent, ``meta/descent.py``) or ``paper`` (the paper's
meta-step, which does not move the policy: docs/algorithms.md §5.4).  The
summary's ``policy_rel_change`` is ‖ω−ω₀‖/‖ω₀‖ and ``meta_val`` the kept
epoch's ``gain_over_uniform`` on held-out batches of the meta-training tasks
with its ``metric``, ``measurable`` (per task: was its held-out signal above
noise? where none was, the verdict says "not measurable") and ``selection``
(``--select best`` keeps the initial policy when no epoch beats it); the
registered version carries these as its card.

Use the policy with ``zo finetune --method zo-finetuner --option policy=<dir>``
(or a ``models:/zo-policy-<model>@champion`` URI resolved with
:func:`meta.registry.resolve_policy`).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from meta.metatrain import PRESETS, MetaTrainConfig
from zoplatform.config import read_mapping, validate
from zoplatform.errors import ConfigError


class MetaTrainRunConfig(MetaTrainConfig):
    """The algorithm's knobs (:class:`MetaTrainConfig`) plus the run's."""

    model: str = Field("smollm2-135m", min_length=1, description="base model (as for zo finetune); the policy is "
                                                                 "specific to it")
    data_dir: str | None = Field(None, description="data directory (default: $ZO_DATA_DIR or ../shared/data)")
    max_length: int = Field(2048, ge=8, description="longest tokenised input (tokens)")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    out_dir: str | None = Field(None, description="run directory (policy, curves, summary)")
    register_policy: bool = Field(False, description="register in MLflow as zo-policy-<model>@champion")
    tracking: bool = Field(True, description="log the run to MLflow (--no-tracking: do not)")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
    experiment: str = Field("zo-policy-meta", description="MLflow experiment")
    run_name: str | None = Field(None, description="MLflow run name (default: what it meta-trains)")
    progress: bool = Field(True, description="show a progress bar")


def load_config(path: str | None, overrides: dict[str, Any], preset: str | None = None) -> MetaTrainRunConfig:
    """Preset < config file (YAML/JSON) < explicit values; validated (one-line ConfigError)."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown meta-train preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        data.update(PRESETS[preset])
    if path:
        data.update(read_mapping(path))
    data.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(data.get("tasks"), str):
        data["tasks"] = [t.strip() for t in data["tasks"].split(",") if t.strip()]
    return validate(MetaTrainRunConfig, data, "meta-train config")


def check_inputs(cfg: MetaTrainRunConfig):
    """Resolve tasks, model spec, data dir and splits; fail before any model loads."""
    from pipelines.finetune import split_sizes
    from zoplatform.data import get_task, resolve_data_dir, sample_splits
    from zoplatform.models import check_spec

    if cfg.embedding_pattern is not None:
        import re

        try:
            re.compile(cfg.embedding_pattern)
        except re.error as e:
            raise ConfigError(f"meta-train config: embedding_pattern={cfg.embedding_pattern!r} is not a regex: "
                              f"{e}") from None
    tasks = [get_task(t) for t in cfg.tasks]
    check_spec(cfg.model, "float32", cfg.device)
    data_dir = resolve_data_dir(cfg.data_dir)
    splits = {}
    for t in tasks:
        num_train, num_dev = split_sizes(t.name, data_dir, cfg.num_train, cfg.num_dev or 1)
        s = sample_splits(t.name, data_dir=data_dir, num_train=num_train, num_dev=num_dev if cfg.num_dev else 0,
                          num_test=0, seed=cfg.seed)
        if len(s.train) < 1:
            raise ConfigError(f"meta-train: task {t.name} has no training examples left")
        splits[t.name] = s
    smallest = min(splits, key=lambda t: len(splits[t].train))
    n = len(splits[smallest].train)
    if cfg.batch_size > n:  # a batch of repeated examples, then an out-of-memory kill: refuse it here
        raise ConfigError(f"meta-train: batch_size={cfg.batch_size} exceeds the {n} train examples of "
                          f"{smallest}; allowed: {2 if cfg.profile == 'descent' else 1}..{n}")
    return splits


def default_run_name(cfg: MetaTrainRunConfig) -> str:
    """The MLflow run's name unless ``--run-name`` is given: what it meta-trains, as ``zo sweep`` and
    ``zo compare`` name theirs (``meta-train descent on sst2,copa (smollm2-135m)``), not the out dir's name."""
    return f"meta-train {cfg.profile} on {','.join(cfg.tasks)} ({cfg.model})"


def _default_out_dir(cfg: MetaTrainRunConfig) -> Path:
    model = cfg.model.replace("/", "_").replace(":", "_")
    return Path("runs") / (cfg.run_name or f"meta-{model}-{'+'.join(cfg.tasks)}-s{cfg.seed}-{int(time.time())}")


def plot_meta_curves(history: dict, path: Path, title: str, meta_val: list | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    x = range(1, len(history.get("meta_loss", [])) + 1)
    for key in ("meta_loss", "loss_plus", "fo_loss"):
        if key in history:
            ax[0].plot(x, history[key], lw=0.7, label=key)
    ax[0].set(xlabel="meta-step", title="losses (meta_loss: descent profile = -J)")
    ax[0].legend()
    if "sigma_mean" in history:
        ax[1].plot(x, history["sigma_mean"], label="mean σ")
        ax[1].plot(x, history["sigma_max"], lw=0.7, label="max σ")
        ax[1].plot(x, history["sigma_min"], lw=0.7, label="min σ")
        ax[1].plot(x, history["trace_c"], label="c")
        ax[1].set_yscale("log")
        ax[1].legend()
    ax[1].set(xlabel="meta-step", title="policy")
    if meta_val:
        ep = [r["epoch"] for r in meta_val]
        ax[2].plot(ep, [r["gain_over_uniform"] for r in meta_val], "o-", label="gain over σ=1 (mean)")
        for t in meta_val[0]["per_task"]:
            ax[2].plot(ep, [r["per_task"][t] for r in meta_val], ".--", lw=0.7, label=t)
        ax[2].axhline(0.0, color="grey", lw=0.6)
        ax3 = ax[2].twinx()
        ax3.plot(ep, [r["policy_rel_change"] for r in meta_val], "k:", label="‖ω−ω₀‖/‖ω₀‖")
        ax3.set_ylabel("policy movement ‖ω−ω₀‖/‖ω₀‖")
        ax3.legend(loc="lower right", fontsize=8)
        ax[2].legend(loc="upper left", fontsize=8)
    ax[2].set(xlabel="epoch (0 = initial policy)", ylabel="meta-val gain", title="meta-validation (held-out batches)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(cfg: MetaTrainRunConfig, tracker=None) -> dict[str, Any]:
    """Execute the recipe; returns the JSON summary."""
    from meta.metatrain import meta_train
    from meta.registry import policy_verdict
    from meta.registry import register_policy as register_in_mlflow
    from zoplatform.loop import peak_memory_mb, reset_peak_memory
    from zoplatform.models import load_model
    from zoplatform.objectives import make_scorer
    from zoplatform.tracking import NullTracker, ending, mlflow_tracker, set_note

    t_start = time.perf_counter()
    # 1. validate everything cheap first ------------------------------------
    splits = check_inputs(cfg)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else _default_out_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 2. tracking ------------------------------------------------------------
    if tracker is None:
        tracker = NullTracker() if not cfg.tracking else mlflow_tracker(
            tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, run_name=cfg.run_name or default_run_name(cfg))
    params = cfg.model_dump(exclude={"progress", "tracking"})
    params["num_train_per_task"] = {t: len(s.train) for t, s in splits.items()}
    tracker.start(params, tags={"model": cfg.model, "tasks": ",".join(cfg.tasks), "zo.kind": "meta-train",
                                "method": "zo-finetuner", "host": platform.node()})
    with ending(tracker, "interrupted (SIGINT/SIGTERM)"):
        # 3. model (fp32: §5.2) and objective --------------------------------
        model, tok = load_model(cfg.model, dtype="float32", device=cfg.device, protocol="prompt", seed=cfg.seed)
        scorer = make_scorer(model, tok, protocol="prompt", max_length=cfg.max_length)
        device = next(model.parameters()).device
        reset_peak_memory(device)

        # 4. meta-train ---------------------------------------------------------
        algo = MetaTrainConfig(**cfg.model_dump(include=set(MetaTrainConfig.model_fields)))
        res = meta_train(model, scorer, {t: s.train for t, s in splits.items()}, algo,
                         dev_sets={t: s.dev for t, s in splits.items()}, tracker=tracker, base_model=cfg.model,
                         out_dir=out_dir, progress=cfg.progress)

        # 5. policy files --------------------------------------------------------
        policy_dir = res.policy.save(out_dir / "policy", meta=_policy_meta(cfg, algo, res, tracker.run_id))
        h = res.history
        meta_val = _meta_val_summary(res)
        summary = _summary(cfg, res, policy_dir, out_dir, meta_val, peak_memory_mb(device), tracker.run_id)
        tracker.log_metrics({"peak_memory_mb": summary["peak_memory_mb"],
                             "meta_train_time_s": summary["meta_train_time_s"],
                             "final_policy_rel_change": res.policy_change,
                             **({"final_meta_val_gain": meta_val["gain_over_uniform"]}
                                if meta_val["kept"] else {})},
                            step=res.steps)

        # 6. artifacts, registry ---------------------------------------------------
        plot_meta_curves(h, out_dir / "meta_curves.png",
                         f"meta-training ({cfg.profile}) on {'+'.join(cfg.tasks)} ({cfg.model})", res.meta_val)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        for f in [out_dir / "meta_curves.png", out_dir / "summary.json", *res.artifacts]:
            if f.is_file():
                tracker.log_artifact(f)
        if cfg.register_policy:
            reg = register_in_mlflow(policy_dir, cfg.model, cfg.tasks, cfg.seed, cfg.tracking_uri,
                                     run_id=tracker.run_id, experiment=cfg.experiment,
                                     card=_policy_card(cfg, res, meta_val))
            summary["registered"] = reg
            tracker.set_tags({"zo.policy_uri": reg["uri"], "zo.policy_version": reg["version"],
                              "zo.policy_version_uri": reg["version_uri"]})
        else:
            for f in sorted(policy_dir.iterdir()):
                tracker.log_artifact(f, "policy")
        summary["verdict"] = policy_verdict(res.policy_change, meta_val["gain_over_uniform"],
                                            meta_val["measurable"], meta_val["selection"])
        set_note(tracker, f"ZO Fine-tuner policy for {cfg.model}, meta-trained ({cfg.profile}, {res.steps} meta-steps) "
                          f"on {','.join(cfg.tasks)}: {summary['verdict']}"
                          + (f". Registered as `{summary['registered']['version_uri']}` (`{reg['uri']}`)."
                             if cfg.register_policy else "."))
        summary["wall_time_s"] = round(time.perf_counter() - t_start, 2)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary


def _policy_meta(cfg: MetaTrainRunConfig, algo: MetaTrainConfig, res, run_id) -> dict[str, Any]:
    """What the policy file records about its meta-training (tasks, steps, the kept epoch, the config)."""
    return {"tasks": list(cfg.tasks), "data_seed": cfg.seed, "steps": res.steps, "profile": cfg.profile,
            "policy_rel_change": res.policy_change, "meta_val_epoch": res.best_epoch,
            "meta_val_gain": next((r["gain_over_uniform"] for r in res.meta_val if r["epoch"] == res.best_epoch),
                                  None),
            "meta_val_measurable": res.meta_val[0].get("measurable") if res.meta_val else None,
            "meta_val_selection": res.selection or None,
            "config": algo.model_dump(), "mlflow_run_id": run_id}


def _meta_val_summary(res) -> dict[str, Any]:
    """The kept epoch's meta-validation for the summary (``kept``: that epoch's row, None without held-out data)."""
    kept = next((r for r in res.meta_val if r["epoch"] == res.best_epoch), None)
    return {"gain_over_uniform": kept["gain_over_uniform"] if kept else None,
            "metric": res.meta_val_metric if kept else "none (num_dev = 0: no held-out batches)",
            "per_task": kept["per_task"] if kept else {}, "epoch": res.best_epoch,
            # per task: was its held-out signal measurable? (none: the gain is noise, not evidence)
            "measurable": kept.get("measurable") if kept else None,
            "selection": res.selection or None,
            "initial_gain_over_uniform": res.meta_val[0]["gain_over_uniform"] if res.meta_val else None,
            "history": res.meta_val, "kept": kept}


def _summary(cfg: MetaTrainRunConfig, res, policy_dir: Path, out_dir: Path, meta_val: dict, peak_mb,
             run_id) -> dict[str, Any]:
    h = res.history
    return {
        "model": cfg.model, "tasks": list(cfg.tasks), "seed": cfg.seed, "profile": cfg.profile,
        "policy_kind": res.policy.kind, "steps": res.steps,
        "n_blocks": len(res.policy.layout), "policy_dir": str(policy_dir.resolve()), "out_dir": str(out_dir),
        "first_meta_loss": h["meta_loss"][0], "last_meta_loss": h["meta_loss"][-1],
        "first_fo_loss": h["fo_loss"][0], "last_fo_loss": h["fo_loss"][-1],
        "final_sigma_mean": h["sigma_mean"][-1], "policy_rel_change": res.policy_change,
        "meta_val": {k: v for k, v in meta_val.items() if k != "kept"},
        "sigma_by_type": res.sigma_by_type,
        "meta_train_time_s": round(res.wall_s, 2),
        # the one-time cost is first-order memory: CUDA max allocated, or the process's max RSS on CPU
        "peak_memory_mb": peak_mb,
        "dev": res.dev, "mlflow_run_id": run_id,
    }


def _policy_card(cfg: MetaTrainRunConfig, res, meta_val: dict) -> dict[str, Any]:
    """The registered model version's card: how the policy was meta-trained and what meta-validation said."""
    from meta.registry import measurable_text

    card = {"profile": cfg.profile, "policy_kind": res.policy.kind, "meta_steps": res.steps,
            "policy_rel_change": f"{res.policy_change:.4g}",
            "meta_val_gain": "none" if not meta_val["kept"] else f"{meta_val['gain_over_uniform']:.4g}",
            "meta_val_metric": meta_val["metric"], "meta_val_epoch": res.best_epoch}
    if meta_val["measurable"] is not None:
        card["meta_val_measurable"] = measurable_text(meta_val["measurable"])
    if meta_val["selection"]:
        card["meta_val_selection"] = meta_val["selection"]
    return card
