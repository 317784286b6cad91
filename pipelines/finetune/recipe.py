"""Recipe: fine-tune one model on one task with one method, tracked in MLflow.

Reads top to bottom: validate the config (before anything heavy), sample the
data, open the MLflow run, load the model, zero-shot test accuracy, train with
dev evaluation every N steps (checkpointing the ZO trajectory each time), pick
the best dev step, final test accuracy, artifacts, summary.

A ZO run's checkpoint is its trajectory (``<out>/trajectory.jsonl``): with
``resume=True`` the recipe replays it on the base weights and continues
exactly where the run stopped, in the same MLflow run.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from pipelines.locks import OutDirLock
from zoplatform.errors import ConfigError, Diverged
from zoplatform.jsonio import write_json

from .checkpoint import (
    TRAJECTORY_FILE,
    discard_stub,
    load_trajectory,
    read_state,
    resume_config,
    write_checkpoint,
)
from .config import FO_METHODS, FinetuneConfig, check_inputs, method_hyper, resolve_policy_option, run_precision
from .runinfo import (
    PREDICTIONS_FILE,
    default_run_name,
    fo_autocast,
    hardware,
    history_from,
    method_report,
    plot_history,
    replica_hashes,
    resume_command,
    run_note,
    run_params,
    save_predictions,
    summary_metrics,
)
from .sampling import sample_data


def run(cfg: FinetuneConfig, tracker=None, on_eval=None, should_stop=None) -> dict[str, Any]:
    """Execute the recipe; returns the JSON summary.

    Hooks (used by sweeps): ``on_eval(step, metrics, history)`` runs after each
    dev evaluation, once the checkpoint is written; ``should_stop()`` is checked
    after every step and ends training early (the run then finishes normally:
    best step, test, artifacts).  A run whose loss or estimate becomes non-finite
    raises :class:`~zoplatform.errors.Diverged` after saving its last finite
    checkpoint (MLflow: FAILED, reason ``diverged at step k``)."""
    t_start = time.perf_counter()
    # 1. validate everything cheap first -----------------------------------
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / (
        cfg.run_name or f"{cfg.task}-{cfg.method}-{cfg.model.replace('/', '_').replace(':', '_')}-s{cfg.seed}-{int(time.time())}")
    if cfg.resume:  # the stored config is the run's identity; explicit options must agree with it
        cfg = resume_config(cfg, read_state(out_dir))
    requested, cfg = cfg, resolve_policy_option(cfg, out_dir)
    task, method, data_dir = check_inputs(cfg)
    splits = sample_data(cfg, data_dir)
    if cfg.tracking and tracker is None:  # an unreachable server or a bad URI fails here, in one line
        from zoplatform.tracking.mlflow import check_tracking_uri, resolve_tracking_uri

        check_tracking_uri(resolve_tracking_uri(cfg.tracking_uri))
    from zoplatform.distributed import World, init_from_env

    w = init_from_env(cfg.device) if cfg.workers > 1 else World()
    if w.size != cfg.workers:
        raise ConfigError(f"workers={cfg.workers} but this is a world of {w.size} process(es): start it with "
                          f"zo finetune --workers {cfg.workers} (which launches torchrun)")
    if not w.is_main:  # one worker reports and writes; the others compute
        cfg = cfg.model_copy(update={"progress": False})
    # held for the run's life by the main worker: a second run on this out dir is refused
    with OutDirLock(out_dir) if w.is_main else contextlib.nullcontext():
        if not cfg.resume and (out_dir / "summary.json").is_file():  # a finished (or diverged) run: never overwritten
            raise ConfigError(f"out_dir {out_dir} holds a finished run ({out_dir / 'summary.json'}); a new run would "
                              f"overwrite it: use another --out-dir, or delete it")
        saved = read_state(out_dir)  # validated whole: a damaged state.json is one line naming the field
        if not cfg.resume and saved is not None:
            done = saved["history"]["steps_done"]
            if saved["config"].get("method") in FO_METHODS:
                raise ConfigError(f"out_dir {out_dir} holds an unfinished 'fo' run (step {done}), which keeps no "
                                  f"checkpoint: delete its state.json to run it again, or choose another --out-dir")
            raise ConfigError(f"out_dir {out_dir} holds an unfinished run's checkpoint (step {done}): continue it "
                              f"with --resume, or choose another --out-dir (a new run would overwrite it)")
        if cfg.resume and method is None:
            raise ConfigError("resume is supported for ZO methods (their trajectory is the checkpoint), not for 'fo'")
        # the checkpoint's trajectory, cross-checked against the state before any work (a torn last line: one warning)
        resumed = load_trajectory(out_dir, saved, warn=w.is_main) if cfg.resume and saved["history"]["steps_done"] \
            else None
        finished = False
        try:
            result = _run(cfg, requested, task, method, splits, out_dir, saved if cfg.resume else None, tracker,
                          on_eval, should_stop, t_start, w, resumed)
            finished = True
            return result
        except Exception:
            if w.is_main and not cfg.resume:  # failed before its first evaluation: leave nothing that blocks a retry
                discard_stub(out_dir)
            raise
        finally:
            if w.size > 1:
                leave_world(finished)


def leave_world(finished: bool) -> None:
    """Tear the process group down.  After a finished run every worker first waits at a barrier
    for the others (the main one writes artifacts and MLflow records after its last collective):
    a worker that destroyed its gloo group and exited while a peer still held the connections
    was seen to abort ("terminate called without an active exception", SIGABRT), failing a run
    that had finished.  A run that failed skips the barrier, since a peer may be gone."""
    import torch.distributed as dist

    if finished:
        dist.barrier()
    dist.destroy_process_group()


def _run(cfg, requested, task, method, splits, out_dir, saved, tracker, on_eval, should_stop, t_start, w,
         resumed=None):
    import zoplatform
    from zoplatform.loop import (
        FOStepper,
        History,
        ZOStepper,
        evaluate,
        lr_lambda,
        peak_memory_mb,
        reset_peak_memory,
        train,
    )
    from zoplatform.models import default_protocol, load_model, lora_spec
    from zoplatform.objectives import make_scorer
    from zoplatform.params import set_threads
    from zoplatform.precision import cast_model_, is_mixed, load_dtype
    from zoplatform.tracking import NullTracker, ending, mlflow_tracker, print_links, set_note, tracker_links
    from zoplatform.trajectory import layout_digest

    precision = run_precision(cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        set_threads(cfg.threads)
    traj_path = out_dir / TRAJECTORY_FILE
    # 2. tracking ----------------------------------------------------------
    if tracker is None:
        tracker = NullTracker() if not (cfg.tracking and w.is_main) else mlflow_tracker(
            tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, run_name=cfg.run_name or default_run_name(cfg),
            parent_run_id=cfg.parent_run_id, run_id=(saved or {}).get("run_id"))
        own_tracker = True
    else:
        own_tracker = False
    params = run_params(cfg, method, len(splits.train), len(splits.dev), precision, out_dir)
    tracker.start(params, tags={"task": cfg.task, "model": cfg.model, "method": cfg.method, "zo.kind": "finetune",
                                "host": platform.node(), "data_note": splits.note})
    links = tracker_links(tracker)
    if links and own_tracker:
        print_links(links)
    if saved is None:
        set_note(tracker, run_note(cfg, {}, method))
    history, opt = History(), None
    summary: dict[str, Any] = {"model": cfg.model, "task": cfg.task, "method": cfg.method, "seed": cfg.seed,
                               "steps": cfg.steps, "num_train": len(splits.train), "num_dev": len(splits.dev),
                               "num_test": len(splits.test), "precision": precision, "out_dir": str(out_dir)}
    if splits.note:  # e.g. num_train capped to the split's size, or a test set smaller than num_test
        summary["data_note"] = splits.note
    if links:
        summary["mlflow_ui"] = links
    if saved and saved.get("zero_shot_test_accuracy") is not None:
        summary["zero_shot_test_accuracy"] = saved["zero_shot_test_accuracy"]

    def checkpoint():
        if not w.is_main:
            return
        traj = None
        if opt is not None and method is not None:
            opt.trajectory.info.update({"model": cfg.model, "task": cfg.task})
            del opt.trajectory.records[history.steps_done:]  # never a record the state does not vouch for
            traj = opt.trajectory
        write_checkpoint(out_dir, traj, {"run_id": tracker.run_id, "history": history.__dict__,
                                         "zero_shot_test_accuracy": summary.get("zero_shot_test_accuracy"),
                                         "config": requested.model_dump()})

    if saved is None:
        checkpoint()  # from here on a resume reopens this MLflow run, even if nothing was trained yet

    def interrupted() -> str:  # the command reproduces how the run ran (--workers, --threads, --no-tracking)
        if history.steps_done == 0:
            return f"interrupted (SIGINT/SIGTERM) before the first step; {resume_command(cfg, out_dir)} starts it " \
                   f"again in this run"
        return f"interrupted (SIGINT/SIGTERM) at step {history.steps_done}; continue with: " \
               f"{resume_command(cfg, out_dir)}"

    def on_interrupt():
        if opt is not None:
            checkpoint()
        if w.is_main and own_tracker:  # also on stderr (a sweep's trial, given its tracker, says its sweep's)
            print(interrupted(), file=sys.stderr, flush=True)

    with ending(tracker, interrupted, on_interrupt=on_interrupt) as outcome:
        # 3. model and objective -------------------------------------------
        protocol = cfg.protocol or default_protocol(cfg.model)
        lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha} if cfg.lora else None
        model, tok = load_model(cfg.model, dtype=load_dtype(precision), device=cfg.device, protocol=protocol,
                                num_labels=task.num_labels, lora=lora, seed=cfg.seed)
        scorer = make_scorer(model, tok, protocol=protocol, max_length=cfg.max_length)
        dev = next(model.parameters()).device
        reset_peak_memory(dev)
        if cfg.workers > 1:  # each worker scores its shard; losses and scores are reduced (zoplatform.distributed)
            from zoplatform.distributed import ShardedScorer

            scorer = ShardedScorer(scorer, w, dev)
        if cfg.head_init == "probe":  # deterministic: a resumed run refits the same head, then replays
            from zoplatform.probe import fit_linear_probe

            summary["probe_train_accuracy"] = fit_linear_probe(model, tok, splits.train,
                                                               max_length=cfg.max_length)
            tracker.log_metrics({"probe_train_accuracy": summary["probe_train_accuracy"]}, 0)

        # 4. optimiser / stepper (a mixed precision mode takes its fp32 masters here) -----------
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        summary["trainable_params"] = sum(p.numel() for _, p in named)
        if method is None:
            opt = torch.optim.AdamW([p for _, p in named], lr=cfg.lr or 1e-5, weight_decay=cfg.weight_decay)
            stepper = FOStepper(opt, scorer)
        else:
            opt = zoplatform.ZOOptimizer(named, cfg.method, seed=cfg.seed, no_decay=zoplatform.no_decay_names(model),
                                         precision=precision, **method_hyper(cfg))
            opt.trajectory.info["lora"] = lora_spec(model)  # what rebuilds the initial adapter (zo eval, replay)
            stepper = ZOStepper(opt, scorer)
        if method is not None or not is_mixed(precision):
            cast_model_(model, precision)  # fo in a mixed mode keeps fp32 weights under autocast
        autocast = fo_autocast(method, precision, dev)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.schedule, cfg.steps))
        if "zero_shot_test_accuracy" not in summary and cfg.zero_shot:
            with autocast():
                zs = evaluate(scorer, splits.test, cfg.eval_batch_size)
            summary["zero_shot_test_accuracy"] = zs.accuracy
            tracker.log_metrics({"zero_shot_test_accuracy": zs.accuracy, "zero_shot_test_loss": zs.loss}, 0)

        best_copy: list[torch.Tensor] | None = None
        start, resumed_wall = 0, 0.0  # training time before a resume, so wall_time_s counts every segment
        if saved is not None:  # resume: the history so far, then replay the trajectory
            history = history_from(saved["history"])
            resumed_wall, start = history.wall_s, history.steps_done
            traj = resumed if start > 0 else opt.trajectory  # loaded and cross-checked by run()
            if traj.layout != layout_digest(opt.blocks) or traj.method != cfg.method:
                raise ConfigError(f"{traj_path} was written for another method, parameter layout or precision; "
                                  f"start a new out_dir instead of resume")

            def keep_best(i, _state):
                nonlocal best_copy
                if cfg.select == "best" and i == history.best_step:
                    best_copy = [p.detach().to("cpu", copy=True) for _, p in named]

            opt.resume(traj.records[:start], progress=cfg.progress, on_step=keep_best)
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": replay steps no optimizer
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(start):
                    sched.step()
            if cfg.select == "best" and history.best_step == start:
                best_copy = None  # the current weights are the best
            tracker.set_tags({"zo.resumed_at_step": str(start)})

        def on_step(step, out):  # a constant lr is a param, not a flat line: logged per step only under a schedule
            tracker.log_metrics({k: v for k, v in out.items() if isinstance(v, (int, float)) and k != "forwards"}
                                | ({"lr": sched.get_last_lr()[0]} if cfg.schedule != "constant" else {})
                                | {"forward_passes": history.forwards}, step)

        def eval_hook(step, m, is_best):
            nonlocal best_copy
            if is_best and cfg.select == "best":
                best_copy = [p.detach().to("cpu", copy=True) for _, p in named] if step < cfg.steps else None
            checkpoint()
            # metrics reach MLflow only here, right after the checkpoint: a resumed run re-logs no step
            tracker.log_metrics({"dev_loss": m["dev_loss"], "dev_accuracy": m["dev_accuracy"]}, step)
            tracker.flush()
            if on_eval is not None:
                on_eval(step, m, history)

        # 5. train ------------------------------------------------------------
        try:
            with autocast():
                history = train(stepper, scorer, splits.train, splits.dev, steps=cfg.steps,
                                batch_size=cfg.batch_size, data_seed=cfg.seed, eval_every=cfg.eval_every,
                                scheduler=sched, start_step=start, history=history, on_step=on_step,
                                on_eval=eval_hook, eval_batch_size=cfg.eval_batch_size, progress=cfg.progress,
                                should_stop=should_stop)
        except Diverged as e:
            checkpoint()  # the trajectory up to the last finite step, which replays exactly
            summary.update({"status": "diverged", "diverged_at_step": e.step, "best_step": history.best_step,
                            "best_dev_accuracy": history.best_dev_accuracy, "test_accuracy": None,
                            "mlflow_run_id": tracker.run_id})
            if w.is_main:
                write_json(out_dir / "summary.json", summary)
                tracker.log_artifact(out_dir / "summary.json")
                set_note(tracker, run_note(cfg, summary))
            raise Diverged(f"{e}; the last finite checkpoint is {traj_path} ({history.steps_done} steps; best dev "
                           f"step {history.best_step}: zo eval --trajectory {traj_path} --steps "
                           f"{history.best_step} ...)", e.step) from None
        checkpoint()

        # 6. best step, test ----------------------------------------------------
        if cfg.select == "best" and best_copy is not None and history.best_step != history.steps_done:
            with torch.no_grad():
                for (_, p), b in zip(named, best_copy):
                    p.copy_(b.to(p.device))
        with autocast():
            test = evaluate(scorer, splits.test, cfg.eval_batch_size)
        if w.is_main:
            save_predictions(out_dir / PREDICTIONS_FILE, test, splits.test)
        summary.update({
            "status": "finished", "test_accuracy": test.accuracy, "test_loss": test.loss,
            "best_step": history.best_step if cfg.select == "best" else history.steps_done,
            "best_dev_accuracy": history.best_dev_accuracy, "forward_passes": history.forwards,
            "wall_time_s": round(time.perf_counter() - t_start + resumed_wall, 2),
            "train_time_s": round(history.wall_s, 2),
            "peak_memory_mb": peak_memory_mb(dev), "device": str(dev), "hardware": hardware(str(dev)),
            "final_dev_loss": history.evals[-1]["dev_loss"] if history.evals else None,
            "mlflow_run_id": tracker.run_id,
        })
        # 7. artifacts -------------------------------------------------------------
        if cfg.workers > 1:  # the replicas must have stayed bit-identical: compare their weight hashes
            summary["workers"] = w.size
            summary["allreduce_bytes_per_step"] = scorer.bytes_reduced / max(history.steps_done - start, 1)
            summary["replica_sha256"] = replica_hashes(named)
        if not w.is_main:
            return summary
        write_json(out_dir / "summary.json", summary)
        plot_history(history, out_dir / "curves.png", f"{cfg.method} on {cfg.task} ({cfg.model}), seed {cfg.seed}: "
                                                     f"{history.steps_done} steps, {history.forwards} forward passes")
        extra = method_report(opt.method, opt.method_state, opt.blocks, out_dir, cfg) if method is not None else []
        for f in ["curves.png", "summary.json", "state.json", "trajectory.jsonl", PREDICTIONS_FILE, *extra]:
            if (out_dir / f).is_file():
                tracker.log_artifact(out_dir / f)
        tracker.log_metrics(summary_metrics(summary), 0)  # one-off results: once, at step 0 (see summary_metrics)
        set_note(tracker, run_note(cfg, summary))
        outcome.clear_reason = True  # a resumed run that finishes drops its old "interrupted" reason
        return summary
