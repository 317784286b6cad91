"""Trainable blocks and the one in-place primitive every ZO method is built on.

A *block* is one trainable parameter tensor (the unit of CurvZO's sampling and
of ZO Fine-tuner's policy).  :func:`blocks_from_named` selects them; the
no-decay set is explicit: biases and the weights of normalisation modules
(found by the module's type — :func:`is_norm_module` — not by a parameter-name
substring: MeZO's substring rule decays LLaMA's ``model.norm``), plus any names
the user adds.

Parameters change in one place, :func:`_update_`:

    θ ← β·θ + α·d,   then (mixed precision) the working copy ← low(θ + ω·d)

on a tensor θ that is a block's parameter or, in a mixed-precision mode, its
fp32 master.  Everything else reaches it through three public entry points:

* :func:`axpy_` adds a seeded direction, θ_b ← β_b·θ_b + α_b·s_b·d_b with
  d_b = z_b(seed) (or a method's ``transform`` of it: a mask, LOREN's v_k, a
  momentum chunk) regenerated chunk by chunk from ``(seed, key_b)``.  A
  perturbation is (β=1, α=±ε); MeZO's restore-plus-update is a single call
  (β = 1 − η·wd, α = ε·β − η·g), which is how a step needs 3 random passes
  instead of 4.  :func:`two_point_` and :func:`one_sided_` are built on it.
* :func:`add_tensor_` adds a given tensor, θ_b ← β_b·θ_b + α_b·tile(t_b)
  (LOREN's rank-1 term and momentum step).
* :func:`sync_` rewrites working copies from their masters and :func:`load_`
  sets θ from a checkpoint.

``tests/test_precision.py::test_every_parameter_write_goes_through_update_``
checks the claim for every method and precision mode.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .rng import DEFAULT_CHUNK, DirectionLaw, block_seed, generator, name_key


@dataclass(frozen=True)
class Block:
    """One trainable tensor: its name, the tensor, whether it is decayed, and
    the 64-bit key its random stream is derived from."""

    name: str
    param: torch.Tensor
    decay: bool
    key: int
    master: torch.Tensor | None = None  # fp32 master copy in a mixed-precision mode (param: the working copy)

    @property
    def numel(self) -> int:
        return self.param.numel()


_TORCH_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.LocalResponseNorm,
                torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm)


def is_norm_module(mod: torch.nn.Module) -> bool:
    """A normalisation module: one of torch's norm classes, or a class whose *type* name ends in
    ``Norm`` (transformers' ``LlamaRMSNorm``, ``T5LayerNorm``... are plain ``nn.Module`` subclasses,
    so their type name is the only mark they carry).  Never a parameter-name substring."""
    return isinstance(mod, _TORCH_NORMS) or type(mod).__name__.lower().endswith("norm")


def no_decay_names(model: torch.nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Names of parameters exempt from weight decay: every bias, every
    parameter of a normalisation module (:func:`is_norm_module`), and ``extra``."""
    names = set(extra)
    for mod_name, mod in model.named_modules():
        is_norm = is_norm_module(mod)
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if is_norm or p_name == "bias" or p_name.endswith("_bias"):
                names.add(full)
    return names


