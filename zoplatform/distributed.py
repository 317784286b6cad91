"""Data-parallel ZO: one run over several workers with only scalars on the wire.

A ZO step is cheap to distribute.  Every worker holds a replica of the model, draws the
same step seed, perturbs its replica identically, scores *its shard* of the batch, and the
workers all-reduce the shard's loss sum and example count (two fp64 numbers per forward
pass, 32 bytes per MeZO step).  Every replica then sees the exact global mean loss, applies
the same update and stays bit-identical to the others — no weights or gradients are ever
sent.  Evaluation is sharded the same way: each worker scores its shard of an evaluation
batch and the candidate scores are all-gathered (a few floats per example), so accuracy,
loss and predictions are computed from the same full score matrix on every rank.

:class:`ShardedScorer` wraps any scorer (``scores``/``loss``) with that behaviour; the loop,
the methods and the trajectory are unchanged, so resume, replay and ``zo eval`` work as for
a single process.  ``world == 1`` uses the same reduction (per-example losses summed in fp64,
divided by the count), so a 1-worker run and an N-worker run differ only by the forward's
rounding on differently-shaped shards.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .types import Example


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` workers."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The torch.distributed world if one is initialised, else a single worker."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: str = "cpu", timeout_s: float = 300.0) -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...):
    gloo on CPU, nccl on CUDA.  A worker that dies makes the others' next collective fail within
    ``timeout_s`` (gloo reports a closed connection at once), so the run fails instead of hanging."""
    import datetime

    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return world()
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Contiguous shard ``[lo, hi)`` of ``n`` items for ``rank``: sizes differ by at most one."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


class ShardedScorer:
    """A scorer whose ``loss`` and ``scores`` run on this worker's shard and are reduced across
    the world.  Attributes it does not define (``model``, ``forward_passes_per_call``...) are the
    wrapped scorer's."""

    def __init__(self, scorer, w: World | None = None, device: torch.device | str = "cpu"):
        self.inner, self.world = scorer, w or world()
        self._device = torch.device(device)  # where the collectives' buffers live (CUDA for nccl)
        self.bytes_reduced = 0  # bytes sent through all-reduce by this worker (the bench reads it)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _shard(self, examples: Sequence[Example]) -> Sequence[Example]:
        lo, hi = shard_bounds(len(examples), self.world.rank, self.world.size)
        return examples[lo:hi]

    def _shard_scores(self, examples: Sequence[Example], shard: Sequence[Example]) -> torch.Tensor:
        """The shard's scores, padded like the whole batch when the scorer can (so they equal the
        rows of a single-process ``scores(examples)`` bit for bit)."""
        if hasattr(self.inner, "pad_lengths"):
            lp, lc, passes = self.inner.pad_lengths(examples)
            out = self.inner.scores(shard, pad_to=(lp, lc))
            self.inner.forward_passes_per_call = passes  # the batch's cost, whatever this shard needed
            return out
        return self.inner.scores(shard)

    def loss_sum(self, examples: Sequence[Example]) -> tuple[float, int]:
        """(Σ per-example cross-entropy in fp64, count) over this worker's shard."""
        shard = self._shard(examples)
        if not shard:
            return 0.0, 0
        scores = self._shard_scores(examples, shard)
        labels = torch.tensor([ex.label for ex in shard], device=scores.device)
        ce = F.cross_entropy(scores.float(), labels, reduction="none")
        return float(ce.double().sum()), len(shard)

    def loss(self, examples: Sequence[Example]) -> torch.Tensor:
        """The exact global mean loss of ``examples`` (fp64 scalar), the same on every worker."""
        total, count = self.loss_sum(examples)
        if self.world.size > 1:
            import torch.distributed as dist

            buf = torch.tensor([total, float(count)], dtype=torch.float64, device=self._device)
            dist.all_reduce(buf)
            self.bytes_reduced += buf.numel() * buf.element_size()
            total, count = float(buf[0]), float(buf[1])
        return torch.tensor(total / count, dtype=torch.float64)

    def scores(self, examples: Sequence[Example]) -> torch.Tensor:
        """The candidate scores of all of ``examples``: each worker scores its shard, then all-gather."""
        if self.world.size == 1:
            return self.inner.scores(examples)
        import torch.distributed as dist

        shard = self._shard(examples)
        local = self._shard_scores(examples, shard).float() if shard else None
        width = local.shape[1] if local is not None else 0
        widths = [torch.zeros(1, dtype=torch.int64, device=self._device) for _ in range(self.world.size)]
        dist.all_gather(widths, torch.tensor([width], dtype=torch.int64, device=self._device))
        cols = int(max(int(w) for w in widths))
        rows = shard_bounds(len(examples), 0, self.world.size)[1]  # the largest shard
        padded = torch.full((rows, cols), float("-inf"), device=self._device)
        if local is not None:
            padded[:local.shape[0], :local.shape[1]] = local.to(self._device)
        parts = [torch.empty_like(padded) for _ in range(self.world.size)]
        dist.all_gather(parts, padded)
        out = []
        for r, part in enumerate(parts):
            lo, hi = shard_bounds(len(examples), r, self.world.size)
            out.append(part[: hi - lo])
        return torch.cat(out)[:, :cols]
