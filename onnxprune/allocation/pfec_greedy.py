"""PFEC's greedy strategy (Li et al. 2017, Sec. 3.3): a layer's filter norms leave out the kernels that
read channels already removed from earlier layers, so a filter that is large only because of inputs
that are going away no longer looks important.

Groups are visited in graph order (group ids follow it); each group's filters are scored with the
input slices of the channels removed so far zeroed, then its lowest channels are removed.
"""

from __future__ import annotations

import numpy as np

from ..criteria.registry import group_scores
from ..errors import OnnxPruneError
from ..groups import Analysis
from ..plan import Keep, PruningPlan
from .feasible import restore_emptied

STRATEGIES = ("independent", "greedy")


def _masked_weight(graph, analysis, source, keep, actions) -> np.ndarray:
    """The source's weight with the input slices of removed channels zeroed (``keep``: the plan so far)."""
    w = graph.consts[source.weight].astype(np.float64)
    for act in actions:
        pa = act.axis if act.param_axis is None else act.param_axis
        if pa == source.axis:
            continue  # the source's own output channels: that is what is being scored
        alive = keep.kept_along(act.labels, act.axis)
        if alive.all() or len(alive) != w.shape[pa]:
            continue
        w = w * alive.reshape([-1 if a == pa else 1 for a in range(w.ndim)])
    return w


def greedy_plan(
    graph, analysis: Analysis, n_remove: dict[int, int], ord_: int = 1, combine: str = "sum"
) -> PruningPlan:

    by_node: dict[tuple[str, int], list] = {}
    for act in analysis.actions:
        if act.kind == "slice_param":
            by_node.setdefault((act.node, act.input), []).append(act)
    sources = {s.node: s for s in analysis.sources}
    plan = PruningPlan()
    for g in analysis.groups:
        n = n_remove.get(g.id, 0)
        if not g.prunable or n <= 0:
            continue
        keep = Keep(analysis, plan)
        atom_scores = np.full(len(analysis.roots), np.nan)
        for name in g.sources:
            s = sources.get(name)
            if s is None:
                continue
            node = next(nd for nd in graph.model.graph.node if nd.name == s.node)
            k = list(node.input).index(s.weight)
            w = _masked_weight(graph, analysis, s, keep, by_node.get((s.node, k), []))
            f = np.moveaxis(w, s.axis, 0).reshape(s.n, -1)
            atom_scores[s.base : s.base + s.n] = np.abs(f).sum(1) if ord_ == 1 else np.sqrt((f * f).sum(1))
        scores = group_scores(atom_scores, g.atoms, combine)
        if np.isnan(scores).any():
            continue
        plan.remove[g.id] = sorted(int(c) for c in np.argsort(scores, kind="stable")[:n])
    return restore_emptied(analysis, plan, {})


def check_strategy(strategy: str, criterion: str) -> None:
    if strategy not in STRATEGIES:
        raise OnnxPruneError(f"unknown --strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    if strategy == "greedy" and criterion not in ("l1", "l2"):
        raise OnnxPruneError(f"--strategy greedy is PFEC's filter-norm strategy: use it with l1 or l2, not {criterion}")
