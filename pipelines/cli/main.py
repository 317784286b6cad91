"""The ``zo`` command line.

Every command validates its input before heavy work; a user error prints one
line (``error: ...``) and exits with status 2, never a traceback.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from pipelines.console import EXIT_USAGE, one_line_errors
from pipelines.study.cli import study
from zoplatform.errors import ZOError

friendly = one_line_errors()  # every command: bad input is one line, exit 2


def emit_json(obj) -> None:
    """The JSON summary is always the last line of stdout (standard JSON: null, never NaN)."""
    from zoplatform.jsonio import dumps

    click.echo(dumps(obj, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """zoplatform: zeroth-order fine-tuning, sweeps and learned policies."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # `kill`/a scheduler's SIGTERM ends a run like Ctrl-C: checkpoint saved, MLflow run KILLED with the reason
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


# --------------------------------------------------------------------------- finetune
def finetune_options(f):
    opts = [
        click.option("--model", help="hub id, local path, packaged name (smollm2-135m, minilm-l6) or tiny:llama|opt|gpt2|bert"),
        click.option("--task", help="task name (zo tasks)"),
        click.option("--method", help="ZO method (zo methods) or 'fo' (first-order AdamW)"),
        click.option("--steps", type=int), click.option("--lr", type=float), click.option("--eps", type=float),
        click.option("--weight-decay", type=float), click.option("--schedule", type=str),
        click.option("--direction", type=str, help="gaussian (default), rademacher or pool"),
        click.option("--batch-size", type=int), click.option("--seed", type=int), click.option("--eval-every", type=int),
        click.option("--num-train", type=int), click.option("--num-dev", type=int), click.option("--num-test", type=int),
        click.option("--eval-batch-size", type=int), click.option("--max-length", type=int),
        click.option("--data-dir", type=str, help="data directory (default: $ZO_DATA_DIR or ../shared/data)"),
        click.option("--protocol", type=str, help="prompt (causal LM) or head (sequence classification)"),
        click.option("--head-init", type=str, help="head protocol: random (default) or probe (linear probe first)"),
        click.option("--lora/--no-lora", default=None), click.option("--lora-r", type=int),
        click.option("--device", type=str), click.option("--dtype", type=str),
        click.option("--precision", type=str, help="fp32 (default) | bf16-mixed (bf16 forward, fp32 master weights) "
                                                   "| fp16-mixed | bf16-true | fp16-true"),
        click.option("--threads", type=int, help="CPU threads for the forward and the direction generation"),
        click.option("--workers", type=int, help="data-parallel ZO over N local worker processes (torchrun)"),
        click.option("--select", type=str, help="best (dev) or last step for the test evaluation"),
        click.option("--zero-shot/--no-zero-shot", default=None, help="evaluate the base model on test first (default on)"),
        click.option("--tracking-uri", type=str), click.option("--experiment", type=str),
        click.option("--run-name", type=str), click.option("--out-dir", type=str),
        click.option("--resume", is_flag=True, default=None, help="continue the run in --out-dir from its trajectory"),
        click.option("--no-tracking", "tracking", flag_value=False, default=None, help="do not log to MLflow"),
        click.option("--option", "method_option", multiple=True, help="extra method hyperparameter KEY=VALUE"),
        click.option("--policy", help="zo-finetuner policy: a directory, models:/zo-policy-<model>@champion or "
                                      "models:/NAME/N"),
        click.option("--config", "config_file", type=str, help="YAML/JSON file of options (CLI values win)"),
        click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def print_run_link(links: dict | None, what: str = "run") -> None:
    """At the end of a tracked command, on stderr: the MLflow UI page of its run (stdout's last line stays the
    JSON summary)."""
    if links and "run" in links:
        click.echo(f"MLflow {what}: {links['run']}" + (f"  (UI: {links['start_ui']})" if "start_ui" in links else ""),
                   err=True)


def _set_ui_url(ctx, param, value):
    """``--ui-url`` (else ``$ZO_MLFLOW_UI``): checked before any work, then the printed MLflow links (and those of
    this command's worker processes) point at it, through ``$ZO_MLFLOW_UI``."""
    from zoplatform.tracking import check_ui_url

    source, url = ("--ui-url", value) if value else ("$ZO_MLFLOW_UI", os.environ.get("ZO_MLFLOW_UI"))
    if url:
        try:
            os.environ["ZO_MLFLOW_UI"] = check_ui_url(url, source)
        except ZOError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(EXIT_USAGE)


ui_url_option = click.option(
    "--ui-url", callback=_set_ui_url, expose_value=False,
    help="where you serve the MLflow UI, e.g. http://127.0.0.1:5055 for `mlflow ui --port 5055`: the printed links "
         "use it (default $ZO_MLFLOW_UI, else the --tracking-uri server, else http://127.0.0.1:5000)")


def parse_kv(items) -> dict:
    from zoplatform.config import load_yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ZOError(f"--option {it!r} must look like KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = load_yaml(v, f"the value of {it.split('=', 1)[0]!r}")
    return out


def check_unfinished(out_dir: Path) -> None:
    """``zo finetune --resume`` of a run that finished has nothing to continue: one line, instead of testing it
    again and rewriting its summary.  (Sweeps and compares reuse a finished run by reading its summary.)"""
    from zoplatform.errors import ConfigError

    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(summary, dict) and summary.get("status") == "finished":
        acc = summary.get("test_accuracy")
        raise ConfigError(f"out_dir {out_dir} holds a finished run (test accuracy {acc}, {out_dir / 'summary.json'}): "
                          f"nothing to resume; zo eval --trajectory {out_dir / 'trajectory.jsonl'} evaluates it "
                          f"again, and a new run needs another --out-dir")


@main.command()
@finetune_options
@ui_url_option
@friendly
def finetune(config_file, as_json, method_option, **opts):
    """Fine-tune a model on a task with a ZO method (or 'fo'), tracked in MLflow."""
    from pipelines.finetune import load_config, run

    if method_option:
        opts["method_options"] = parse_kv(method_option)
    cfg = load_config(config_file, opts)
    from pipelines.launch import launch, under_launcher

    if cfg.resume and "workers" not in cfg.model_fields_set and not under_launcher():
        from pipelines.finetune.checkpoint import (  # the stored run's --workers launches it again
            read_state,
            resume_config,
        )

        cfg = resume_config(cfg, read_state(Path(cfg.out_dir)))
    if cfg.resume and not under_launcher():
        check_unfinished(Path(cfg.out_dir))
    if cfg.workers > 1 and not under_launcher():  # validated above; now N workers through torchrun
        sys.exit(launch(sys.argv[1:], cfg.workers, cfg.threads, cfg.out_dir))
    summary = run(cfg)
    if under_launcher() and os.environ.get("RANK") != "0":
        return  # one worker reports
    print_run_link(summary.get("mlflow_ui"))
    if as_json:
        emit_json(summary)
    else:
        from zoplatform.jsonio import dumps

        click.echo(dumps(summary, indent=1, default=str))


@main.command("eval")
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--trajectory", type=str, help="trajectory.jsonl of a ZO run to apply to the base model first")
@click.option("--split", type=click.Choice(["test", "dev"]), default="test")
@click.option("--num-train", type=int, default=1000)
@click.option("--num-dev", type=int, default=None)
@click.option("--num-test", type=int, default=1000)
@click.option("--seed", type=int, default=0)
@click.option("--batch-size", type=int, default=32)
@click.option("--data-dir", type=str)
@click.option("--device", default="cpu")
@click.option("--dtype", default=None, help="float32 | bfloat16 | float16 (pure weights); prefer --precision")
@click.option("--precision", default=None,
              help="precision mode (default: the trajectory's, else fp32); fp32 | bf16-mixed | fp16-mixed | ...")
@click.option("--steps", type=int, default=None, help="replay only the first N steps of --trajectory")
@click.option("--threads", type=int, default=None, help="CPU threads")
@click.option("--protocol", type=click.Choice(["prompt", "head"]))
@click.option("--progress/--no-progress", default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def eval_cmd(model, task, trajectory, split, num_train, num_dev, num_test, seed, batch_size, data_dir, device, dtype,
             precision, steps, threads, protocol, progress, as_json):
    """Zero-shot accuracy, or the accuracy of a ZO checkpoint (trajectory)."""
    from pipelines.finetune.evaluate import run_eval

    out = run_eval(model=model, task=task, trajectory=trajectory, split=split, num_train=num_train, num_dev=num_dev,
                   num_test=num_test, seed=seed, batch_size=batch_size, data_dir=data_dir, device=device,
                   dtype=dtype, precision=precision, steps=steps, threads=threads, protocol=protocol,
                   progress=progress)
    emit_json(out) if as_json else click.echo(json.dumps(out, indent=1))


# --------------------------------------------------------------------------- listings
@main.command()
def methods():
    """List the registered methods and their papers."""
    import zoplatform

    for name in zoplatform.method_names():
        cls = zoplatform.get_method(name)
        click.echo(f"{name:14s} {cls.paper}")
    click.echo(f"{'fo':14s} first-order AdamW baseline (backprop; not a ZO method)")


@main.command()
def tasks():
    """List the tasks."""
    from zoplatform.data import TASKS

    for name, t in sorted(TASKS.items()):
        click.echo(f"{name:8s} candidates={list(t.candidates) if t.candidates else '(per example)'}")


@main.group()
def models():
    """Packaged models."""


@models.command("prepare")
@click.argument("name")
@click.option("--cache-dir", type=str)
@click.option("--force", is_flag=True)
@friendly
def models_prepare(name, cache_dir, force):
    """Prepare a packaged model once (e.g. dequantise SmolLM2's GGUF to safetensors)."""
    from zoplatform.models import prepare_packaged

    click.echo(str(prepare_packaged(name, cache_dir=cache_dir, force=force)))


@models.command("list")
def models_list():
    """List packaged models and tiny fixtures."""
    from zoplatform.models import PACKAGED, TINY

    for n in PACKAGED:
        click.echo(f"{n:14s} packaged")
    for n in TINY:
        click.echo(f"{n:14s} random test fixture")


def run_data_options(f):
    """Options every run of a sweep or a comparison shares: batch, data sizes, data dir, device."""
    for o in reversed([click.option("--batch-size", type=int), click.option("--num-train", type=int),
                       click.option("--num-dev", type=int), click.option("--num-test", type=int),
                       click.option("--data-dir", type=str), click.option("--device", type=str),
                       click.option("--dtype", type=str)]):
        f = o(f)
    return f


# --------------------------------------------------------------------------- sweep
@main.command()
@click.option("--method", help="ZO method to tune (zo methods)")
@click.option("--task", help="task name (zo tasks)")
@click.option("--model", help="model (as for zo finetune)")
@click.option("--trials", type=int, help="number of trials (default 8)")
@click.option("--steps", type=int, help="ZO steps per trial (default 500)")
@click.option("--space", help="search space YAML (default: the method's packaged space)")
@click.option("--backend", help="ray (default; local or RAY_ADDRESS cluster) or optuna (one machine, no Ray)")
@click.option("--scheduler", help="asha (default; forward passes as its time) or none")
@click.option("--resources", help="per trial, e.g. cpu=2,gpu=0.25 (default cpu=1)")
@click.option("--max-concurrent", type=int, help="trials at once (default 2)")
@click.option("--storage", help="sweep directory root, shared on a cluster (default ./sweeps)")
@click.option("--name", help="sweep name (default METHOD-TASK-MODEL)")
@click.option("--tracking-uri", help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
@click.option("--experiment", help="MLflow experiment (default zo-sweep)")
@click.option("--objectives", help="comma-separated: acc (default), loss, forward_passes")
@click.option("--seed", type=int, help="data/ZO seed of every trial and the sampler's seed")
@click.option("--max-failures", type=int, help="retries of a failed trial from its checkpoint (default 2)")
@click.option("--grace-period", type=int, help="ASHA's first rung in forward passes (default 10% of a trial)")
@click.option("--reduction-factor", type=float, help="ASHA reduction factor (default 3)")
@click.option("--time-budget-s", type=float, help="wall-clock budget of the sweep")
@click.option("--optuna-storage", help="Optuna RDB URL or journal file (default: a journal in the sweep dir)")
@click.option("--confirm-seeds", type=int, help="after the search, re-run the best config(s) and the space's paper "
                                                "default on N fresh seeds and pair them: did tuning help?")
@click.option("--confirm-top", type=int, help="how many of the best configurations to confirm (default 1)")
@click.option("--eval-every", type=int)
@run_data_options
@click.option("--precision", help="every trial's precision: fp32 (default) | bf16-mixed | fp16-mixed | bf16-true "
                                  "| fp16-true")
@click.option("--set", "settings", multiple=True, help="other fine-tune option KEY=VALUE (e.g. max_length=256)")
@click.option("--resume", is_flag=True, default=None, help="continue the interrupted sweep --storage/--name")
@click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
@ui_url_option
@friendly
def sweep(objectives, settings, as_json, batch_size, eval_every, num_train, num_dev, num_test, data_dir, device,
          dtype, precision, **opts):
    """Tune a method's hyperparameters: Ray Tune (or Optuna) over ZO fine-tunes, tracked in MLflow."""
    from pipelines.sweep import load_sweep_config, run

    ft = {"batch_size": batch_size, "eval_every": eval_every, "num_train": num_train, "num_dev": num_dev,
          "num_test": num_test, "data_dir": data_dir, "device": device, "dtype": dtype,
          "precision": precision} | parse_kv(settings)
    opts["finetune"] = {k: v for k, v in ft.items() if v is not None}
    if objectives is not None:
        opts["objectives"] = [o.strip() for o in objectives.split(",") if o.strip()]
    cfg = load_sweep_config(opts)
    out = run(cfg)
    if as_json:  # stdout: the one-line JSON; the links (and how to go on) for a person on stderr
        from zoplatform.tracking import print_links

        print_links(out.get("mlflow_ui"), "sweep")
        emit_json(out)
        if out["status"] == "interrupted":
            click.echo(out["resume_with"], err=True)
    else:
        from pipelines.sweep.recipe import human_summary

        click.echo(human_summary(out))
    if out["status"] == "interrupted":
        sys.exit(130)
    if out["status"] == "failed":  # every trial failed: nothing was tuned
        click.echo(f"error: sweep {out['sweep']}: {out['error']}", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------- meta-train
class OneLineUsageErrors(click.Command):
    """A bad option value (e.g. a ``click.Choice``) is one ``error: ...`` line and exit 2, like a ConfigError."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as e:
            click.echo(f"error: {e.format_message()}", err=True)
            ctx.exit(EXIT_USAGE)


@main.command("meta-train", cls=OneLineUsageErrors)
@click.option("--model", help="base model (as for zo finetune); the policy is specific to it")
@click.option("--tasks", help="comma-separated meta-training task(s), e.g. copa or sst2,copa")
@click.option("--profile", type=click.Choice(["descent", "paper"]),
              help="descent (default): per-block scale fitted to the closed-form expected ZO descent; "
                   "paper: the paper's eta_u lookahead (does not move the policy, docs §5.4)")
@click.option("--preset", help="paper defaults: single (COPA, default) or multi (task mixture)")
@click.option("--epochs", type=int)
@click.option("--restart", type=int, help="reset θ to the base weights every N epochs")
@click.option("--steps-per-epoch", type=int, help="default: ceil(train examples / batch size)")
@click.option("--num-train", type=int, help="train examples per task")
@click.option("--num-dev", type=int, help="dev examples per task (0: no dev loss)")
@click.option("--batch-size", type=int)
@click.option("--lr-mlp", type=float, help="policy SGD learning rate")
@click.option("--eta-u", type=float, help="virtual ZO step size in the meta-loss")
@click.option("--lr-llm", type=float, help="FO SGD learning rate of the trajectory")
@click.option("--momentum", type=float)
@click.option("--eps", type=float)
@click.option("--seed", type=int)
@click.option("--mixture", help="round_robin (default) or proportional (multi-task batches)")
@click.option("--embedding-rows", type=int, help="rows an embedding counts as in the normalisation (15·batch)")
@click.option("--finetune-lr", type=float, help="lr the expected descent (descent profile, meta-val) assumes")
@click.option("--finetune-batch", type=int, help="deployment batch size the expected descent assumes (16)")
@click.option("--curvature-margin", type=float, help="inflation of the empirical-Fisher curvature (2)")
@click.option("--kl-weight", type=float, help="descent: weight of the budget-share KL to sigma = 1 (1.0)")
@click.option("--sigma-bound", type=float, help="descent: sigma_b within [1/bound, bound] (10)")
@click.option("--policy-lr", type=float, help="descent: Adam lr of the log-scales (0.05)")
@click.option("--inner-steps", type=int, help="descent: Adam steps per meta-step (5)")
@click.option("--sharing", type=click.Choice(["type_depth", "type", "block"]),
              help="descent: one scale per block type and depth third (default), per type, or per block")
@click.option("--select", help="best (default: the epoch with the best meta-val gain) or last")
@click.option("--max-length", type=int)
@click.option("--device", type=str)
@click.option("--out-dir", type=str)
@click.option("--register/--no-register", "register_policy", default=None, help="register in MLflow as zo-policy-<model>@champion")
@click.option("--tracking-uri", type=str)
@click.option("--experiment", type=str)
@click.option("--run-name", type=str)
@click.option("--data-dir", type=str)
@click.option("--no-tracking", "tracking", flag_value=False, default=None, help="do not log to MLflow")
@click.option("--progress/--no-progress", default=None)
@click.option("--config", "config_file", type=str, help="YAML/JSON file of options (CLI values win)")
@click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
@ui_url_option
@friendly
def meta_train(config_file, as_json, preset, **opts):
    """Meta-train a ZO Fine-tuner perturbation policy for a base model (first-order, once per model)."""
    from pipelines.meta_train import load_config, run

    cfg = load_config(config_file, opts, preset)
    summary = run(cfg)
    if summary.get("mlflow_run_id"):  # the UI pages of the run (meta-train's own summary has only its id)
        from zoplatform.tracking import print_links
        from zoplatform.tracking.mlflow import run_links

        summary["mlflow_ui"] = run_links(summary["mlflow_run_id"], getattr(cfg, "tracking_uri", None))
        print_links(summary["mlflow_ui"])
    emit_json(summary) if as_json else click.echo(json.dumps(summary, indent=1, default=str))


# --------------------------------------------------------------------------- compare
@main.command()
@click.option("--methods", help="comma-separated method labels: ZO methods, fo, zero-shot, or labels in --configs")
@click.option("--tasks", help="comma-separated tasks (zo tasks)")
@click.option("--model", help="model (as for zo finetune; default smollm2-135m)")
@click.option("--seeds", type=int, help="seeds 0..N-1 (default 3)")
@click.option("--forward-budget", type=int, help="forward passes per run (two-point methods: budget/2 steps)")
@click.option("--task-budget", "task_budgets", help="per-task forward budgets overriding --forward-budget, e.g. cb=200")
@click.option("--eval-points", type=int, help="dev evaluations per run (default 6)")
@click.option("--configs", "configs_file", help="YAML: label -> finetune options, or -> a zo sweep best_config.yaml")
@click.option("--reference", help="label the others are paired with (verdicts, Δ with 95% intervals) and whose "
                                  "final dev accuracy they must reach (default mezo)")
@click.option("--backend", help="local (default; one run at a time, fresh process each) or ray (parallel)")
@click.option("--resources", help="per run, e.g. cpu=1 or cpu=4,gpu=1 (default cpu=1)")
@click.option("--out", help="output directory (default ./compare); rerunning reuses finished runs")
@run_data_options
@click.option("--tracking-uri", help="MLflow tracking URI (default sqlite:///$PWD/mlflow.db)")
@click.option("--experiment", help="MLflow experiment (default zo-compare)")
@click.option("--head-init", help="head protocol: random (default) or probe (linear-probe the head first)")
@click.option("--precision", help="every run's precision: fp32 | bf16-mixed | fp16-mixed | bf16-true | fp16-true "
                                  "(a --configs label's own precision overrides it)")
@click.option("--update-readme", help="replace the Results block of this Markdown file (e.g. docs/evidence.md) "
                                       "with the report")
@click.option("--readme-block", help="which generated block --update-readme replaces: NAME in "
                                     "<!-- NAME:start --> ... <!-- NAME:end --> (default results)")
@click.option("--report-only", is_flag=True, default=None, help="report the runs already finished under --out, run nothing")
@click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
@ui_url_option
@friendly
def compare(configs_file, as_json, **opts):
    """Every method on the same tasks and seeds at an equal forward-pass budget, with a results report."""
    from pipelines.compare import load_compare_config, run

    cfg = load_compare_config(opts, configs_file)
    out = run(cfg, recipe="zo compare " + " ".join(sys.argv[2:]))
    print_run_link(out.get("mlflow_ui"), "comparison")
    if as_json:
        emit_json(out)
    else:
        click.echo((Path(out["out"]) / "results.md").read_text())
    if out["status"] == "failed":
        sys.exit(1)


main.add_command(study)
