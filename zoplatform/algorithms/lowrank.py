"""Low-rank directions for the subspace methods (LOZO, ZO-Muon): D = A·B on a matrix block, drawn chunk by chunk.

A block with ≥ 2 dimensions is viewed as an (m, n) matrix, m = its first dimension and n = numel / m (an
``nn.Linear`` weight: m = out, n = in).  :class:`FactoredLaw` is a direction law that writes the flat chunks of
A·B (A: m×r, B: r×n, both fp32) into the engine's scratch buffer, so the parameter passes — ``two_point``,
``one_sided``, ``restore_update``, mixed precision included — run unchanged through
:func:`~zoplatform.params.axpy_` while only the factors are random.  A chunk is computed from the rows it
covers, so the scratch memory stays one chunk plus two rows; the same chunking gives the same numbers in every
pass.
"""
from __future__ import annotations

import torch

from ..params import Block, value
from ..rng import DirectionLaw, block_seed, generator


def matrix_shape(block: Block) -> tuple[int, int] | None:
    """(m, n) of a block viewed as a matrix, or ``None`` for a 1-D (or 0-D) block."""
    p = block.param
    if p.dim() < 2:
        return None
    m = p.shape[0]
    return m, p.numel() // max(m, 1)


def gaussian(shape: tuple[int, ...], seed: int, block: Block, stream: int) -> torch.Tensor:
    """N(0, 1) fp32 entries of ``shape`` from (seed, block key, stream) on the block's device (never the global RNG)."""
    dev = block.param.device
    with torch.inference_mode(False):
        return torch.randn(shape, generator=generator(block_seed(seed, block.key, stream), dev),
                           dtype=torch.float32, device=dev)


class FactoredLaw(DirectionLaw):
    """The law of one matrix block in one pass: its direction is the flat A·B (A: m×r, B: r×n), chunk by chunk.

    The generator the engine passes is not used (the factors carry the randomness).  The position wraps at
    the block's end, so one object serves several complete passes."""

    name = "factored"

    def __init__(self, a: torch.Tensor, b: torch.Tensor, block: Block):
        self.a, self.b = a, b
        self.n = b.shape[1]
        self.numel = value(block).numel()
        self.pos = 0

    def fill_(self, out, g):
        k = out.numel()
        start, self.pos = self.pos, (self.pos + k) % self.numel
        r0, r1 = start // self.n, -(-(start + k) // self.n)
        rows = (self.a[r0:r1] @ self.b).view(-1)
        off = start - r0 * self.n
        return out.copy_(rows[off:off + k])
