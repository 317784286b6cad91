"""Benchmarks whose results are ratios measured in one run (never timed tests).

``step_cost``: on one batch of a real task,
- forward time of the fast scorer, and of the naive one (``scorer_speedup``);
- for each ZO method × direction law: step time and ``step_to_2fwd_ratio`` =
  step time / (2 × forward time), plus the time of one pass over the random
  directions (what the ratio's excess is made of); each also as CPU time of
  this process (``*_cpu_s``, ``step_to_2fwd_cpu_ratio``), which a shared
  machine's contention distorts far less than wall time.  A method may carry
  options, ``NAME:KEY=VALUE[:KEY=VALUE...]`` (e.g. ``curvzo:init_budget=0.1``,
  ``sparse-mezo:threshold_every=1``), so one run can show CurvZO's step cost
  against its budget; methods that log the fraction of coordinates they
  perturb (``sampled_frac``, ``perturbed_frac``) report its mean;
- peak memory of an inference forward, a ZO step and a first-order step, each
  in its own subprocess: on CPU the kernel's peak-RSS counter (VmHWM) is reset
  after the model is loaded and read after the measured work; on CUDA,
  ``max_memory_allocated``.  ``zo_mem_to_inference_ratio`` = ZO peak /
  inference peak.

``sweep_overhead``: N short sweep trials through Ray Tune vs the same trials run
directly through the sweep's objective core, as a ratio.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def _median_times(fn, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall time and median CPU time (this process, all threads) of ``fn``.

    On a shared machine the wall time includes waiting for the CPU; the CPU
    time is what the work itself costs, so its ratios stay meaningful."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return statistics.median(ts), statistics.median(cs)


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    return _median_times(fn, repeats, warmup)[0]


def _setup(model, task, batch_size, device, dtype, data_dir, protocol=None):
    from zoplatform.data import get_task, resolve_data_dir, sample_splits
    from zoplatform.models import default_protocol, load_model
    from zoplatform.objectives import make_scorer

    t = get_task(task)
    protocol = protocol or default_protocol(model)
    splits = sample_splits(task, data_dir=resolve_data_dir(data_dir), num_train=batch_size, num_dev=1, num_test=1,
                           seed=0)
    m, tok = load_model(model, dtype=dtype, device=device, protocol=protocol, num_labels=t.num_labels)
    return m, tok, make_scorer(m, tok, protocol=protocol), list(splits.train[:batch_size]), protocol


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _read_peak(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"curvzo:init_budget=0.1:profile=port"`` -> ("curvzo", {"init_budget": 0.1, "profile": "port"}),
    validated against the method's config (a bad name or option raises ConfigError)."""
    import zoplatform
    from zoplatform.config import load_yaml
    from zoplatform.errors import ConfigError

    name, *items = spec.strip().split(":")
    opts: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"method option {it!r} in {spec!r} must look like KEY=VALUE")
        k, v = it.split("=", 1)
        opts[k.strip().replace("-", "_")] = load_yaml(v, f"method option {it!r} in {spec!r}")
    zoplatform.get_method(name)(**opts)  # validate now, before any model is loaded
    return name, opts


def memory_child(args: dict) -> dict:
    """Runs in a subprocess: peak memory of one mode after the model is loaded."""
    import gc

    import torch

    import zoplatform
    from zoplatform.precision import cast_model_, load_dtype

    precision = args.get("precision", "fp32")
    m, tok, scorer, batch, _ = _setup(args["model"], args["task"], args["batch_size"], args["device"],
                                      load_dtype(precision) if precision != "fp32" else args["dtype"],
                                      args.get("data_dir"))
    mode = args["mode"]
    if mode == "fo":
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    elif mode == "zo":
        law = {"direction": args["direction"]} if args.get("direction") else {}
        opt = zoplatform.optimizer(args["method"], m.named_parameters(), lr=1e-7, record=False, **law,
                                   precision=precision, **args.get("options", {}))
    if mode != "fo":
        cast_model_(m, precision)
    gc.collect()
    _reset_peak(args["device"])
    loaded = _read_peak(args["device"])  # right after the reset: the loaded model's footprint
    for _ in range(2):
        if mode == "inference":
            with torch.inference_mode():
                scorer.loss(batch)
        elif mode == "fo":
            opt.zero_grad(set_to_none=True)
            scorer.loss(batch).backward()
            opt.step()
        else:
            with torch.inference_mode():
                opt.step(lambda: scorer.loss(batch))
    return {"mode": mode, "peak_bytes": _read_peak(args["device"]), "loaded_bytes": loaded}


