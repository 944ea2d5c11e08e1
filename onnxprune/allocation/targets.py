"""Reach a MACs target with uniform allocation: bisection on the per-group ratio.

MACs are counted on the rewritten model itself, so whatever the graph does (residual groups,
concatenations, Flatten->Gemm blocks) the achieved figure is the real one.
"""
from __future__ import annotations

import numpy as np

from ..count import count
from ..errors import OnnxPruneError
from ..load import infer_shapes
from .uniform import uniform_plan


def macs_of(graph, analysis, plan) -> int:
    from ..rewrite import apply_plan

    pruned = apply_plan(graph, analysis, plan)
    return count(pruned, infer_shapes(pruned, graph.input_shapes)).macs


def plan_for_macs(graph, analysis, scores: dict[int, np.ndarray], keep_fraction: float, round_to: int = 1,
                  min_channels: int = 1, tolerance: float = 0.01, steps: int = 30):
    """The uniform plan whose MACs are closest to ``keep_fraction`` of the original (within
    ``tolerance`` when reachable); returns (plan, achieved fraction, ratio)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise OnnxPruneError(f"--target-macs must be in (0, 1], got {keep_fraction}")
    total = count(graph.model, graph.shapes).macs
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = uniform_plan(analysis, scores, mid, round_to, min_channels)
        frac = macs_of(graph, analysis, plan) / total
        if best is None or abs(frac - keep_fraction) < abs(best[1] - keep_fraction):
            best = (plan, frac, mid)
        if abs(frac - keep_fraction) <= tolerance * keep_fraction:
            break
        if frac > keep_fraction:
            lo = mid
        else:
            hi = mid
    plan, frac, ratio = best
    if abs(frac - keep_fraction) > 0.05:
        raise OnnxPruneError(f"cannot reach {keep_fraction:.3f} of the MACs with uniform pruning of the prunable "
                             f"groups (closest: {frac:.3f} at ratio {ratio:.3f})")
    plan.meta.update(target_macs=keep_fraction, achieved_macs=frac, ratio=ratio)
    return plan, frac, ratio
