"""Filter-norm criteria (Li et al., "Pruning Filters for Efficient ConvNets", 2017)."""

from __future__ import annotations

import numpy as np

from .registry import criterion


def filter_matrix(graph, source) -> np.ndarray:
    """One row per output channel of ``source``: its whole filter, flattened."""
    w = graph.consts[source.weight].astype(np.float64)
    return np.moveaxis(w, source.axis, 0).reshape(source.n, -1)


def _norms(graph, analysis, ord_: int) -> np.ndarray:
    scores = np.zeros(len(analysis.roots))
    for s in analysis.sources:
        w = graph.consts[s.weight]
        others = tuple(a for a in range(w.ndim) if a != s.axis % w.ndim)
        # reduced in place along the other axes, summed in float64: no float64 or transposed copy of the
        # weight (vgg16's 103 M-weight classifier took 3 s that way)
        if ord_ == 1:
            scores[s.base : s.base + s.n] = np.abs(w).sum(axis=others, dtype=np.float64)
        else:
            scores[s.base : s.base + s.n] = np.sqrt(np.square(w).sum(axis=others, dtype=np.float64))
    return scores


@criterion("l1", "L1 norm of each filter (Li et al. 2017); no data needed")
def l1(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    return _norms(graph, analysis, 1)


@criterion("l2", "L2 norm of each filter; no data needed")
def l2(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    return _norms(graph, analysis, 2)


@criterion("random", "seeded random scores: the baseline every criterion must beat")
def random(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(len(analysis.roots))
