"""Recipe: fine-tune one model on one task with one method, tracked in MLflow.

:func:`run` is the one entry; :class:`FinetuneRecipe` is the run itself, one method per step.
Read top to bottom, a run goes:

1. :func:`run` validates the config before anything heavy (a resume's stored identity, the policy,
   the inputs, the data sample, the tracking URI, the world of workers), locks the out dir and
   refuses one that holds another run.
2. :meth:`FinetuneRecipe.start` opens the MLflow run (params, tags, links, the planned note) and
   writes the step-0 checkpoint, so that a resume reopens this run even before a step is trained.
3. :meth:`FinetuneRecipe.setup` loads the model and its scorer (sharded across workers), fits the
   probe head when asked, builds the optimiser and stepper (a mixed precision mode takes its fp32
   masters here) and measures the zero-shot test accuracy.
4. :meth:`FinetuneRecipe.resume` (a resumed run only) restores the history, replays the
   trajectory on the base weights and steps the schedule to where the run stopped.
5. :meth:`FinetuneRecipe.train` runs the loop with dev evaluation every N steps, checkpointing the
   ZO trajectory at each evaluation and calling the hooks; a divergence saves its last finite
   checkpoint and ends the run.
6. :meth:`FinetuneRecipe.finish` picks the best dev step, measures the final test accuracy and
   writes the artifacts, the summary and the run's one-line note.

Steps 3-6 run inside :func:`zoplatform.tracking.ending`: an error ends the MLflow run FAILED with
its reason, an interrupt (SIGINT/SIGTERM) checkpoints and ends it KILLED with how to continue.

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

import zoplatform
from pipelines.locks import OutDirLock

# models and tracking are used through their modules (models.load_model, tracking.mlflow_tracker), so that a
# test replacing one of them there reaches the recipe
from zoplatform import models, tracking
from zoplatform.distributed import ShardedScorer, World, init_from_env
from zoplatform.errors import ConfigError, Diverged
from zoplatform.jsonio import write_json
from zoplatform.loop import FOStepper, History, ZOStepper, evaluate, lr_lambda, peak_memory_mb, reset_peak_memory
from zoplatform.loop import train as train_loop
from zoplatform.objectives import make_scorer
from zoplatform.params import set_threads
from zoplatform.precision import cast_model_, is_mixed, load_dtype
from zoplatform.probe import fit_linear_probe
from zoplatform.trajectory import layout_digest

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


# --------------------------------------------------------------------------- 1. validate, lock, run
def run(cfg: FinetuneConfig, tracker=None, on_eval=None, should_stop=None) -> dict[str, Any]:
    """Execute the recipe; returns the JSON summary.

    Hooks (used by sweeps): ``on_eval(step, metrics, history)`` runs after each
    dev evaluation, once the checkpoint is written; ``should_stop()`` is checked
    after every step and ends training early (the run then finishes normally:
    best step, test, artifacts).  A run whose loss or estimate becomes non-finite
    raises :class:`~zoplatform.errors.Diverged` after saving its last finite
    checkpoint (MLflow: FAILED, reason ``diverged at step k``)."""
    t_start = time.perf_counter()
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    if cfg.resume:  # the stored config is the run's identity; explicit options must agree with it
        cfg = resume_config(cfg, read_state(out_dir))
    requested, cfg = cfg, resolve_policy_option(cfg, out_dir)
    task, method, data_dir = check_inputs(cfg)
    splits = sample_data(cfg, data_dir)
    if cfg.tracking and tracker is None:  # an unreachable server or a bad URI fails here, in one line
        from zoplatform.tracking.mlflow import check_tracking_uri, resolve_tracking_uri

        check_tracking_uri(resolve_tracking_uri(cfg.tracking_uri))
    w = join_world(cfg)
    if not w.is_main:  # one worker reports and writes; the others compute
        cfg = cfg.model_copy(update={"progress": False})
    # held for the run's life by the main worker: a second run on this out dir is refused
    with OutDirLock(out_dir) if w.is_main else contextlib.nullcontext():
        saved = read_out_dir(cfg, out_dir, method)
        # the checkpoint's trajectory, cross-checked against the state before any work (a torn last line: one warning)
        resumed = load_trajectory(out_dir, saved, warn=w.is_main) if cfg.resume and saved["history"]["steps_done"] \
            else None
        recipe = FinetuneRecipe(cfg, requested, task, method, splits, out_dir, w, saved=saved if cfg.resume else None,
                                resumed=resumed, tracker=tracker, on_eval=on_eval, should_stop=should_stop,
                                t_start=t_start)
        finished = False
        try:
            result = recipe.run()
            finished = True
            return result
        except Exception:
            if w.is_main and not cfg.resume:  # failed before its first evaluation: leave nothing that blocks a retry
                discard_stub(out_dir)
            raise
        finally:
            if w.size > 1:
                leave_world(finished)


def default_out_dir(cfg: FinetuneConfig) -> Path:
    """``runs/<run name>``, or ``runs/<task>-<method>-<model>-s<seed>-<unix time>`` for an unnamed run."""
    model = cfg.model.replace("/", "_").replace(":", "_")
    return Path("runs") / (cfg.run_name or f"{cfg.task}-{cfg.method}-{model}-s{cfg.seed}-{int(time.time())}")


def join_world(cfg: FinetuneConfig) -> World:
    """This process's world: one process, or the torchrun world of ``cfg.workers`` (which must match)."""
    w = init_from_env(cfg.device) if cfg.workers > 1 else World()
    if w.size != cfg.workers:
        raise ConfigError(f"workers={cfg.workers} but this is a world of {w.size} process(es): start it with "
                          f"zo finetune --workers {cfg.workers} (which launches torchrun)")
    return w


