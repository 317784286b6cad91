"""``zo bench``: the benchmark commands (ratios measured in one run; the work is in :mod:`pipelines.bench.step`).
Registered on ``zo`` by :mod:`pipelines.cli`'s ``__init__``."""
from __future__ import annotations

import json

import click

from zoplatform.errors import ZOError

from .main import emit_json, friendly, main


@main.group()
def bench():
    """Benchmarks (ratios measured in one run)."""


@bench.command("step-cost")
@click.option("--model", default="smollm2-135m")
@click.option("--task", default="sst2")
@click.option("--batch-size", type=int, default=16)
@click.option("--methods", "methods_", default="mezo",
              help="comma-separated ZO methods, each optionally NAME:KEY=VALUE[:KEY=VALUE...] "
                   "(e.g. mezo,curvzo:init_budget=0.1,curvzo:init_budget=0.8)")
@click.option("--directions", default="gaussian,rademacher,pool")
@click.option("--repeats", type=int, default=5)
@click.option("--device", default="cpu")
@click.option("--dtype", default="float32")
@click.option("--data-dir", type=str)
@click.option("--no-memory", is_flag=True, help="skip the subprocess peak-memory measurements")
@click.option("--precisions", default="", help="comma-separated precision modes for a 'precisions' section, "
                                               "e.g. fp32,bf16-mixed")
@click.option("--threads", "threads_", default="", help="comma-separated thread counts for a scaling section, e.g. 1,2")
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench_step_cost(model, task, batch_size, methods_, directions, repeats, device, dtype, data_dir, no_memory,
                    precisions, threads_, as_json):
    """ZO step time vs two forward passes, peak memory vs inference and first-order, scorer speed-up.

    Method options let one run compare variants, e.g. CurvZO's step cost against its budget."""
    from pipelines.bench.step import step_cost

    out = step_cost(model=model, task=task, batch_size=batch_size, methods=[m for m in methods_.split(",") if m],
                    directions=directions.split(","), repeats=repeats, device=device, dtype=dtype,
                    data_dir=data_dir, memory=not no_memory, precisions=[p for p in precisions.split(",") if p],
                    threads=_int_list(threads_, "threads"))
    emit_json(out) if as_json else click.echo(json.dumps(out, indent=1))


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ZOError(f"--{what} {text!r} must be comma-separated integers, e.g. 1,2") from None


@bench.command("data-parallel")
@click.option("--model", default="smollm2-135m")
@click.option("--task", default="sst2")
@click.option("--method", default="mezo")
@click.option("--batch-size", type=int, default=16, help="global batch (split across the workers)")
@click.option("--steps", type=int, default=6)
@click.option("--workers", "workers_", default="1,2", help="worker counts to compare, e.g. 1,2")
@click.option("--threads", type=int, default=1, help="threads per worker")
@click.option("--data-dir", type=str)
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench_data_parallel(model, task, method, batch_size, steps, workers_, threads, data_dir, as_json):
    """Steps/s of 1 worker vs N data-parallel workers at the same global batch, bytes all-reduced per step."""
    import zoplatform
    from pipelines.bench.scale import data_parallel
    from zoplatform.data import get_task
    from zoplatform.models import check_spec

    # the runs are `zo finetune --workers N` subprocesses: a bad name would surface as a worker's failure
    zoplatform.get_method(method)  # data-parallel runs are ZO runs ('fo' runs in one process)
    get_task(task)
    check_spec(model)
    out = data_parallel(model=model, task=task, method=method, batch_size=batch_size, steps=steps,
                        workers=_int_list(workers_, "workers"), threads=threads, data_dir=data_dir)
    emit_json(out) if as_json else click.echo(json.dumps(out, indent=1))


@bench.command("sweep-overhead")
@click.option("--model", default="tiny:llama")
@click.option("--task", default="sst2")
@click.option("--method", default="mezo")
@click.option("--trials", type=int, default=4)
@click.option("--steps", type=int, default=4)
@click.option("--data-dir", type=str)
@click.option("--json", "as_json", is_flag=True)
@friendly
def bench_sweep_overhead(model, task, method, trials, steps, data_dir, as_json):
    """Wall time of N short trials through Ray Tune vs the same trials run directly (one run, as a ratio)."""
    from pipelines.bench.scale import sweep_overhead

    out = sweep_overhead(model=model, task=task, method=method, trials=trials, steps=steps, data_dir=data_dir)
    emit_json(out) if as_json else click.echo(json.dumps(out, indent=1))
