"""Global ranking: one threshold over every prunable channel, after a per-group normalisation.

Raw scores are not comparable across layers (filter norms grow with fan-in, Taylor terms with depth),
so the ranking first normalises each group's scores: ``l2`` divides by the group's L2 norm (Molchanov et
al. 2017), ``max`` by its maximum, ``weak-layer`` applies the weak-layer penalty (range-normalised, times
nu for groups whose spread of scores is under half the mean spread), ``none`` keeps them.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OnnxPruneError
from ..groups import Analysis
from ..plan import PruningPlan
from .uniform import check_rounding, kept_count, plan_from_counts

NORMALISATIONS = ("none", "l2", "max", "weak-layer")


def weak_layer_scale(arrays: list[np.ndarray], nu: float = 0.9, theta: float = 1e-8) -> list[np.ndarray]:
    """Z = R / (max R - min R + theta), times ``nu`` where the spread of R is under half the mean spread."""
    spreads = np.array([a.std() for a in arrays]) if arrays else np.array([])
    threshold = 0.5 * spreads.mean() if len(spreads) else 0.0
    return [a / (a.max() - a.min() + theta) * (nu if s < threshold else 1.0) for a, s in zip(arrays, spreads)]


def normalise(scores: dict[int, np.ndarray], how: str, nu: float = 0.9) -> dict[int, np.ndarray]:
    if how not in NORMALISATIONS:
        raise OnnxPruneError(f"unknown normalisation '{how}'; choose from {', '.join(NORMALISATIONS)}")
    ids = [g for g, s in scores.items() if len(s) and not np.isnan(s).any()]
    out = dict(scores)
    if how == "l2":
        out.update({g: scores[g] / (np.linalg.norm(scores[g]) + 1e-12) for g in ids})
    elif how == "max":
        out.update({g: scores[g] / (np.abs(scores[g]).max() + 1e-12) for g in ids})
    elif how == "weak-layer":
        out.update(zip(ids, weak_layer_scale([np.asarray(scores[g], dtype=np.float64) for g in ids], nu)))
    return out


def global_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    fraction: float,
    *,
    max_ratio: float = 0.9,
    round_to: int = 1,
    min_channels: int = 1,
    normalisation: str = "l2",
    nu: float = 0.9,
) -> PruningPlan:
    """Remove the ``fraction`` of all prunable channels with the lowest normalised scores, never more than
    ``max_ratio`` of a group; kept counts are then rounded up to multiples of ``round_to``."""
    check_rounding(round_to, min_channels)
    if not 0.0 <= fraction < 1.0:
        raise OnnxPruneError(f"global pruning fraction must be in [0, 1), got {fraction}")
    if not 0.0 < max_ratio < 1.0:
        raise OnnxPruneError(f"--max-ratio must be in (0, 1), got {max_ratio}")
    norm = normalise(scores, normalisation, nu)
    groups = [g for g in analysis.groups if g.prunable and g.id in norm and not np.isnan(norm[g.id]).any()]
    cap = {g.id: g.channels - kept_count(g.channels, max_ratio, 1, min_channels) for g in groups}
    pool = [(float(norm[g.id][c]), g.id) for g in groups for c in range(g.channels)]
    pool.sort()
    budget = int(math.floor(fraction * sum(g.channels for g in analysis.groups if g.prunable) + 1e-9))
    n_remove = {g.id: 0 for g in groups}
    taken = 0
    for _, gid in pool:  # lowest first; a full group lets the next channel in line go instead
        if taken >= budget:
            break
        if n_remove[gid] < cap[gid]:
            n_remove[gid] += 1
            taken += 1
    chans = {g.id: g.channels for g in groups}
    n_remove = {
        gid: chans[gid] - kept_count(chans[gid], n / chans[gid], round_to, min_channels) for gid, n in n_remove.items()
    }
    plan = plan_from_counts(analysis, norm, n_remove)
    unscored = [g.id for g in analysis.groups if g.prunable and g not in groups]
    if unscored:
        plan.meta["unscored_groups"] = unscored
    plan.meta.update(allocation="global", normalisation=normalisation, max_ratio=max_ratio, fraction=fraction)
    return plan