def read_out_dir(cfg: FinetuneConfig, out_dir: Path, method) -> dict[str, Any] | None:
    """The out dir's ``state.json`` (None when there is none), after refusing an out dir that holds another run:
    a finished one, or an unfinished one without ``--resume``."""
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
    return saved


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


# --------------------------------------------------------------------------- the run
class FinetuneRecipe:
    """One fine-tune run, built from a validated config (see :func:`run`): :meth:`run` calls
    :meth:`start`, then :meth:`setup`, :meth:`resume`, :meth:`train` and :meth:`finish` under
    :func:`~zoplatform.tracking.ending`.  The run's state (tracker, model, optimiser, history,
    summary, the best weights kept in memory) lives on the object.

    ``saved`` is the stored ``state.json`` when resuming (else None) and ``resumed`` its
    trajectory, loaded and cross-checked by :func:`run` (None when no step was done); ``requested``
    is the config as given (before the policy option resolved), which the checkpoint stores."""

    def __init__(self, cfg: FinetuneConfig, requested: FinetuneConfig, task, method, splits, out_dir: Path,
                 world: World, *, saved: dict[str, Any] | None = None, resumed=None, tracker=None, on_eval=None,
                 should_stop=None, t_start: float | None = None):
        self.cfg, self.requested, self.task, self.method, self.splits = cfg, requested, task, method, splits
        self.out_dir, self.world, self.saved, self.resumed = out_dir, world, saved, resumed
        self.tracker, self.own_tracker = tracker, tracker is None
        self.after_eval, self.should_stop = on_eval, should_stop
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.precision = run_precision(cfg)
        self.traj_path = out_dir / TRAJECTORY_FILE
        self.history, self.opt = History(), None
        self.summary: dict[str, Any] = {}
        self.best_copy: list[torch.Tensor] | None = None  # the best dev step's weights, when not the current ones
        self.start_step, self.resumed_wall = 0, 0.0  # training time before a resume: wall_time_s counts every segment

    def run(self) -> dict[str, Any]:
        """The whole run; returns the summary."""
        self.start()
        with tracking.ending(self.tracker, self.interrupted, on_interrupt=self.on_interrupt) as outcome:
            self.setup()
            self.resume()
            self.train()
            return self.finish(outcome)

    # ----------------------------------------------------------------------- 2. tracking, step-0 checkpoint
    def start(self) -> None:
        """Open the MLflow run (a resume reopens its stored one) and write the step-0 checkpoint."""
        cfg, splits, w = self.cfg, self.splits, self.world
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
            set_threads(cfg.threads)
        if self.tracker is None:
            self.tracker = tracking.NullTracker() if not (cfg.tracking and w.is_main) else tracking.mlflow_tracker(
                tracking_uri=cfg.tracking_uri, experiment=cfg.experiment,
                run_name=cfg.run_name or default_run_name(cfg), parent_run_id=cfg.parent_run_id,
                run_id=(self.saved or {}).get("run_id"))
        params = run_params(cfg, self.method, len(splits.train), len(splits.dev), self.precision, self.out_dir)
        self.tracker.start(params, tags={"task": cfg.task, "model": cfg.model, "method": cfg.method,
                                         "zo.kind": "finetune", "host": platform.node(), "data_note": splits.note})
        links = tracking.tracker_links(self.tracker)
        if links and self.own_tracker:
            tracking.print_links(links)
        if self.saved is None:
            tracking.set_note(self.tracker, run_note(cfg, {}, self.method))
        self.summary = {"model": cfg.model, "task": cfg.task, "method": cfg.method, "seed": cfg.seed,
                        "steps": cfg.steps, "num_train": len(splits.train), "num_dev": len(splits.dev),
                        "num_test": len(splits.test), "precision": self.precision, "out_dir": str(self.out_dir)}
        if splits.note:  # e.g. num_train capped to the split's size, or a test set smaller than num_test
            self.summary["data_note"] = splits.note
        if links:
            self.summary["mlflow_ui"] = links
        if self.saved and self.saved.get("zero_shot_test_accuracy") is not None:
            self.summary["zero_shot_test_accuracy"] = self.saved["zero_shot_test_accuracy"]
        if self.saved is None:
            self.checkpoint()  # from here on a resume reopens this MLflow run, even if nothing was trained yet

    def checkpoint(self) -> None:
        """Write the checkpoint (main worker): the trajectory so far, then the state that vouches for it."""
        if not self.world.is_main:
            return
        traj = None
        if self.opt is not None and self.method is not None:
            self.opt.trajectory.info.update({"model": self.cfg.model, "task": self.cfg.task})
            del self.opt.trajectory.records[self.history.steps_done:]  # never a record the state does not vouch for
            traj = self.opt.trajectory
        write_checkpoint(self.out_dir, traj, {"run_id": self.tracker.run_id, "history": self.history.__dict__,
                                              "zero_shot_test_accuracy": self.summary.get("zero_shot_test_accuracy"),
                                              "config": self.requested.model_dump()})

    def interrupted(self) -> str:
        """The KILLED reason: where the run stopped and the command (as the run ran: --workers, --threads,
        --no-tracking) that continues it."""
        again = resume_command(self.cfg, self.out_dir)
        if self.history.steps_done == 0:
            return f"interrupted (SIGINT/SIGTERM) before the first step; {again} starts it again in this run"
        return f"interrupted (SIGINT/SIGTERM) at step {self.history.steps_done}; continue with: {again}"

    def on_interrupt(self) -> None:
        if self.opt is not None:
            self.checkpoint()
        # also on stderr (a sweep's trial, given its tracker, says its sweep's)
        if self.world.is_main and self.own_tracker:
            print(self.interrupted(), file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------- 3. model, scorer, optimiser
    def setup(self) -> None:
        """Model and scorer, the probe head, the optimiser and stepper, zero-shot test accuracy."""
        self._load_model()
        self._build_optimizer()
        self.autocast = fo_autocast(self.method, self.precision, self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.cfg.schedule, self.cfg.steps))
        if "zero_shot_test_accuracy" not in self.summary and self.cfg.zero_shot:
            with self.autocast():
                zs = evaluate(self.scorer, self.splits.test, self.cfg.eval_batch_size)
            self.summary["zero_shot_test_accuracy"] = zs.accuracy
            self.tracker.log_metrics({"zero_shot_test_accuracy": zs.accuracy, "zero_shot_test_loss": zs.loss}, 0)

    def _load_model(self) -> None:
        cfg = self.cfg
        protocol = cfg.protocol or models.default_protocol(cfg.model)
        lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha} if cfg.lora else None
        self.model, self.tok = models.load_model(cfg.model, dtype=load_dtype(self.precision), device=cfg.device,
                                                 protocol=protocol, num_labels=self.task.num_labels, lora=lora,
                                                 seed=cfg.seed)
        self.scorer = make_scorer(self.model, self.tok, protocol=protocol, max_length=cfg.max_length)
        self.device = next(self.model.parameters()).device
        reset_peak_memory(self.device)
        if cfg.workers > 1:  # each worker scores its shard; losses and scores are reduced (zoplatform.distributed)
            self.scorer = ShardedScorer(self.scorer, self.world, self.device)
        if cfg.head_init == "probe":  # deterministic: a resumed run refits the same head, then replays
            acc = fit_linear_probe(self.model, self.tok, self.splits.train, max_length=cfg.max_length)
            self.summary["probe_train_accuracy"] = acc
            self.tracker.log_metrics({"probe_train_accuracy": acc}, 0)

    def _build_optimizer(self) -> None:
        """AdamW for ``fo``, else the ZO optimiser (its fp32 masters in a mixed mode); then the weights are cast."""
        cfg, model = self.cfg, self.model
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.summary["trainable_params"] = sum(p.numel() for _, p in self.named)
        if self.method is None:
            self.opt = torch.optim.AdamW([p for _, p in self.named], lr=cfg.lr or 1e-5, weight_decay=cfg.weight_decay)
            self.stepper = FOStepper(self.opt, self.scorer)
        else:
            self.opt = zoplatform.ZOOptimizer(self.named, cfg.method, seed=cfg.seed,
                                              no_decay=zoplatform.no_decay_names(model), precision=self.precision,
                                              **method_hyper(cfg))
            # what rebuilds the initial adapter (zo eval, replay)
            self.opt.trajectory.info["lora"] = models.lora_spec(model)
            self.stepper = ZOStepper(self.opt, self.scorer)
        if self.method is not None or not is_mixed(self.precision):
            cast_model_(model, self.precision)  # fo in a mixed mode keeps fp32 weights under autocast

    # ----------------------------------------------------------------------- 4. resume
    def resume(self) -> None:
        """A resumed run: the history so far, the trajectory replayed on the base weights (keeping the best dev
        step's weights on the way) and the schedule stepped to where the run stopped.  A new run: nothing."""
        if self.saved is None:
            return
        cfg = self.cfg
        self.history = history_from(self.saved["history"])
        self.resumed_wall, self.start_step = self.history.wall_s, self.history.steps_done
        start = self.start_step
        traj = self.resumed if start > 0 else self.opt.trajectory  # loaded and cross-checked by run()
        if traj.layout != layout_digest(self.opt.blocks) or traj.method != cfg.method:
            raise ConfigError(f"{self.traj_path} was written for another method, parameter layout or precision; "
                              f"start a new out_dir instead of resume")

        def keep_best(i, _state):
            if cfg.select == "best" and i == self.history.best_step:
                self.best_copy = self._weights()

        self.opt.resume(traj.records[:start], progress=cfg.progress, on_step=keep_best)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": replay steps no optimizer
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                self.sched.step()
        if cfg.select == "best" and self.history.best_step == start:
            self.best_copy = None  # the current weights are the best
        self.tracker.set_tags({"zo.resumed_at_step": str(start)})

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach().to("cpu", copy=True) for _, p in self.named]

    # ----------------------------------------------------------------------- 5. train
    def train(self) -> None:
        """The loop from the start step, with dev evaluation (and a checkpoint) every ``eval_every`` steps."""
        cfg = self.cfg
        try:
            with self.autocast():
                self.history = train_loop(
                    self.stepper, self.scorer, self.splits.train, self.splits.dev, steps=cfg.steps,
                    batch_size=cfg.batch_size, data_seed=cfg.seed, eval_every=cfg.eval_every, scheduler=self.sched,
                    start_step=self.start_step, history=self.history, on_step=self._on_step, on_eval=self._on_eval,
                    eval_batch_size=cfg.eval_batch_size, progress=cfg.progress, should_stop=self.should_stop)
        except Diverged as e:
            self._diverged(e)
        self.checkpoint()

    def _on_step(self, step: int, out: dict) -> None:
        # a constant lr is a param, not a flat line: logged per step only under a schedule
        self.tracker.log_metrics({k: v for k, v in out.items() if isinstance(v, (int, float)) and k != "forwards"}
                                 | ({"lr": self.sched.get_last_lr()[0]} if self.cfg.schedule != "constant" else {})
                                 | {"forward_passes": self.history.forwards}, step)

    def _on_eval(self, step: int, m: dict, is_best: bool) -> None:
        if is_best and self.cfg.select == "best":
            self.best_copy = self._weights() if step < self.cfg.steps else None
        self.checkpoint()
        # metrics reach MLflow only here, right after the checkpoint: a resumed run re-logs no step
        self.tracker.log_metrics({"dev_loss": m["dev_loss"], "dev_accuracy": m["dev_accuracy"]}, step)
        self.tracker.flush()
        if self.after_eval is not None:
            self.after_eval(step, m, self.history)

    def _diverged(self, e: Diverged) -> None:
        """Save the trajectory up to the last finite step (which replays exactly) and a diverged summary; raise."""
        h = self.history
        self.checkpoint()
        self.summary.update({"status": "diverged", "diverged_at_step": e.step, "best_step": h.best_step,
                             "best_dev_accuracy": h.best_dev_accuracy, "test_accuracy": None,
                             "mlflow_run_id": self.tracker.run_id})
        if self.world.is_main:
            write_json(self.out_dir / "summary.json", self.summary)
            self.tracker.log_artifact(self.out_dir / "summary.json")
            tracking.set_note(self.tracker, run_note(self.cfg, self.summary))
        raise Diverged(f"{e}; the last finite checkpoint is {self.traj_path} ({h.steps_done} steps; best dev "
                       f"step {h.best_step}: zo eval --trajectory {self.traj_path} --steps "
                       f"{h.best_step} ...)", e.step) from None

    # ----------------------------------------------------------------------- 6. best step, test, artifacts
    def finish(self, outcome) -> dict[str, Any]:
        """The best dev step's weights, the final test accuracy, the summary; on the main worker the artifacts
        and MLflow's summary values and note (``outcome``: the MLflow run's ending, see :meth:`run`)."""
        cfg, h, summary = self.cfg, self.history, self.summary
        if cfg.select == "best" and self.best_copy is not None and h.best_step != h.steps_done:
            with torch.no_grad():
                for (_, p), b in zip(self.named, self.best_copy):
                    p.copy_(b.to(p.device))
        with self.autocast():
            test = evaluate(self.scorer, self.splits.test, cfg.eval_batch_size)
        if self.world.is_main:
            save_predictions(self.out_dir / PREDICTIONS_FILE, test, self.splits.test)
        summary.update({
            "status": "finished", "test_accuracy": test.accuracy, "test_loss": test.loss,
            "best_step": h.best_step if cfg.select == "best" else h.steps_done,
            "best_dev_accuracy": h.best_dev_accuracy, "forward_passes": h.forwards,
            "wall_time_s": round(time.perf_counter() - self.t_start + self.resumed_wall, 2),
            "train_time_s": round(h.wall_s, 2),
            "peak_memory_mb": peak_memory_mb(self.device), "device": str(self.device),
            "hardware": hardware(str(self.device)),
            "final_dev_loss": h.evals[-1]["dev_loss"] if h.evals else None,
            "mlflow_run_id": self.tracker.run_id,
        })
        if cfg.workers > 1:  # the replicas must have stayed bit-identical: compare their weight hashes
            summary["workers"] = self.world.size
            summary["allreduce_bytes_per_step"] = self.scorer.bytes_reduced / max(h.steps_done - self.start_step, 1)
            summary["replica_sha256"] = replica_hashes(self.named)
        if not self.world.is_main:
            return summary
        self._write_artifacts()
        outcome.clear_reason = True  # a resumed run that finishes drops its old "interrupted" reason
        return summary

    def _write_artifacts(self) -> None:
        """summary.json, curves.png and the method's report, all logged to MLflow with the checkpoint and the
        predictions; the summary values (once, at step 0: see summary_metrics) and the run's one-line note."""
        cfg, h, out_dir, opt = self.cfg, self.history, self.out_dir, self.opt
        write_json(out_dir / "summary.json", self.summary)
        plot_history(h, out_dir / "curves.png", f"{cfg.method} on {cfg.task} ({cfg.model}), seed {cfg.seed}: "
                                                f"{h.steps_done} steps, {h.forwards} forward passes")
        extra = method_report(opt.method, opt.method_state, opt.blocks, out_dir, cfg) if self.method is not None else []
        for f in ["curves.png", "summary.json", "state.json", "trajectory.jsonl", PREDICTIONS_FILE, *extra]:
            if (out_dir / f).is_file():
                self.tracker.log_artifact(out_dir / f)
        self.tracker.log_metrics(summary_metrics(self.summary), 0)
        tracking.set_note(self.tracker, run_note(cfg, self.summary))