def _run_child(args: dict) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-m", "pipelines.bench.step", json.dumps(args)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        what = args["mode"] if args["mode"] != "zo" else f"zo:{args['method']}:{args['direction']}"
        raise RuntimeError(f"memory child {what} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _laws(name: str, directions, opts: dict | None = None) -> list:
    """The direction laws to measure a method with (None: the method has no choice, e.g. LOREN's sampler, or
    its spec names one itself, e.g. ``mezo:direction=rademacher``)."""
    import zoplatform

    if "direction" in (opts or {}):
        return [None]
    return list(directions) if "direction" in zoplatform.get_method(name).Config.model_fields else [None]


def _mode_times(model, task, batch_size, device, data_dir, precision: str, specs, directions, repeats) -> dict:
    """forward_s and per method/law step_s of one precision mode (a fresh model load)."""
    import torch

    import zoplatform
    from zoplatform.precision import cast_model_, load_dtype

    m, tok, scorer, batch, _ = _setup(model, task, batch_size, device, load_dtype(precision), data_dir)
    out: dict[str, Any] = {"methods": {}}
    base = [p.detach().clone() for p in m.parameters()]
    first = True
    for spec, (name, opts) in specs.items():
        for direction in _laws(name, directions, opts):
            for p, b in zip(m.parameters(), base):  # every method starts from the loaded weights
                p.data = b.clone()
            law = {"direction": direction} if direction else {}
            opt = zoplatform.optimizer(name, m.named_parameters(), lr=1e-7, record=False, precision=precision,
                                       **law, **opts)
            cast_model_(m, precision)
            if first:
                def fwd():
                    with torch.inference_mode():
                        scorer.loss(batch)

                out["forward_s"] = _median_time(fwd, repeats)
                first = False

            def step():
                with torch.inference_mode():
                    opt.step(lambda: scorer.loss(batch))

            t = _median_time(step, repeats)
            fps = opt.method.forwards_per_step
            out["methods"][f"{spec}/{direction}" if direction else spec] = {
                "step_s": t, "step_to_2fwd_ratio": t / (2 * out["forward_s"]),
                "step_to_own_forwards_ratio": t / (fps * out["forward_s"])}
    return out


def precision_section(model, task, batch_size, device, data_dir, precisions, specs, directions, repeats,
                      memory: bool) -> dict:
    """``precisions``: for each mode, forward and step times, step time against that mode's own two
    forwards and against the fp32 Gaussian MeZO step of the same run, and peak memory against fp32
    inference's peak (each mode in its own subprocess)."""
    ref = _mode_times(model, task, batch_size, device, data_dir, "fp32", {"mezo": ("mezo", {})}, ["gaussian"],
                      repeats)["methods"]["mezo/gaussian"]["step_s"]
    common = {"model": model, "task": task, "batch_size": batch_size, "device": device, "dtype": "float32",
              "data_dir": data_dir}
    inf32 = _run_child(common | {"mode": "inference"})["peak_bytes"] if memory else None
    out: dict[str, Any] = {"fp32_gaussian_mezo_step_s": ref}
    if inf32:
        out["fp32_inference_peak_mb"] = inf32 / 2**20
    for prec in precisions:
        sec = _mode_times(model, task, batch_size, device, data_dir, prec, specs, directions, repeats)
        for key, row in sec["methods"].items():
            row["step_vs_fp32_gaussian"] = row["step_s"] / ref
            if memory:
                name, opts = specs[key.rsplit("/", 1)[0]] if "/" in key else specs[key]
                direction = key.rsplit("/", 1)[1] if "/" in key else None
                peak = _run_child(common | {"mode": "zo", "method": name, "options": opts, "direction": direction,
                                            "precision": prec})["peak_bytes"]
                row["peak_mb"], row["mem_to_fp32_inference"] = peak / 2**20, peak / inf32
        if memory:
            inf = _run_child(common | {"mode": "inference", "precision": prec})["peak_bytes"]
            sec["inference_mem_to_fp32_inference"] = inf / inf32
        out[prec] = sec
    return out


def thread_scaling(model, task, batch_size, device, data_dir, threads, specs, directions, repeats) -> dict:
    """Forward and step times at each thread count (torch and direction threads), and the speed-up
    over the first count."""
    import torch

    from zoplatform.params import set_threads

    prev = torch.get_num_threads()
    out: dict[str, Any] = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            set_threads(n)
            out[str(n)] = _mode_times(model, task, batch_size, device, data_dir, "fp32", specs, directions, repeats)
    finally:
        torch.set_num_threads(prev)
        set_threads(None)
    first = out[str(threads[0])]
    for n in threads[1:]:
        sec = out[str(n)]
        sec["forward_speedup"] = first["forward_s"] / sec["forward_s"]
        for key, row in sec["methods"].items():
            row["step_speedup"] = first["methods"][key]["step_s"] / row["step_s"]
    return out


def _check_step_cost_args(repeats, batch_size, precisions, threads) -> None:
    from zoplatform.errors import ConfigError
    from zoplatform.precision import check_precision

    if repeats < 1:
        raise ConfigError(f"repeats={repeats} is invalid: must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid: must be >= 1")
    for prec in precisions:
        check_precision(prec)
    if any(int(t) < 1 for t in threads):
        raise ConfigError(f"threads={','.join(map(str, threads))} is invalid: every count must be >= 1")


def _forward_times(m, tok, scorer, batch, protocol, repeats, out: dict) -> float:
    """The batch's forward (and, for the prompt protocol, the naive scorer's) into ``out``; the forward's time."""
    import torch

    from zoplatform.objectives import NaiveScorer

    def fwd():
        with torch.inference_mode():
            scorer.loss(batch)

    t_fwd, c_fwd = _median_times(fwd, repeats)
    out["forward_s"], out["forward_cpu_s"] = t_fwd, c_fwd
    if protocol == "prompt":
        naive = NaiveScorer(m, tok)

        def naive_fwd():
            with torch.inference_mode():
                naive.loss(batch)

        t_naive = _median_time(naive_fwd, max(1, repeats // 2))
        out["naive_forward_s"] = t_naive
        out["scorer_speedup"] = t_naive / t_fwd
    return t_fwd


def _method_step_times(m, scorer, batch, name, opts, direction, repeats, t_fwd, c_fwd) -> dict[str, Any]:
    """One method's step and direction-pass times (median of ``repeats``) and their ratios to the forward."""
    import torch

    import zoplatform
    from zoplatform.params import axpy_

    law = {"direction": direction} if direction else {}
    opt = zoplatform.optimizer(name, m.named_parameters(), lr=1e-7, record=False, **law, **opts)
    fracs: list[float] = []

    def step():
        with torch.inference_mode():
            opt.step(lambda: scorer.loss(batch))
        extra = opt.last_record.extra
        frac = extra.get("sampled_frac", extra.get("perturbed_frac"))
        if frac is not None:
            fracs.append(float(frac))

    t_step, c_step = _median_times(step, repeats)

    def direction_pass():  # under inference_mode like the steps: the scratch buffer is an inference tensor
        with torch.inference_mode():
            axpy_(opt.blocks, 1, opt.method.law, opt.method.scratch, 0.0)

    law_pass, law_cpu = _median_times(direction_pass, repeats)
    fps = opt.method.forwards_per_step
    row = {"step_s": t_step, "step_to_2fwd_ratio": t_step / (2 * t_fwd), "direction_pass_s": law_pass,
           "step_cpu_s": c_step, "step_to_2fwd_cpu_ratio": c_step / (2 * c_fwd), "direction_pass_cpu_s": law_cpu,
           "forwards_per_step": fps, "step_to_own_forwards_ratio": t_step / (fps * t_fwd)}
    if fracs:
        row["perturbed_frac"] = sum(fracs) / len(fracs)
    return row


def _memory_section(common: dict, specs, directions, methods_out: dict) -> dict[str, Any]:
    """Peak memory of inference, FO and every ZO method (each in its own subprocess) and their ratios."""
    r_inf = _run_child(common | {"mode": "inference"})
    inf, loaded = r_inf["peak_bytes"], r_inf["loaded_bytes"]
    fo = _run_child(common | {"mode": "fo"})["peak_bytes"]
    for spec, (name, opts) in specs.items():
        for direction in _laws(name, directions, opts):
            zo = _run_child(common | {"mode": "zo", "method": name, "options": opts,
                                      "direction": direction})["peak_bytes"]
            methods_out[f"{spec}/{direction}" if direction else spec].update(
                {"peak_mb": zo / 2**20, "zo_mem_to_inference_ratio": zo / inf})
    return {"measure": "CUDA max allocated" if common["device"].startswith("cuda") else "process peak RSS (VmHWM)",
            "loaded_mb": loaded / 2**20, "inference_peak_mb": inf / 2**20, "fo_peak_mb": fo / 2**20,
            "fo_mem_to_inference_ratio": fo / inf}


def step_cost(*, model: str, task: str, batch_size: int = 16, methods=("mezo",), directions=("gaussian",),
              repeats: int = 5, device: str = "cpu", dtype: str = "float32", data_dir: str | None = None,
              memory: bool = True, precisions=(), threads=()) -> dict[str, Any]:
    import torch

    from zoplatform.models import check_spec

    _check_step_cost_args(repeats, batch_size, precisions, threads)
    specs = {spec: parse_method_spec(spec) for spec in methods}
    check_spec(model)
    m, tok, scorer, batch, protocol = _setup(model, task, batch_size, device, dtype, data_dir)
    out: dict[str, Any] = {"model": model, "task": task, "batch_size": batch_size, "device": device, "dtype": dtype,
                           "torch_threads": torch.get_num_threads(), "methods": {}}
    t_fwd = _forward_times(m, tok, scorer, batch, protocol, repeats, out)
    base = [p.detach().clone() for p in m.parameters()]
    for spec, (name, opts) in specs.items():
        for direction in _laws(name, directions, opts):
            key = f"{spec}/{direction}" if direction else spec
            out["methods"][key] = _method_step_times(m, scorer, batch, name, opts, direction, repeats, t_fwd,
                                                     out["forward_cpu_s"])
            with torch.no_grad():  # undo the benchmark steps
                for p, b in zip(m.parameters(), base):
                    p.copy_(b)
    if memory:
        common = {"model": model, "task": task, "batch_size": batch_size, "device": device, "dtype": dtype,
                  "data_dir": data_dir}
        # the ZO rows' memory lands in out["methods"]; the order of keys in "memory" is as before
        out["memory"] = _memory_section(common, specs, directions, out["methods"])
    if precisions:
        out["precisions"] = precision_section(model, task, batch_size, device, data_dir, list(precisions), specs,
                                              directions, repeats, memory)
    if threads:
        out["threads"] = thread_scaling(model, task, batch_size, device, data_dir, [int(t) for t in threads], specs,
                                        directions, repeats)
    return out


if __name__ == "__main__":
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))
