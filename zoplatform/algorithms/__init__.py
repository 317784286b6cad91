"""One composition file per method; importing this package registers them."""
from ..registry import register
from .base import ZOMethod
from .curvzo import CurvZO, CurvZOConfig
from .fzoo import FZOO, FZOOConfig
from .hizoo import HiZOO, HiZOOConfig
from .loren import LOREN, LORENConfig
from .lozo import LOZO, LOZOConfig
from .mezo import MeZO, MeZOConfig
from .sparse_mezo import SparseMeZO, SparseMeZOConfig
from .zo_finetuner import ZOFinetuner, ZOFinetunerConfig
from .zo_muon import ZOMuon, ZOMuonConfig

register(MeZO)
register(SparseMeZO)
register(CurvZO)
register(LOREN)
register(ZOFinetuner)
register(FZOO)
register(HiZOO)
register(LOZO)
register(ZOMuon)

__all__ = [
    "FZOO",
    "LOREN",
    "CurvZO",
    "CurvZOConfig",
    "FZOOConfig",
    "HiZOO",
    "HiZOOConfig",
    "LORENConfig",
    "LOZO",
    "LOZOConfig",
    "MeZO",
    "MeZOConfig",
    "SparseMeZO",
    "SparseMeZOConfig",
    "ZOFinetuner",
    "ZOFinetunerConfig",
    "ZOMethod",
    "ZOMuon",
    "ZOMuonConfig",
]
