"""Trainable blocks and the one in-place primitive every ZO method is built on.

A *block* is one trainable parameter tensor (the unit of CurvZO's sampling and
of ZO Fine-tuner's policy).  :func:`blocks_from_named` selects them; the
no-decay set is explicit: biases and the weights of normalisation modules
(found by module type, not by a name substring — MeZO's substring rule decays
LLaMA's ``model.norm``), plus any names the user adds.

:func:`axpy_` is the only place parameters change:

    θ_b ← β_b · θ_b + α_b · s_b · (m_b ⊙ z_b(seed))

with z_b regenerated chunk by chunk from ``(seed, key_b)``.  A perturbation is
(β=1, α=±ε); MeZO's restore-plus-update is a single call (β = 1 − η·wd,
α = ε·β − η·g), which is how a step needs 3 random passes instead of 4.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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

    @property
    def numel(self) -> int:
        return self.param.numel()


def no_decay_names(model: torch.nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Names of parameters exempt from weight decay: every bias, every
    parameter of a normalisation module (class name containing ``Norm``), and
    ``extra``."""
    names = set(extra)
    for mod_name, mod in model.named_modules():
        is_norm = "norm" in type(mod).__name__.lower()
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
    """Per-device fp32 scratch buffer for generated chunks (one chunk in size)."""

    def __init__(self, chunk: int = DEFAULT_CHUNK):
        self.chunk = chunk
        self._bufs: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device, n: int) -> torch.Tensor:
        buf = self._bufs.get(device)
        if buf is None:
            # a normal tensor even when first needed under inference_mode, so it
            # stays usable in place outside it (e.g. a step under no_grad later)
            with torch.inference_mode(False):
                buf = self._bufs[device] = torch.empty(self.chunk, dtype=torch.float32, device=device)
        return buf[:n]


def direction_chunks(block: Block, seed: int, law: DirectionLaw, scratch: Scratch, stream: int = 0):
    """Yield ``(flat θ view chunk, z chunk)`` pairs of one block's direction.

    The generator is created per block per call, so the direction depends only
    on (seed, block key, stream) — not on what ran before.
    """
    p = block.param.data
    flat = p.view(-1)  # parameters are contiguous (HF/peft create them so)
    g = generator(block_seed(seed, block.key, stream), p.device)
    for start in range(0, flat.numel(), scratch.chunk):
        n = min(scratch.chunk, flat.numel() - start)
        z = law.fill_(scratch.get(p.device, n), g)
        yield start, flat[start : start + n], z


@torch.no_grad()
def axpy_(
    blocks: Sequence[Block],
    seed: int,
    law: DirectionLaw,
    scratch: Scratch,
    alpha: float | Sequence[float],
    beta: float | Sequence[float] = 1.0,
    scale: Sequence[float] | None = None,
    mask: MaskRule | None = None,
    stream: int = 0,
) -> None:
    """In place, for every block b: θ_b ← β_b·θ_b + α_b·s_b·(m_b ⊙ z_b).

    ``alpha``/``beta`` are scalars or one value per block; ``scale`` (s_b) is an
    optional per-block direction scale (CurvZO's 1/π, ZO Fine-tuner's c·σ_b);
    ``mask`` an optional rule giving m_b from the current θ chunk.  All
    coefficients are Python floats (fp64) applied by one fused ``add_``.
    """
    n = len(blocks)
    alphas = [alpha] * n if isinstance(alpha, (int, float)) else list(alpha)
    betas = [beta] * n if isinstance(beta, (int, float)) else list(beta)
    for i, block in enumerate(blocks):
        a = alphas[i] * (1.0 if scale is None else scale[i])
        b = betas[i]
        for start, theta, z in direction_chunks(block, seed, law, scratch, stream):
            if mask is not None:
                z.mul_(mask(theta, start))
            if b != 1.0:
                theta.mul_(b)
            if a != 0.0:
                if theta.dtype == torch.float32:
                    theta.add_(z, alpha=a)
                else:  # bf16/fp16 weights: z generated in fp32, cast once per chunk
                    theta.add_(z.to(theta.dtype), alpha=a)


def snapshot(blocks: Sequence[Block]) -> list[torch.Tensor]:
    """Copies of the blocks' tensors (tests and replay checks only)."""
    return [b.param.detach().clone() for b in blocks]