def trainable_named(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The trainable (``requires_grad``) tensors, de-duplicated (tied weights
    appear once, under their first name), in the given order."""
    seen: set[int] = set()
    out = []
    for name, p in named:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def blocks_from_named(named: Iterable[tuple[str, torch.Tensor]], no_decay: Iterable[str] = ()) -> list[Block]:
    """Blocks of the trainable tensors (:func:`trainable_named`), in a stable order."""
    skip = set(no_decay)
    return [Block(name, p, name not in skip, name_key(name)) for name, p in trainable_named(named)]


def model_blocks(model: torch.nn.Module, extra_no_decay: Iterable[str] = ()) -> list[Block]:
    """Trainable blocks of a model with its explicit no-decay set."""
    return blocks_from_named(model.named_parameters(), no_decay_names(model, extra_no_decay))


# A chunk transform maps (flat offset of the chunk, θ chunk, z chunk) -> the tensor d that
# :func:`axpy_` adds in place of z (a mask m ⊙ z, LOREN's v_k, a momentum chunk built from it).
# It runs before the chunk is written, so the θ chunk it sees is θ as the pass found it.
Transform = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class Scratch:
    """fp32 scratch buffers for generated chunks: one chunk per (device, thread),
    so blocks can be generated on several threads at once."""

    def __init__(self, chunk: int = DEFAULT_CHUNK):
        self.chunk = chunk
        self._bufs: dict[tuple[torch.device, int], torch.Tensor] = {}

    def get(self, device: torch.device, n: int) -> torch.Tensor:
        key = (torch.device(device), threading.get_ident())
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < self.chunk:
            # a normal tensor even when first needed under inference_mode, so it
            # stays usable in place outside it (e.g. a step under no_grad later)
            with torch.inference_mode(False):
                buf = self._bufs[key] = torch.empty(self.chunk, dtype=torch.float32, device=device)
        return buf[:n]


# --------------------------------------------------------------------------
# parallel execution over blocks
# --------------------------------------------------------------------------
_THREADS: int | None = None  # None: follow torch.get_num_threads()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def set_threads(n: int | None) -> None:
    """Threads that generate directions (one block per thread at a time); ``None``
    follows ``torch.get_num_threads()``.  Results never depend on it: each block's
    direction comes from its own generator (see :func:`direction_chunks`)."""
    global _THREADS
    if n is not None and int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _THREADS = None if n is None else int(n)


def get_threads() -> int:
    return _THREADS if _THREADS is not None else max(1, torch.get_num_threads())


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != n:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(n, thread_name_prefix="zo-dirs"), n
        return _POOL


def for_blocks(blocks: Sequence[Block], fn: Callable[[int], None], threads: int | None = None) -> None:
    """Run ``fn(i)`` for every block index, spread over ``threads`` threads.

    Blocks are independent (each has its own random stream and its own tensor),
    so the result is bit-identical to the serial loop whatever the thread count
    or schedule.  Work is balanced by numel (longest first onto the least
    loaded thread).  Direction generation (``normal_``, ``randint``) is serial
    inside torch, which is why threads over blocks pay; the chunks of one block
    stay on one thread because its stream is sequential.  A CUDA device needs no
    threads (kernels are asynchronous), so blocks on CUDA run serially.
    """
    n = len(blocks)
    t = min(get_threads() if threads is None else threads, n)
    if t <= 1 or any(b.param.device.type != "cpu" for b in blocks):
        for i in range(n):
            fn(i)
        return
    loads, groups = [0] * t, [[] for _ in range(t)]
    for i in sorted(range(n), key=lambda i: -blocks[i].numel):
        k = loads.index(min(loads))
        groups[k].append(i)
        loads[k] += blocks[i].numel

    mode = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def run_in_mode(group):  # worker threads do not inherit the caller's autograd modes
        with torch.inference_mode(mode), torch.set_grad_enabled(grad and not mode):
            for i in group:
                fn(i)

    futures = [_pool(t).submit(run_in_mode, g) for g in groups if g]
    for f in futures:
        f.result()  # re-raises a worker's exception here


def value(block: Block) -> torch.Tensor:
    """The tensor a method's arithmetic acts on: the fp32 master copy in a mixed-precision
    mode, else the parameter itself."""
    return block.master if block.master is not None else block.param.data


def direction_chunks(block: Block, seed: int, law: DirectionLaw, scratch: Scratch, stream: int = 0):
    """Yield ``(offset, flat θ chunk, z chunk)`` of one block's direction (θ: the
    master copy in a mixed-precision mode, see :func:`value`).

    The generator is created per block per call, so the direction depends only
    on (seed, block key, stream) — not on what ran before nor on the thread.
    """
    p = value(block)
    flat = p.view(-1)  # parameters are contiguous (HF/peft create them so)
    g = generator(block_seed(seed, block.key, stream), p.device)
    for start in range(0, flat.numel(), scratch.chunk):
        n = min(scratch.chunk, flat.numel() - start)
        z = law.fill_(scratch.get(p.device, n), g)
        yield start, flat[start : start + n], z


def _per_block(x, n: int) -> list:
    return [x] * n if x is None or isinstance(x, (int, float, DirectionLaw)) else list(x)


def _update_(theta: torch.Tensor, d: torch.Tensor | None, alpha: float, beta: float = 1.0,
             work: torch.Tensor | None = None, work_alpha: float = 0.0) -> None:
    """The one write of parameter values: in place, θ ← β·θ + α·d, then ``work`` ← low(θ + ω·d).

    ``theta``: (a chunk or view of) a block's parameter or its fp32 master; ``d`` is cast to θ's
    dtype when they differ (bf16/fp16 weights: directions are generated in fp32).  β = 0 assigns
    (θ ← α·d, no multiply, so a non-finite θ does not leak).  ``work``: the matching part of the
    low-precision working copy in a mixed-precision mode, rewritten from θ (ω = ``work_alpha`` = 0:
    a rounding of θ; else of θ + ω·d, computed in ``d``'s storage, which it overwrites).
    Coefficients are Python floats (fp64); a zero α and a unit β skip their pass."""
    if beta == 0.0:
        theta.copy_(d)
        if alpha != 1.0:
            theta.mul_(alpha)
    else:
        if beta != 1.0:
            theta.mul_(beta)
        if alpha != 0.0:
            theta.add_(d if d.dtype == theta.dtype else d.to(theta.dtype), alpha=alpha)
    if work is not None:
        work.copy_(theta if work_alpha == 0.0 else torch.add(theta, d, alpha=work_alpha, out=d))


@torch.no_grad()
def axpy_(
    blocks: Sequence[Block],
    seed: int,
    law: DirectionLaw | Sequence[DirectionLaw],
    scratch: Scratch,
    alpha: float | Sequence[float],
    beta: float | Sequence[float] = 1.0,
    scale: Sequence[float] | None = None,
    transform: Transform | None = None,
    stream: int = 0,
    work_alpha: float | None = 0.0,
) -> None:
    """In place, for every block b: θ_b ← β_b·θ_b + α_b·s_b·d_b, d_b = z_b(seed, stream).

    ``alpha``/``beta`` are scalars or one value per block; ``law`` one law or one
    per block (e.g. a masked or norm-measuring wrapper); ``scale`` (s_b) is an
    optional per-block direction scale (CurvZO's 1/π, ZO Fine-tuner's c·σ_b);
    ``transform`` an optional map of each z chunk to the d added in its place
    (:data:`Transform`).  All coefficients are Python floats (fp64) applied by
    one fused ``add_`` (:func:`_update_`).  Blocks run on :func:`get_threads`
    threads (:func:`for_blocks`).  With a master copy (mixed precision) θ is
    the fp32 master and the working copy is rewritten in the same pass as
    low(θ + ω·s_b·d_b), ω = ``work_alpha`` (0: the new θ rounded); ``None``
    leaves it for the caller's :func:`sync_` (a method with several passes).
    """
    n = len(blocks)
    alphas, betas, laws = _per_block(alpha, n), _per_block(beta, n), _per_block(law, n)

    def one(i: int) -> None:
        block = blocks[i]
        s = 1.0 if scale is None else scale[i]
        a, b = alphas[i] * s, betas[i]
        work = block.param.data.view(-1) if block.master is not None and work_alpha is not None else None
        wa = 0.0 if work is None else work_alpha * s
        for start, theta, z in direction_chunks(block, seed, laws[i], scratch, stream):
            d = z if transform is None else transform(start, theta, z)
            _update_(theta, d, a, b, None if work is None else work[start:start + theta.numel()], wa)

    for_blocks(blocks, one)


@torch.no_grad()
def add_tensor_(blocks: Sequence[Block], tensors: Sequence[torch.Tensor | None], alpha: float | Sequence[float],
                beta: float | Sequence[float] = 1.0, sync: bool = True) -> None:
    """In place, for every block b: θ_b ← β_b·θ_b + α_b·tile(t_b).

    ``t_b`` has θ_b's size, or n entries with n dividing θ_b's size: it is then added to every row
    of θ_b viewed as (−1, n) (LOREN's â = tile(a)); ``None`` only scales (θ_b ← β_b·θ_b).  θ is the
    master in a mixed-precision mode; ``sync`` rewrites the working copy from it (``False``: the
    caller's :func:`sync_` does, after its other passes)."""
    n = len(blocks)
    alphas, betas = _per_block(alpha, n), _per_block(beta, n)

    def one(i: int) -> None:
        block, t = blocks[i], tensors[i]
        theta = value(block)
        work = block.param.data if block.master is not None and sync else None
        if t is not None and t.numel() != theta.numel():
            theta = theta.view(-1, t.numel())
            work = None if work is None else work.view(-1, t.numel())
        _update_(theta, t, alphas[i], betas[i], work)

    for_blocks(blocks, one)


@torch.no_grad()
def two_point_(blocks: Sequence[Block], seed: int, law, scratch: Scratch, closure: Callable[[], object],
               eps: float, scale: Sequence[float] | None = None, stream: int = 0,
               first_law=None) -> tuple[object, object]:
    """SPSA's two evaluations on one batch, L(θ + εu) then L(θ − εu), u_b = s_b·z_b.

    Leaves θ at θ − εu, so the caller fuses the restore (+εu) with its update
    (one pass over the directions saved).  fp32: the passes +εu and −2εu.
    Mixed precision: the first pass writes the working copy as low(θ + εu) and
    moves the master to θ − εu in one generation; the second evaluation only
    needs the working copy rewritten from the master (a copy, no random numbers),
    so a step generates its directions twice instead of three times.
    ``first_law`` (default ``law``): the laws of the first pass, one or one per block.
    """
    n = len(blocks)
    laws = _per_block(law, n)
    firsts = laws if first_law is None else _per_block(first_law, n)
    mixed = [b.master is not None for b in blocks]
    if not any(mixed):
        axpy_(blocks, seed, firsts, scratch, eps, scale=scale, stream=stream)
        loss_plus = closure()
        axpy_(blocks, seed, laws, scratch, -2.0 * eps, scale=scale, stream=stream)
        return loss_plus, closure()

    # one pass: plain blocks θ + εu; mixed blocks master θ − εu and working copy low(master + 2εu)
    axpy_(blocks, seed, firsts, scratch, [-eps if m else eps for m in mixed], scale=scale, stream=stream,
          work_alpha=2.0 * eps)
    loss_plus = closure()
    plain = [b for b, m in zip(blocks, mixed) if not m]
    if plain:
        axpy_(plain, seed, [lw for lw, m in zip(laws, mixed) if not m], scratch, -2.0 * eps,
              scale=None if scale is None else [s for s, m in zip(scale, mixed) if not m], stream=stream)
    sync_([b for b, m in zip(blocks, mixed) if m])
    return loss_plus, closure()


@torch.no_grad()
def one_sided_(blocks: Sequence[Block], seed: int, law, scratch: Scratch, closure: Callable[[], object], eps: float,
               stream: int = 0, restore: bool = True) -> tuple[object, list[float]]:
    """L(θ + εu) on one batch, u = z(seed, stream); returns (loss, pending) where ``pending[b]`` is
    the ε still added to block b's θ (0 once restored).

    fp32: +εu, evaluate, and −εu when ``restore`` (else pending = ε, for the caller to fuse into
    its update).  Mixed precision: the working copy is written as low(θ + εu) and the master is
    never moved, so nothing is pending and a restore is a copy (:func:`sync_`), not a pass over
    the directions."""
    mixed = [b.master is not None for b in blocks]
    plain = [b for b, m in zip(blocks, mixed) if not m]
    low = [b for b, m in zip(blocks, mixed) if m]
    # plain blocks θ + εu; mixed blocks: master kept, working copy low(θ + εu)
    axpy_(blocks, seed, law, scratch, [0.0 if m else eps for m in mixed], stream=stream, work_alpha=eps)
    loss = closure()
    if restore:
        if plain:
            axpy_(plain, seed, law, scratch, -eps, stream=stream)
        sync_(low)
    return loss, [0.0 if (m or restore) else eps for m in mixed]


@torch.no_grad()
def sync_(blocks: Sequence[Block]) -> None:
    """Rewrite the low-precision working copies from their fp32 masters (round to nearest)."""
    todo = [b for b in blocks if b.master is not None]

    def one(i: int) -> None:
        _update_(todo[i].master, None, 0.0, work=todo[i].param.data)

    for_blocks(todo, one)


@torch.no_grad()
def load_(blocks: Sequence[Block], tensors: Sequence[torch.Tensor]) -> None:
    """Set every block's θ (its master in a mixed-precision mode, and the working copy from it)
    to the given tensor (a checkpoint's)."""
    def one(i: int) -> None:
        b = blocks[i]
        _update_(value(b), tensors[i], 1.0, beta=0.0, work=None if b.master is None else b.param.data)

    for_blocks(blocks, one)


def snapshot(blocks: Sequence[Block]) -> list[torch.Tensor]:
    """Copies of the blocks' tensors (their masters in a mixed-precision mode; tests and replay checks)."""
    return [value(b).detach().clone() for b in blocks]
