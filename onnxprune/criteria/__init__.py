"""Channel-importance criteria, one module per family, all in one registry."""
from . import norm  # noqa: F401  (registers l1, l2, random)
from .registry import CRITERIA, criterion, get_criterion, group_scores

__all__ = ["CRITERIA", "criterion", "get_criterion", "group_scores"]
