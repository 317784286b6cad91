"""The docstring example every method carries: it converges on a quadratic.

``mezo.py`` spells the loop out (the pattern a user writes); the other methods' doctests call
:func:`quadratic_loss_after` with their own options, so the example is one line per method.
"""
from __future__ import annotations


def quadratic_loss_after(name: str, steps: int = 200, shape: tuple[int, ...] = (10,), blocks: int = 1,
                         **options) -> float:
    """Σ_b ‖x_b‖² after ``steps`` steps of method ``name`` (``options``: its hyperparameters) from x_b = 1,
    over ``blocks`` tensors of ``shape`` (named ``x``, or ``x0``, ``x1``, ... when more than one)."""
    import torch

    from zoplatform import optimizer

    xs = [torch.nn.Parameter(torch.ones(shape)) for _ in range(blocks)]
    names = ["x"] if blocks == 1 else [f"x{i}" for i in range(blocks)]
    opt = optimizer(name, list(zip(names, xs)), **options)

    def loss():
        return sum((x ** 2).sum() for x in xs)

    for _ in range(steps):
        opt.step(loss)
    return float(loss())
