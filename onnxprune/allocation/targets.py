"""Reach a MACs or parameter target: bisection on the allocation's one knob (the uniform ratio, or the
global fraction of channels removed), counting on the rewritten model itself, so whatever the graph
does (residual groups, concatenations, Flatten->Gemm blocks) the achieved figure is the real one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..count import PARAM_TYPES, Counts, count, node_macs
from ..errors import OnnxPruneError
from ..plan import Keep, PruningPlan

METRICS = ("macs", "params")
log = logging.getLogger(__name__)


def counts_of(graph, analysis, plan) -> Counts:
    """MACs and parameters the plan leads to, from shapes alone.

    Rewriting the model at every bisection step copied the whole protobuf (minutes on vgg16_bn); the
    shapes follow from the analysis instead: every labelled tensor loses its removed positions, every
    sliced weight its removed rows. tests/test_allocation.py checks this against counting the rewritten
    model.
    """

    keep = Keep(analysis, plan)
    shapes = dict(graph.shapes)
    for name, labels in analysis.expected.items():
        if name in shapes:
            shapes[name] = tuple(
                keep.count(labels, ax) if labels.shape[ax] > 1 else d for ax, d in enumerate(shapes[name])
            )
    # the rewriter gives each (node, input) it slices its own copy; the original stays while any
    # other consumer still reads it
    nodes = {n.name: n for n in graph.model.graph.node}
    sliced: dict[tuple[str, int], list[int]] = {}
    for act in analysis.actions:
        if act.kind == "slice_param":
            w = nodes[act.node].input[act.input]
            if w in graph.consts:
                pa = act.axis if act.param_axis is None else act.param_axis
                shp = sliced.setdefault((act.node, act.input), list(graph.consts[w].shape))
                shp[pa] = min(shp[pa], keep.count(act.labels, act.axis))
    per = {
        n.name: node_macs(
            n,
            {
                **shapes,
                **{n.input[k]: tuple(sliced[(n.name, k)]) for k in range(len(n.input)) if (n.name, k) in sliced},
            },
        )
        for n in graph.model.graph.node
    }
    readers: dict[str, list[tuple[str, int]]] = {}
    for n in graph.model.graph.node:
        for k, i in enumerate(n.input):
            readers.setdefault(i, []).append((n.name, k))
    params = 0
    for t in graph.model.graph.initializer:
        if t.data_type not in PARAM_TYPES:
            continue
        rs = readers.get(t.name, [])
        copies = [r for r in rs if r in sliced and tuple(sliced[r]) != tuple(t.dims)]
        params += sum(int(np.prod(sliced[r])) for r in copies)
        if len(copies) < len(rs) or not rs:
            params += int(np.prod(t.dims))
    return Counts(sum(per.values()), params, per)


def plan_for_target(
    graph,
    analysis,
    make_plan: Callable[[float], PruningPlan],
    keep_fraction: float,
    metric: str = "macs",
    tolerance: float = 0.01,
    steps: int = 30,
    hi: float = 0.99,
    blend_order: Callable[[PruningPlan, PruningPlan], list[int]] | None = None,
):
    """The plan whose ``metric`` is closest to ``keep_fraction`` of the original without exceeding it
    (stops within ``tolerance`` relative, below the target); returns (plan, achieved fraction, knob).
    Where the knob's steps jump over the target (uniform ratios with ``--round-to 8`` move every group at
    once), ``blend_order`` lets the two plans around it be blended group by group (see ``blend``).
    Refuses when no plan gets down to the target."""
    if metric not in METRICS:
        raise OnnxPruneError(f"unknown target metric '{metric}'")
    if not 0.0 < keep_fraction <= 1.0:
        raise OnnxPruneError(f"--target-{metric} must be in (0, 1], got {keep_fraction}")
    total = getattr(count(graph.model, graph.shapes), metric)

    def fraction(plan: PruningPlan) -> float:
        return getattr(counts_of(graph, analysis, plan), metric) / max(total, 1)

    def landed(frac: float) -> bool:  # the target is a ceiling: within tolerance, at or below it
        return keep_fraction * (1 - tolerance) <= frac <= keep_fraction

    lo = 0.0
    best = above = below = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = make_plan(mid)
        frac = fraction(plan)
        if best is None or abs(frac - keep_fraction) < abs(best[1] - keep_fraction):
            best = (plan, frac, mid)
        if landed(frac):
            best = (plan, frac, mid)
            break
        if frac > keep_fraction:
            lo = mid
            above = (plan, frac, mid) if above is None or frac < above[1] else above
        else:
            hi = mid
            below = (plan, frac, mid) if below is None or frac > below[1] else below
    plan, frac, knob = best
    if not landed(frac):
        # nothing within tolerance below it: the closest plan at or below the target (two knob values
        # blended group by group where they jump over it), saying what it achieved
        if above and below and blend_order:
            blended, bfrac, heavier = blend(
                above[0], below[0], blend_order(above[0], below[0]), fraction, keep_fraction
            )
            if below[1] < bfrac <= keep_fraction:
                blended.meta["blended"] = {"ratios": [above[2], below[2]], "groups_at_higher_ratio": heavier}
                below = (blended, bfrac, below[2])
        if below is None:
            why = "" if any(g.prunable for g in analysis.groups) else "; no group is prunable"
            why += "".join(f" ({note})" for note in analysis.notes)  # a quantized model's layers make none
            raise OnnxPruneError(
                f"cannot reach {keep_fraction:.3f} of the {metric} by pruning the prunable groups "
                f"(closest: {frac:.3f}){why}"
            )
        plan, frac, knob = below
        if keep_fraction - frac > 0.05:
            log.warning(
                "no allocation lands within 5%% of %.3f of the %s; taking the closest below it: %.3f",
                keep_fraction,
                metric,
                frac,
            )
    plan.meta.update({f"target_{metric}": keep_fraction, f"achieved_{metric}": frac})
    return plan, frac, knob


def blend(
    light: PruningPlan,
    heavy: PruningPlan,
    order: list[int],
    fraction: Callable[[PruningPlan], float],
    keep_fraction: float,
) -> tuple[PruningPlan, float, int]:
    """Groups take ``heavy``'s removals instead of ``light``'s, in ``order``, as long as the metric stays
    above ``keep_fraction`` (a group whose step would overshoot is passed over, a later, smaller one may
    fit); then the one further group that lands closest at or below the target. Removing channels never
    adds MACs or parameters, so every step only goes down. Returns the plan, its fraction and how many
    groups took the heavier plan's removals."""
    moved = [g for g in order if light.remove.get(g, []) != heavy.remove.get(g, [])]

    def mix(take: set[int]) -> PruningPlan:
        remove = {g: list(heavy.remove[g]) for g in take if g in heavy.remove}
        remove.update({g: list(v) for g, v in light.remove.items() if g not in take})
        return PruningPlan({g: v for g, v in remove.items() if v}, dict(light.meta))

    taken: set[int] = set()
    for g in moved:
        if fraction(mix(taken | {g})) > keep_fraction:
            taken.add(g)
    finals = [(fraction(mix(taken | {g})), taken | {g}) for g in moved if g not in taken]
    below = [f for f in finals if f[0] <= keep_fraction]
    frac, take = max(below, key=lambda f: f[0]) if below else (fraction(mix(taken)), taken)
    return mix(take), frac, len(take)
