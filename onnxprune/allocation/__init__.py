"""How many channels each group loses."""
from .feasible import emptied, restore_emptied
from .uniform import check_ratio, kept_count, uniform_plan

__all__ = ["emptied", "restore_emptied", "check_ratio", "kept_count", "uniform_plan"]
