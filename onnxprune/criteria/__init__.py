"""Channel-importance criteria, one module per family, all in one registry."""

from . import activation, bn, geometry, norm, obs, taylor, thinet  # noqa: F401  (each module registers its criteria)
from .registry import CRITERIA, CriterionOptions, criterion, get_criterion, group_scores

__all__ = ["CRITERIA", "CriterionOptions", "criterion", "get_criterion", "group_scores"]
