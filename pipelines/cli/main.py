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

from pipelines.compare.config import CompareConfig
from pipelines.console import EXIT_USAGE, one_line_errors
from pipelines.finetune.config import FinetuneConfig
from pipelines.meta_train import MetaTrainRunConfig
from pipelines.study.cli import study
from pipelines.sweep.config import SweepConfig
from zoplatform.errors import ZOError

from .options import OneLineUsageErrors, config_options, given

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
finetune_options = config_options(
    FinetuneConfig,
    exclude={"method_options": "a dict: given as --option KEY=VALUE (repeatable)"},
    help={"resume": "continue the run in --out-dir from its trajectory (its stored --workers too)",
          "tracking": "log to MLflow (--no-tracking: do not)"})


def finetune_extras(f):
    """The options of ``zo finetune`` that are not fields of :class:`FinetuneConfig`."""
    for o in reversed([
        click.option("--option", "method_option", multiple=True, help="extra method hyperparameter KEY=VALUE"),
        click.option("--config", "config_file", type=str, help="YAML/JSON file of options (CLI values win)"),
        click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last"),
    ]):
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


@main.command(cls=OneLineUsageErrors)
@finetune_options
@finetune_extras
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


# --------------------------------------------------------------------------- sweep
# fine-tune options every trial shares (the sweep's `finetune` dict; any other one through --set KEY=VALUE)
SWEEP_FINETUNE = ("eval_every", "batch_size", "num_train", "num_dev", "num_test", "data_dir", "device", "dtype",
                  "precision")


@main.command(cls=OneLineUsageErrors)
@config_options(
    SweepConfig,
    exclude={"finetune": "a dict: the fine-tune options below and --set KEY=VALUE"},
    help={"method": "ZO method to tune (zo methods)", "task": "task name (zo tasks)",
          "model": "model (as for zo finetune)", "trials": "number of trials (default 8)",
          "steps": "ZO steps per trial (default 500)", "space": "search space YAML (default: the method's packaged space)",
          "backend": "ray (default; local or RAY_ADDRESS cluster) or optuna (one machine, no Ray)",
          "scheduler": "asha (default; forward passes as its time) or none",
          "resources": "per trial, e.g. cpu=2,gpu=0.25 (default cpu=1)",
          "max_concurrent": "trials at once (default 2)",
          "storage": "sweep directory root, shared on a cluster (default ./sweeps)",
          "name": "sweep name (default METHOD-TASK-MODEL)",
          "tracking_uri": "MLflow tracking URI (default sqlite:///$PWD/mlflow.db)",
          "experiment": "MLflow experiment (default zo-sweep)",
          "objectives": "comma-separated: acc (default), loss, forward_passes",
          "seed": "data/ZO seed of every trial and the sampler's seed",
          "max_failures": "retries of a failed trial from its checkpoint (default 2)",
          "grace_period": "ASHA's first rung in forward passes (default 10% of a trial)",
          "reduction_factor": "ASHA reduction factor (default 3)", "time_budget_s": "wall-clock budget of the sweep",
          "optuna_storage": "Optuna RDB URL or journal file (default: a journal in the sweep dir)",
          "resume": "continue the interrupted sweep --storage/--name",
          "confirm_seeds": "after the search, re-run the best config(s) and the space's paper default on N fresh "
                           "seeds and pair them: did tuning help?",
          "confirm_top": "how many of the best configurations to confirm (default 1)"})
@config_options(FinetuneConfig, only=SWEEP_FINETUNE,
                help={"precision": "every trial's precision: fp32 (default) | bf16-mixed | fp16-mixed | bf16-true "
                                   "| fp16-true"})
@click.option("--set", "settings", multiple=True, help="other fine-tune option KEY=VALUE (e.g. max_length=256)")
@click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
@ui_url_option
@friendly
def sweep(settings, as_json, **opts):
    """Tune a method's hyperparameters: Ray Tune (or Optuna) over ZO fine-tunes, tracked in MLflow."""
    from pipelines.sweep import load_sweep_config, run

    opts["finetune"] = given({k: opts.pop(k) for k in SWEEP_FINETUNE}) | parse_kv(settings)
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
@main.command("meta-train", cls=OneLineUsageErrors)
@config_options(MetaTrainRunConfig, flags={"register_policy": "--register"})
@click.option("--preset", help="paper defaults: single (COPA, default) or multi (task mixture); the config file "
                               "and the options given override it")
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
@main.command(cls=OneLineUsageErrors)
@config_options(
    CompareConfig,
    exclude={"configs": "a dict: read from the --configs file"},
    custom={"seeds": click.option("--seeds", type=int, help="seeds 0..N-1 (default 3)"),
            "task_budgets": click.option("--task-budget", "task_budgets",
                                         help="per-task forward budgets overriding --forward-budget, e.g. cb=200")},
    help={"methods": "comma-separated method labels: ZO methods, fo, zero-shot, or labels in --configs",
          "tasks": "comma-separated tasks (zo tasks)", "model": "model (as for zo finetune; default smollm2-135m)",
          "forward_budget": "forward passes per run (two-point methods: budget/2 steps)",
          "eval_points": "dev evaluations per run (default 6)",
          "reference": "label the others are paired with (verdicts, Δ with 95% intervals) and whose final dev "
                       "accuracy they must reach (default mezo)",
          "backend": "local (default; one run at a time, fresh process each) or ray (parallel)",
          "resources": "per run, e.g. cpu=1 or cpu=4,gpu=1 (default cpu=1)",
          "out": "output directory (default ./compare); rerunning reuses finished runs",
          "tracking_uri": "MLflow tracking URI (default sqlite:///$PWD/mlflow.db)",
          "experiment": "MLflow experiment (default zo-compare)",
          "head_init": "head protocol: random (default) or probe (linear-probe the head first)",
          "precision": "every run's precision: fp32 | bf16-mixed | fp16-mixed | bf16-true | fp16-true (a --configs "
                       "label's own precision overrides it)",
          "update_readme": "replace the Results block of this Markdown file (e.g. docs/evidence.md) with the report",
          "readme_block": "which generated block --update-readme replaces: NAME in <!-- NAME:start --> ... "
                          "<!-- NAME:end --> (default results)",
          "report_only": "report the runs already finished under --out, run nothing",
          # the data options every run shares are FinetuneConfig's; so is their help
          **{k: FinetuneConfig.model_fields[k].description
             for k in ("batch_size", "num_train", "num_dev", "num_test", "data_dir", "device", "dtype")}})
@click.option("--configs", "configs_file", help="YAML: label -> finetune options, or -> a zo sweep best_config.yaml")
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
