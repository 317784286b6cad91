"""The fine-tuning loop: steps, periodic dev evaluation, best-step selection.

One loop serves every method: a *stepper* turns a batch into an update and
reports its loss and forward passes.  :class:`ZOStepper` wraps any registered
ZO method (through :class:`~zoplatform.optim.ZOOptimizer`); :class:`FOStepper`
is the first-order (AdamW, backprop) baseline on the same objective.

Batches are a pure function of (data seed, step) — see :func:`batch_indices` —
so a resumed run sees exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import Diverged
from .rng import generator, step_seed
from .types import Example


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of step ``step``'s batch: consecutive slices of per-epoch
    permutations of ``range(n)``, each seeded by (seed, epoch)."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=generator(step_seed(seed ^ 0xDA7A, epoch)))
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset:offset + take].tolist())
        pos += take
    return out


@dataclass
class EvalResult:
    """Mean loss and accuracy over a split, and the per-example predictions
    (candidate index) and gold labels in the split's order."""

    loss: float
    accuracy: float
    n: int
    predictions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


@torch.inference_mode()
def evaluate(scorer, examples: Sequence[Example], batch_size: int = 32) -> EvalResult:
    """Mean CE loss and accuracy (argmax of candidate scores) over ``examples``."""
    was_training = scorer.model.training
    scorer.model.eval()
    total, correct = 0.0, 0
    preds: list[int] = []
    for i in range(0, len(examples), batch_size):
        batch = list(examples[i:i + batch_size])
        scores = scorer.scores(batch)
        labels = torch.tensor([e.label for e in batch], device=scores.device)
        total += float(torch.nn.functional.cross_entropy(scores.float(), labels, reduction="sum"))
        pred = scores.argmax(-1)
        correct += int((pred == labels).sum())
        preds.extend(pred.tolist())
    scorer.model.train(was_training)
    n = max(len(examples), 1)
    return EvalResult(total / n, correct / n, len(examples), preds, [e.label for e in examples])


def lr_lambda(schedule: str, steps: int) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda t: 1.0
    if schedule == "linear":
        return lambda t: max(0.0, 1.0 - t / max(steps, 1))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose constant or linear")


class ZOStepper:
    """One ZO step per batch: the closure is the scorer's loss, forward only."""

    kind = "zo"

    def __init__(self, optimizer, scorer):
        self.opt, self.scorer = optimizer, scorer

    def __call__(self, batch: list[Example]) -> dict[str, float]:
        calls = 0

        def closure():
            nonlocal calls
            calls += 1
            return self.scorer.loss(batch)

        with torch.inference_mode():
            self.opt.step(closure)
        rec = self.opt.last_record
        out = {"train_loss": rec.losses[0], "forwards": calls * self.scorer.forward_passes_per_call,
               "scalars": tuple(rec.losses) + tuple(rec.grad)}
        if rec.grad:
            out["projected_grad"] = rec.grad[0]
        for k, v in rec.extra.items():
            if isinstance(v, (int, float)):
                out[k] = v
        return out


class FOStepper:
    """First-order baseline: backprop + AdamW on the same objective."""

    kind = "fo"

    def __init__(self, optimizer, scorer):
        self.opt, self.scorer = optimizer, scorer

    def __call__(self, batch):
        self.scorer.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.scorer.loss(batch)
        loss.backward()
        self.opt.step()
        self.scorer.model.eval()
        # a backward costs about two forwards; counted separately by callers
        return {"train_loss": float(loss.detach()), "forwards": self.scorer.forward_passes_per_call,
                "backwards": 1}


FINITE_KEYS = ("train_loss", "projected_grad")  # a step output that must be finite, else the run diverged
WEIGHT_BLOWUP = 1e3  # trained weights whose largest |value| grew past this × max(their start's, 1) have diverged


def max_abs_weight(model) -> float:
    """The largest |value| over the model's trainable parameters (NaN/inf when some value is not finite)."""
    best = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.numel():
                lo, hi = torch.aminmax(p.detach())
                m = max(-float(lo), float(hi))
                if not math.isfinite(m):
                    return m
                best = max(best, m)
    return best


@dataclass
class History:
    train: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_dev_accuracy: float = -1.0
    best_dev_loss: float = math.inf
    forwards: int = 0
    steps_done: int = 0
    wall_s: float = 0.0


