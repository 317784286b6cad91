"""One composition file per method; importing this package registers them."""
from ..registry import register
from .base import ZOMethod, two_point
from .mezo import MeZO, MeZOConfig

register(MeZO)

__all__ = ["ZOMethod", "two_point", "MeZO", "MeZOConfig"]
