"""Sensitivity-driven allocation (Li et al. 2017, Fig. 2b): give each group the largest ratio whose measured
loss stays under a budget (``--max-drop``), or spend a MACs/parameter target where the measured loss per
unit saved is lowest (``--target-macs``). The measurement itself (pruning one group at a time, optionally
recovered) is ``onnxprune.sensitivity``, above the rewrite layer it needs.

With labels the loss is the top-1 drop in points; without, it is 100 - top-1 agreement with the original
(KL divergence is recorded too). Pruned copies are evaluated on data held in memory, so keep the
evaluation set small (``--limit``); groups can be spread over worker processes (``jobs``).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import OnnxPruneError
from ..groups import Analysis

FORMAT = "onnxprune.sensitivity/1"


def measured_points(result: dict, analysis: Analysis) -> dict[int, list[tuple[float, float]]]:
    """Per group, its measured (ratio, drop) points by increasing ratio, checked against this model."""
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise OnnxPruneError(f"not an onnxprune sensitivity file (expected format '{FORMAT}')")
    out = {}
    for g in result["groups"]:
        gid = int(g["id"])
        if gid >= len(analysis.groups) or list(analysis.groups[gid].sources) != list(g["sources"]):
            raise OnnxPruneError(
                f"sensitivity file group {gid} does not match this model (was it made for another model?)"
            )
        out[gid] = sorted((float(p["ratio"]), float(p["drop"])) for p in g["points"])
    return out


def ratios_from_sensitivity(result: dict, analysis: Analysis, max_drop: float) -> dict[int, float]:
    """Per group, the largest measured ratio such that it and every smaller one lose at most ``max_drop``."""
    if max_drop < 0:
        raise OnnxPruneError("--max-drop must be >= 0")
    out = {}
    for gid, points in measured_points(result, analysis).items():
        best = 0.0
        for ratio, drop in points:
            if drop > max_drop:
                break
            best = ratio
        out[gid] = best
    return out


def densify(
    points: dict[int, list[tuple[float, float]]], saved: dict[int, dict[float, float]], step: float = 1 / 32
) -> tuple[dict[int, list[tuple[float, float]]], dict[int, dict[float, float]]]:
    """Candidate ratios every ``step`` up to each group's largest measured ratio, with the drop and the
    saving interpolated linearly from (0, 0) through the measured points: a few measured ratios then
    still let a target be met closely. Never extrapolated past what was measured.

    The drop interpolated is the lower convex hull of its envelope (see ``tradeoff_ratios``): with
    convex losses and linear savings each group's best ratio moves smoothly with the Lagrange
    multiplier, where a flat stretch (0.06 points at 0.25 and at 0.5) would make a whole group jump
    from nothing to half its channels at one knob value and leave the target between two plans."""
    dense_points, dense_saved = {}, {}
    for gid, pts in points.items():
        xs, ys = _hull(pts)
        sx, sv = [0.0] + [r for r, _ in pts], [0.0] + [saved[gid].get(r, 0.0) for r, _ in pts]
        grid = sorted({*(r for r, _ in pts), *np.arange(step, xs[-1], step).round(6)})
        dense_points[gid] = [(float(r), float(np.interp(r, xs, ys))) for r in grid]
        dense_saved[gid] = {float(r): float(np.interp(r, sx, sv)) for r in grid}
    return dense_points, dense_saved


def measured_loss(points: dict[int, list[tuple[float, float]]], channels: dict[int, int]):
    """``loss(group, n_removed)`` for the latency allocation: the measured drop at that ratio (the convex
    hull of its envelope, as ``densify`` uses, plus the ratio^2 tie-break of ``tradeoff_ratios``),
    infinite past the largest measured ratio or for a group that was not measured."""
    hulls = {gid: _hull(pts) for gid, pts in points.items()}
    tie = _tie(points)

    def loss(gid: int, n: int) -> float:
        if gid not in hulls:
            return float("inf")
        xs, ys = hulls[gid]
        ratio = n / channels[gid]
        if ratio > xs[-1] + 1e-9:
            return float("inf")
        return float(np.interp(ratio, xs, ys)) + tie * ratio * ratio

    return loss


def _tie(points: dict[int, list[tuple[float, float]]]) -> float:
    """Weight of the ratio^2 tie-break: 1e-3 of the largest measured drop."""
    return 1e-3 * max(max((d for pts in points.values() for _, d in pts), default=0.0), 1e-9)


def _hull(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """From (0, 0) through the measured points: the envelope of the drops, then its lower convex hull."""
    xs, ys, env = [0.0], [0.0], 0.0
    for ratio, drop in points:
        env = max(env, drop)
        xs.append(ratio)
        ys.append(env)
    return _lower_hull(xs, ys)


def _lower_hull(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The lower convex hull of points sorted by x (Andrew's monotone chain, lower half: a dozen lines,
    not worth scipy.spatial for)."""
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] is on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return [p[0] for p in hull], [p[1] for p in hull]


def tradeoff_ratios(
    points: dict[int, list[tuple[float, float]]], saved: dict[int, dict[float, float]], knob: float
) -> dict[int, float]:
    """Per group, the candidate ratio (measured, or interpolated by ``densify``) that maximises
    ``lam * saved - loss`` with ``lam = (knob / (1 - knob))^2``
    (a Lagrangian relaxation of "least total measured loss for this much saved": every group is
    decided on its own, and each group's ratio only grows with ``knob``, so a target can be bisected).

    The loss of a ratio is the largest drop measured at it or below (a noisy dip does not make a
    heavier cut look cheaper; gains count as no loss), plus a tie-break of 1e-3 of the largest drop
    times ratio^2, so groups that measured no loss at all are cut evenly instead of all at once to
    their largest measured ratio (losses measured one group at a time add up when cuts combine)."""
    lam = (knob / (1.0 - knob)) ** 2 if knob < 1.0 else float("inf")
    tie = _tie(points)
    out = {}
    for gid, pts in points.items():
        best_ratio, best_value, envelope = 0.0, 0.0, 0.0
        for ratio, drop in pts:
            envelope = max(envelope, drop)
            value = lam * saved[gid].get(ratio, 0.0) - envelope - tie * ratio * ratio
            if value > best_value:
                best_ratio, best_value = ratio, value
        out[gid] = best_ratio
    return out


def load_sensitivity(path: str) -> dict:
    if not os.path.isfile(path):
        raise OnnxPruneError(f"sensitivity file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"cannot read sensitivity file {path}: {e}") from None
