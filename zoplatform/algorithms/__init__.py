"""One composition file per method; importing this package registers them."""
from ..registry import register
from .base import ZOMethod
from .curvzo import CurvZO, CurvZOConfig
from .fzoo import FZOO, FZOOConfig
from .loren import LOREN, LORENConfig
from .mezo import MeZO, MeZOConfig
from .sparse_mezo import SparseMeZO, SparseMeZOConfig
from .zo_finetuner import ZOFinetuner, ZOFinetunerConfig

register(MeZO)
register(SparseMeZO)
register(CurvZO)
register(LOREN)
register(ZOFinetuner)
register(FZOO)

__all__ = [
    "FZOO",
    "LOREN",
    "CurvZO",
    "CurvZOConfig",
    "FZOOConfig",
    "LORENConfig",
    "MeZO",
    "MeZOConfig",
    "SparseMeZO",
    "SparseMeZOConfig",
    "ZOFinetuner",
    "ZOFinetunerConfig",
    "ZOMethod",
]
