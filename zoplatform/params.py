"""Trainable blocks and the one in-place primitive every ZO method is built on.

A *block* is one trainable parameter tensor (the unit of CurvZO's sampling and
of ZO Fine-tuner's policy).  :func:`blocks_from_named` selects them; the
no-decay set is explicit: biases and the weights of normalisation modules
(found by the module's type — :func:`is_norm_module` — not by a parameter-name
substring: MeZO's substring rule decays LLaMA's ``model.norm``), plus any names
the user adds.

:func:`axpy_` is the only place parameters change:

    θ_b ← β_b · θ_b + α_b · s_b · (m_b ⊙ z_b(seed))

with z_b regenerated chunk by chunk from ``(seed, key_b)``.  A perturbation is
(β=1, α=±ε); MeZO's restore-plus-update is a single call (β = 1 − η·wd,
α = ε·β − η·g), which is how a step needs 3 random passes instead of 4.
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


# A mask rule maps (θ chunk, flat offset of the chunk) -> 0/1 mask of the same
# shape, or None for dense; used by Sparse MeZO.
MaskRule = Callable[[torch.Tensor, int], torch.Tensor]


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


@torch.no_grad()
def axpy_(
    blocks: Sequence[Block],
    seed: int,
    law: DirectionLaw | Sequence[DirectionLaw],
    scratch: Scratch,
    alpha: float | Sequence[float],
    beta: float | Sequence[float] = 1.0,
    scale: Sequence[float] | None = None,
    mask: MaskRule | None = None,
    stream: int = 0,
) -> None:
    """In place, for every block b: θ_b ← β_b·θ_b + α_b·s_b·(m_b ⊙ z_b).

    ``alpha``/``beta`` are scalars or one value per block; ``law`` one law or one
    per block (e.g. a masked or norm-measuring wrapper); ``scale`` (s_b) is an
    optional per-block direction scale (CurvZO's 1/π, ZO Fine-tuner's c·σ_b);
    ``mask`` an optional rule giving m_b from the current θ chunk.  All
    coefficients are Python floats (fp64) applied by one fused ``add_``.
    Blocks run on :func:`get_threads` threads (:func:`for_blocks`).  With a
    master copy (mixed precision) θ is the fp32 master and the low-precision
    parameter is rewritten from it in the same pass.
    """
    n = len(blocks)
    alphas, betas, laws = _per_block(alpha, n), _per_block(beta, n), _per_block(law, n)

    def one(i: int) -> None:
        block = blocks[i]
        a = alphas[i] * (1.0 if scale is None else scale[i])
        b = betas[i]
        work = block.param.data.view(-1) if block.master is not None else None
        for start, theta, z in direction_chunks(block, seed, laws[i], scratch, stream):
            if mask is not None:
                z.mul_(mask(theta, start))
            if b != 1.0:
                theta.mul_(b)
            if a != 0.0:
                if theta.dtype == torch.float32:
                    theta.add_(z, alpha=a)
                else:  # bf16/fp16 weights: z generated in fp32, cast once per chunk
                    theta.add_(z.to(theta.dtype), alpha=a)
            if work is not None:
                work[start:start + theta.numel()].copy_(theta)

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

    def first(i: int) -> None:
        block = blocks[i]
        a = eps * (1.0 if scale is None else scale[i])
        if block.master is None:
            axpy_([block], seed, firsts[i], scratch, a, stream=stream)
            return
        work = block.param.data.view(-1)
        for start, theta, z in direction_chunks(block, seed, firsts[i], scratch, stream):
            theta.add_(z, alpha=-a)                       # master: θ − εu
            work[start:start + theta.numel()].copy_(torch.add(theta, z, alpha=2.0 * a, out=z))  # low(θ + εu)

    for_blocks(blocks, first)
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
    if plain:
        axpy_(plain, seed, law, scratch, eps, stream=stream)
    if low:
        def write(i: int) -> None:
            block = low[i]
            work = block.param.data.view(-1)
            for start, theta, z in direction_chunks(block, seed, law, scratch, stream):
                work[start:start + theta.numel()].copy_(torch.add(theta, z, alpha=eps, out=z))

        for_blocks(low, write)
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
        todo[i].param.data.copy_(todo[i].master)

    for_blocks(todo, one)


def snapshot(blocks: Sequence[Block]) -> list[torch.Tensor]:
    """Copies of the blocks' tensors (their masters in a mixed-precision mode; tests and replay checks)."""
    return [value(b).detach().clone() for b in blocks]