def train(
    stepper,
    scorer,
    train_set: Sequence[Example],
    dev_set: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    data_seed: int,
    eval_every: int,
    scheduler=None,
    start_step: int = 0,
    history: History | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    on_eval: Callable[[int, dict, bool], None] | None = None,
    eval_batch_size: int = 32,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> History:
    """Run steps ``start_step..steps-1``; evaluate on dev every ``eval_every``
    steps and after the last; ``on_eval(step, metrics, is_best)`` lets the
    caller checkpoint and keep the best weights."""
    from tqdm.auto import tqdm

    h = history or History()
    t0 = time.perf_counter() - h.wall_s
    # Losses can stay finite while the weights blow up: a huge step can saturate the model so that every
    # candidate scores the same (loss log C, estimate exactly 0, as CurvZO at lr 1e8 did), and nothing non-finite
    # ever shows.  So the weights are checked at every evaluation (one pass over them, cheap next to the
    # evaluation) against their size when this segment started.
    model = getattr(scorer, "model", None)
    start_max = max_abs_weight(model) if callable(getattr(model, "parameters", None)) else math.nan
    checked = [start_step]  # the last step whose weights passed

    def check_weights(step: int):
        if not math.isfinite(start_max):
            return
        m = max_abs_weight(model)
        if not math.isfinite(m) or m > WEIGHT_BLOWUP * max(start_max, 1.0):
            raise Diverged(f"diverged at step {step}: the weights blew up after step {checked[0]} (largest |weight| "
                           f"{m:.3g}, {start_max:.3g} at step {start_step}) while the losses stayed finite", step)
        checked[0] = step

    def do_eval(step: int):
        check_weights(step)
        r = evaluate(scorer, dev_set, eval_batch_size)
        if not math.isfinite(r.loss):  # a NaN model's argmax still "predicts": it must never be selected
            raise Diverged(f"diverged at step {step}: dev loss is {r.loss}", step)
        is_best = (r.accuracy, -r.loss) > (h.best_dev_accuracy, -h.best_dev_loss)
        if is_best:
            h.best_step, h.best_dev_accuracy, h.best_dev_loss = step, r.accuracy, r.loss
        m = {"step": step, "dev_loss": r.loss, "dev_accuracy": r.accuracy, "forwards": h.forwards,
             "wall_s": time.perf_counter() - t0}
        h.evals.append(m)
        if on_eval:
            on_eval(step, m, is_best)
        return m

    if start_step == 0 and not h.evals and dev_set:
        do_eval(0)
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=stepper.kind, dynamic_ncols=True)
    try:
        for step in range(start_step, steps):
            idx = batch_indices(len(train_set), batch_size, data_seed, step)
            out = stepper([train_set[i] for i in idx])
            bad = {k: v for k, v in out.items() if isinstance(v, float) and k in FINITE_KEYS and not math.isfinite(v)}
            if bad or not all(math.isfinite(x) for x in out.get("scalars", ())):
                what = ", ".join(f"{k}={v}" for k, v in bad.items()) or f"losses/estimates {tuple(out['scalars'])}"
                raise Diverged(f"diverged at step {step + 1}: {what}", step + 1)
            if scheduler is not None:
                scheduler.step()
            h.forwards += int(out["forwards"])
            h.steps_done = step + 1
            h.wall_s = time.perf_counter() - t0  # a checkpoint written now carries the elapsed time to resume from
            h.train.append((step + 1, out["train_loss"]))
            if on_step:
                on_step(step + 1, out)
            bar.update(1)
            bar.set_postfix(loss=f"{out['train_loss']:.4f}", refresh=False)
            if dev_set and ((step + 1) % eval_every == 0 or step + 1 == steps):
                m = do_eval(step + 1)
                bar.set_postfix(loss=f"{out['train_loss']:.4f}", dev_acc=f"{m['dev_accuracy']:.3f}")
            if should_stop is not None and should_stop():
                break
    finally:
        bar.close()  # also on an exception, so its message starts a line of its own
    if not dev_set:  # no evaluation checked the weights
        check_weights(h.steps_done)
    h.wall_s = time.perf_counter() - t0
    return h


def reset_peak_memory(device: Any) -> None:
    """Start :func:`peak_memory_bytes` afresh on a CUDA device (a CPU process's max RSS cannot be reset)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory_bytes(device: Any = "cpu") -> int:
    """Peak memory of this process: CUDA max allocated on GPU, max RSS on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_mb(device: Any = "cpu") -> float:
    """:func:`peak_memory_bytes` in MiB, to 0.1 (what run summaries and MLflow record)."""
    return round(peak_memory_bytes(device) / 2**20, 1)
