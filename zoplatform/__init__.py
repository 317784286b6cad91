"""zoplatform: zeroth-order (forward-only) fine-tuning of language models.

Flat public API::

    import zoplatform
    opt = zoplatform.optimizer("mezo", model.named_parameters(), lr=1e-6, eps=1e-3)
    loss = opt.step(closure)            # closure: forward only

    method = zoplatform.make("mezo", lr=1e-6)           # functional core
    state = method.init(blocks)
    state, record = method.step(state, blocks, closure, seed, lr)
"""
from . import algorithms as _algorithms  # noqa: F401 - registers the methods
from .algorithms import MeZO, ZOMethod
from .algorithms.state import State
from .errors import ConfigError, DataError, ZOError
from .optim import ZOOptimizer, optimizer
from .params import Block, blocks_from_named, model_blocks, no_decay_names
from .registry import REGISTRY, get_method, make, method_names, register
from .rng import step_seed
from .trajectory import Trajectory, replay
from .types import Example, Splits, StepRecord

__all__ = [
    "REGISTRY",
    "Block",
    "ConfigError",
    "DataError",
    "Example",
    "MeZO",
    "Splits",
    "State",
    "StepRecord",
    "Trajectory",
    "ZOError",
    "ZOMethod",
    "ZOOptimizer",
    "blocks_from_named",
    "get_method",
    "make",
    "method_names",
    "model_blocks",
    "no_decay_names",
    "optimizer",
    "register",
    "replay",
    "step_seed",
]
