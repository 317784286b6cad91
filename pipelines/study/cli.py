"""``zo study run|report|archive FILE``: evidence as code (:mod:`pipelines.study.recipe`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipelines.console import one_line_errors

from .schema import check_filter, load_study

_one_line_errors = one_line_errors("interrupted; rerun the same command to continue (finished runs are reused)")


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _seeds(text: str | None) -> list[int] | None:
    from zoplatform.errors import ConfigError

    parts = _split(text)
    if parts is None:
        return None
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--seeds {text!r}: give comma-separated seed numbers, e.g. 0,1,2")
    return [int(p) for p in parts]


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _emit(out: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(out, default=str))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in out.items() if not isinstance(v, (list, dict))))


runs_option = click.option("--runs", "runs_dir", type=click.Path(file_okay=False),
                           help="the run directories' root (default: the study's runs, studies/runs/<name>)")


@click.group("study")
def study():
    """Evidence as code: run, report and archive a study file (studies/*.yaml)."""


@study.command("run")
@click.argument("file", type=click.Path())
@click.option("--arms", help="comma-separated: only these arms (the reference's runs are made or reused too)")
@click.option("--tasks", help="comma-separated: only these tasks")
@click.option("--seeds", help="comma-separated seed numbers: only these seeds")
@click.option("--tracking-uri", help="MLflow tracking URI (default: the study's, else sqlite:///$PWD/mlflow.db)")
@click.option("--no-report", is_flag=True, help="run only; `zo study report FILE` writes the reports")
@runs_option
@click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
@_one_line_errors
def run_cmd(file, arms, tasks, seeds, tracking_uri, no_report, runs_dir, as_json):
    """Run what the study is missing: finished runs are reused, cut-off runs resume."""
    from .recipe import report, run

    s = load_study(file)
    arms = check_filter("arms", _split(arms), list(s.arms)) if arms else list(s.arms)
    tasks = check_filter("tasks", _split(tasks), s.tasks) if tasks else s.tasks
    seeds = check_filter("seeds", _seeds(seeds), s.seeds) if seeds else s.seeds
    out = run(s, arms=arms, tasks=tasks, seeds=seeds, runs_dir=Path(runs_dir) if runs_dir else None,
              tracking_uri=tracking_uri, log=_say)
    if not no_report:
        out["report"] = report(s, file, runs_dir=Path(runs_dir) if runs_dir else None, log=_say)
    _emit(out, as_json)
    if out["status"] == "failed":
        sys.exit(1)


def _file_command(name: str):
    """A ``zo study NAME FILE [--runs DIR] [--json]`` command whose body maps (study, file, runs dir) to its summary."""

    def wrap(body):
        @study.command(name, help=body.__doc__)
        @click.argument("file", type=click.Path())
        @runs_option
        @click.option("--json", "as_json", is_flag=True, help="print a one-line JSON summary last")
        @_one_line_errors
        def cmd(file, runs_dir, as_json):
            _emit(body(load_study(file), file, Path(runs_dir) if runs_dir else None), as_json)

        return cmd

    return wrap


@_file_command("report")
def report_cmd(s, file, runs_dir):
    """Write the study's reports from its run directories, else its committed archive (runs nothing)."""
    from .recipe import report

    return report(s, file, runs_dir=runs_dir, log=_say)


@_file_command("archive")
def archive_cmd(s, file, runs_dir):
    """Pack the finished runs into the study's compact archive (<results>/runs.jsonl, predictions.npz)."""
    from .recipe import pack

    return pack(s, runs_dir)
