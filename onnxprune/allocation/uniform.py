"""Per-group allocation: each prunable group loses its own fraction of channels (the same one: uniform)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import OnnxPruneError
from ..groups import Analysis
from ..plan import PruningPlan
from .feasible import restore_emptied


def kept_count(channels: int, ratio: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels a group keeps: ceil((1-ratio)*C), rounded up to a multiple of ``round_to`` for
    hardware-friendly widths, at least ``min_channels``, at most C."""
    keep = math.ceil(round(channels * (1.0 - ratio), 6))
    if round_to > 1:
        keep = math.ceil(keep / round_to) * round_to
    return int(min(channels, max(keep, min_channels, 1)))


def check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise OnnxPruneError(f"--ratio must be in [0, 1), got {ratio}")


def check_rounding(round_to: int, min_channels: int) -> None:
    if round_to < 1 or min_channels < 1:
        raise OnnxPruneError("--round-to and --min-channels must be at least 1")


def plan_from_counts(analysis: Analysis, scores: dict[int, np.ndarray], n_remove: dict[int, int]) -> PruningPlan:
    """Remove the ``n_remove[g]`` lowest-scoring channels of each group; a group the criterion cannot rank
    (NaN scores) is left whole and listed in ``meta.unscored_groups``."""
    plan = PruningPlan()
    unscored = []
    for g in analysis.groups:
        n = n_remove.get(g.id, 0)
        if not g.prunable or n <= 0:
            continue
        if np.isnan(scores[g.id]).any():
            unscored.append(g.id)
            continue
        order = np.argsort(scores[g.id], kind="stable")  # least important first
        plan.remove[g.id] = sorted(int(c) for c in order[:n])
    if unscored:
        plan.meta["unscored_groups"] = unscored
    return restore_emptied(analysis, plan, scores)


def ratio_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    ratio_of: Callable[[int], float],
    round_to: int = 1,
    min_channels: int = 1,
) -> PruningPlan:
    check_rounding(round_to, min_channels)
    n_remove = {
        g.id: g.channels - kept_count(g.channels, ratio_of(g.id), round_to, min_channels)
        for g in analysis.groups
        if g.prunable
    }
    return plan_from_counts(analysis, scores, n_remove)


def uniform_plan(
    analysis: Analysis, scores: dict[int, np.ndarray], ratio: float, round_to: int = 1, min_channels: int = 1
) -> PruningPlan:
    check_ratio(ratio)
    return ratio_plan(analysis, scores, lambda _: ratio, round_to, min_channels)
