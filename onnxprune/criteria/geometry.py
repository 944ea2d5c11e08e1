"""Filter-geometry criteria: FPGM (He et al. 2019) and the weak-layer penalty.

FPGM removes the filters closest to the geometric median of their layer, i.e. with the smallest sum of
distances to the layer's other filters: they are the most replaceable. The weak-layer penalty scales
those distances per layer, ``Z = R / (max R - min R + theta) * nu`` for layers whose spread of R is below
half the mean spread across layers (x 1 otherwise), so a global ranking takes more from weak layers.
"""

from __future__ import annotations

import numpy as np

from .norm import filter_matrix
from .registry import criterion


def distance_sums(f: np.ndarray) -> np.ndarray:
    """R_i = sum_j ||f_i - f_j|| (Gram form: one matrix product instead of n^2 vector norms)."""
    sq = np.einsum("ij,ij->i", f, f)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (f @ f.T), 0.0)
    return np.sqrt(d2).sum(1)


def _per_source(graph, analysis) -> list[tuple[object, np.ndarray]]:
    return [(s, distance_sums(filter_matrix(graph, s))) for s in analysis.sources]


@criterion(
    "fpgm",
    "sum of distances to the layer's other filters: filters near the geometric median go "
    "first (He et al. 2019); no data needed",
)
def fpgm(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    scores = np.zeros(len(analysis.roots))
    for s, r in _per_source(graph, analysis):
        scores[s.base : s.base + s.n] = r
    return scores


@criterion(
    "weak-layer",
    "FPGM distances normalised per layer and scaled by --nu for weak layers "
    "(low spread of distances); meant for global ranking; no data needed",
)
def weak_layer(graph, analysis, data=None, seed: int = 0, nu: float = 0.9, theta: float = 1e-8) -> np.ndarray:
    per = _per_source(graph, analysis)
    spreads = np.array([r.std() for _, r in per]) if per else np.array([])
    threshold = 0.5 * spreads.mean() if len(spreads) else 0.0
    scores = np.zeros(len(analysis.roots))
    for (s, r), spread in zip(per, spreads):
        z = r / (r.max() - r.min() + theta)
        scores[s.base : s.base + s.n] = z * (nu if spread < threshold else 1.0)
    return scores
