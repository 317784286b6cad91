"""Precision modes of a ZO run: what the forward runs in and where updates accumulate.

=============  ==================  ====================================================
mode           forward (weights)   where the ZO arithmetic (perturb, update) runs
=============  ==================  ====================================================
``fp32``       fp32                the fp32 weights (default)
``bf16-mixed`` bf16                an fp32 master copy per trainable tensor; the bf16
                                   weights are a working copy rewritten from it
``fp16-mixed`` fp16                the same with an fp16 working copy (GPUs without bf16)
``bf16-true``  bf16                the bf16 weights themselves (inference memory, but
                                   MeZO-size updates are lost to rounding, see below)
``fp16-true``  fp16                the fp16 weights themselves (as MeZO's ``--load_float16``)
=============  ==================  ====================================================

Losses, projected gradients and every coefficient stay fp32/fp64 in every mode;
directions are generated in fp32 (:mod:`zoplatform.rng`), so a mode changes the
forward's rounding, never the random numbers.

Why a master copy.  A MeZO update moves a weight by η·g·z ≈ 1e-5·10·1 = 1e-4,
while bf16 resolves ≈ 2⁻⁸ ≈ 4e-3 relative, i.e. ≈ 2e-4 on a weight of 0.05: in
``bf16-true`` most updates round away (and the ±ε perturbations do not restore
exactly, a drift of the same size as the update).  ``bf16-mixed`` keeps θ in
fp32, so no update is lost, and runs the forward on bf16(θ ± εz).  It also
needs fewer passes over the directions than fp32: the first perturbation pass
writes the working copy as bf16(θ + εz) *and* moves the master to θ − εz, so the
second evaluation only needs bf16(θ − εz) = bf16(master), a copy without random
numbers (:func:`~zoplatform.params.two_point_`), and one-sided perturbations
restore by the same copy.  Memory: fp32 + bf16 weights = 1.5× fp32 inference's
weights.

Stochastic rounding of the update into bf16 weights (inference memory, no
master) was weighed and not kept: the update itself would be unbiased, but the
+ε/−2ε/+ε perturbation round trip in bf16 is not, and cannot be restored without
storing the rounding residue (a copy of the weights again) — its error is the
size of the update at every step.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError
from .params import Block

PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {
    "fp32": (torch.float32, False),
    "bf16-mixed": (torch.bfloat16, True),
    "fp16-mixed": (torch.float16, True),
    "bf16-true": (torch.bfloat16, False),
    "fp16-true": (torch.float16, False),
}
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16-true", "float16": "fp16-true"}


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ConfigError(f"precision={name!r} is not a precision mode; choose one of: {', '.join(PRECISIONS)}")
    return name


def compute_dtype(name: str) -> torch.dtype:
    """The dtype the forward runs in."""
    return PRECISIONS[check_precision(name)][0]


def is_mixed(name: str) -> bool:
    """Does the mode keep fp32 master copies of the trainable tensors?"""
    return PRECISIONS[check_precision(name)][1]


def load_dtype(name: str) -> str:
    """The dtype to load a model in: fp32 for the mixed modes (the masters are made from it)."""
    dt = torch.float32 if is_mixed(name) else compute_dtype(name)
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dt]


@torch.no_grad()
def with_masters(blocks: Sequence[Block], name: str) -> list[Block]:
    """For a mixed mode: an fp32 master copy of every block, and the block's parameter
    cast in place to the working dtype (the parameter object is kept, so the model and
    any tied weights see the cast).  Other modes: the blocks unchanged."""
    if not is_mixed(name):
        return list(blocks)
    dtype = compute_dtype(name)
    out = []
    for b in blocks:
        if b.master is not None:
            raise ValueError(f"block {b.name} already has a master copy")
        with torch.inference_mode(False):
            master = b.param.detach().to(torch.float32, copy=True).contiguous()
        b.param.data = b.param.data.to(dtype)
        out.append(Block(b.name, b.param, b.decay, b.key, master))
    return out


def cast_model_(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Cast the whole model (frozen weights, buffers) to the mode's forward dtype; in a mixed
    mode call it after :func:`with_masters` so the masters hold the fp32 weights."""
    dtype = compute_dtype(name)
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    return model
