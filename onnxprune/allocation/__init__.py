"""How many channels each group loses."""

from ..plan import emptied
from .feasible import restore_emptied
from .uniform import check_ratio, kept_count, uniform_plan

__all__ = ["emptied", "restore_emptied", "check_ratio", "kept_count", "uniform_plan"]
