"""Uniform allocation: every prunable group loses the same fraction of its channels."""
from __future__ import annotations

import math

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


def uniform_plan(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float, round_to: int = 1,
                 min_channels: int = 1) -> PruningPlan:
    check_ratio(ratio)
    if round_to < 1 or min_channels < 1:
        raise OnnxPruneError("--round-to and --min-channels must be at least 1")
    plan = PruningPlan()
    unscored = []
    for g in analysis.groups:
        if not g.prunable:
            continue
        if np.isnan(scores[g.id]).any():  # the criterion cannot rank this group: leave it whole, say so
            unscored.append(g.id)
            continue
        n_remove = g.channels - kept_count(g.channels, ratio, round_to, min_channels)
        if n_remove <= 0:
            continue
        order = np.argsort(scores[g.id], kind="stable")  # least important first
        plan.remove[g.id] = sorted(int(c) for c in order[:n_remove])
    if unscored:
        plan.meta["unscored_groups"] = unscored
    return restore_emptied(analysis, plan, scores)
