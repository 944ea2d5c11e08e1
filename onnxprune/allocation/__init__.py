"""How many channels each group loses."""
from .uniform import check_ratio, kept_count, uniform_plan

__all__ = ["check_ratio", "kept_count", "uniform_plan"]
