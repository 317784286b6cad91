"""Randomness as an argument: step seeds, per-tensor streams and direction laws.

Every random direction in zoplatform is a pure function of ``(step seed, block
key)``: a block's stream comes from its own ``torch.Generator`` seeded with
:func:`block_seed`, never from the global RNG.  Keys are derived from parameter
*names*, so the direction a tensor receives does not depend on which other
tensors are trainable (frozen parameters and LoRA adapters are safe) nor on
their order.

Directions are generated chunk by chunk into a small scratch buffer (the
"seed trick" of MeZO, Malladi et al. 2023, arXiv 2305.17333, §2): memory stays
at inference level plus one chunk, and the same chunking always reproduces the
same numbers.

Direction laws (:data:`LAWS`):

``gaussian``   z ~ N(0, I) (the law of every paper; default).
``rademacher`` z ∈ {−1, +1}ⁿ uniformly, built from random *bytes* (8 signs per
               byte through a lookup table): same first two moments as the
               Gaussian (E z = 0, E zzᵀ = I), ~6× cheaper to generate on CPU.
``pool``       slices of one seeded Gaussian pool at random offsets: near-free
               to generate, but directions are *correlated* across blocks and
               steps (they reuse the same numbers).  An explicit speed lever.
"""
from __future__ import annotations

import hashlib
from functools import cache

import torch

MASK64 = (1 << 64) - 1
DEFAULT_CHUNK = 1 << 20  # elements per generated chunk (4 MiB of fp32 scratch)


def _splitmix64(x: int) -> int:
    """One round of SplitMix64: a bijective 64-bit mixer (Steele et al. 2014)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


@cache
def name_key(name: str) -> int:
    """Stable 64-bit key of a parameter name (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def step_seed(run_seed: int, step: int) -> int:
    """Seed of step ``step`` of a run: a function of (run seed, step) only, so a
    resumed run draws exactly the seeds the uninterrupted one would have."""
    return _splitmix64(_splitmix64(run_seed & MASK64) ^ (step & MASK64)) >> 1


def block_seed(seed: int, key: int, stream: int = 0) -> int:
    """Seed of one block's stream at one step (``stream`` separates independent
    draws of the same step, e.g. LOREN's K queries or a sampler's coin flips)."""
    return _splitmix64(_splitmix64(seed ^ key) ^ ((stream * 0x632BE59BD9B4E019) & MASK64)) >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh explicit generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


class DirectionLaw:
    """Fills a flat fp32 buffer with the next ``len(out)`` direction entries."""

    name = "base"

    def fill_(self, out: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Gaussian(DirectionLaw):
    name = "gaussian"

    def fill_(self, out, g):
        return out.normal_(generator=g)


class Rademacher(DirectionLaw):
    """±1 entries from random bytes: each byte gives 8 signs via a 256×8 table."""

    name = "rademacher"

    def __init__(self):
        self._tables: dict[torch.device, torch.Tensor] = {}

    def _table(self, device):
        if device not in self._tables:
            bits = torch.arange(256).unsqueeze(1).bitwise_right_shift(torch.arange(8)).bitwise_and(1)
            self._tables[device] = (bits.float() * 2 - 1).to(device)  # [256, 8] of ±1
        return self._tables[device]

    def fill_(self, out, g):
        n = out.numel()
        nbytes = (n + 7) // 8
        b = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g, device=out.device)
        if n % 8 == 0 and out.is_contiguous():  # straight into the buffer, no temporary
            torch.index_select(self._table(out.device), 0, b.int(), out=out.view(nbytes, 8))
            return out
        signs = torch.index_select(self._table(out.device), 0, b.int())  # [nbytes, 8]
        return out.copy_(signs.view(-1)[:n])


class NoisePool(DirectionLaw):
    """Slices of a fixed seeded N(0,1) pool at generator-drawn offsets.

    The pool is stored twice back to back so any window of ``size`` entries is
    contiguous.  Memory: 2·size fp32 per device (8 MiB at the default).
    """

    name = "pool"

    def __init__(self, size: int = DEFAULT_CHUNK, pool_seed: int = 0x5EED):
        self.size = size
        self.pool_seed = pool_seed
        self._pools: dict[torch.device, torch.Tensor] = {}

    def _pool(self, device):
        if device not in self._pools:
            base = torch.randn(self.size, generator=generator(self.pool_seed))
            self._pools[device] = torch.cat([base, base]).to(device)
        return self._pools[device]

    def fill_(self, out, g):
        n = out.numel()
        if n > self.size:
            raise ValueError(f"pool chunk {n} exceeds pool size {self.size}")
        off = int(torch.randint(0, self.size, (1,), generator=g, device=g.device).item())
        return out.copy_(self._pool(out.device)[off : off + n])


LAWS = {"gaussian": Gaussian, "rademacher": Rademacher, "pool": NoisePool}


def make_law(name: str) -> DirectionLaw:
    if name not in LAWS:
        from .errors import ConfigError

        raise ConfigError(f"unknown direction law {name!r}; choose one of: {', '.join(sorted(LAWS))}")
    return LAWS[name]()
