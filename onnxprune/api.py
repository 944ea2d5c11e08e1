"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import os
import time

import numpy as np
import onnx

from .allocation import check_ratio, uniform_plan
from .count import count
from .criteria import get_criterion, group_scores
from .data import DataSpec
from .errors import OnnxPruneError, VerificationError
from .groups import analyse
from .load import Graph, build_graph, infer_shapes, parse_input_shapes, read_model
from .plan import PruningPlan
from .report import AnalysisReport, PruneReport
from .rewrite import apply_plan, check_rewrite
from .verify import verify


def load(model, input_shapes=None) -> Graph:
    """Read (path or ModelProto) and normalise; ``input_shapes``: dict or list of ``name:1x3x224x224``."""
    if isinstance(input_shapes, (list, tuple)):
        input_shapes = parse_input_shapes(list(input_shapes))
    return build_graph(read_model(model), input_shapes or {})


def _group_macs(analysis, counts) -> None:
    """Each group's MACs share: the MACs of every node whose weights it slices."""
    node_groups: dict[str, set[int]] = {}
    atom_group, _ = analysis.atom_index()
    root_group = {}
    for a, r in enumerate(analysis.roots):
        if atom_group[a] >= 0:
            root_group[int(r)] = int(atom_group[a])
    for act in analysis.actions:
        if act.kind == "slice_param":
            lab = act.labels[act.labels >= 0]
            gids = {root_group.get(int(r)) for r in np.unique(analysis.roots[lab])}
            node_groups.setdefault(act.node, set()).update(x for x in gids if x is not None)
    for node, gids in node_groups.items():
        for gid in gids:
            analysis.groups[gid].macs += counts.per_node.get(node, 0)


def evaluate(model, data, reference=None, input_shapes=None, progress: bool = False) -> dict:
    """Top-1/top-5 on labelled data; agreement, |diff| and KL against ``reference`` when given."""
    from .evaluation import evaluate as _evaluate

    graph = model if isinstance(model, Graph) else load(model, input_shapes)
    ref = None
    if reference is not None:
        ref = reference if isinstance(reference, Graph) else load(reference, input_shapes)
    return _evaluate(graph, as_data(data), ref, progress)


def analyze(model, input_shapes=None, exclude=()) -> AnalysisReport:
    graph = model if isinstance(model, Graph) else load(model, input_shapes)
    analysis = analyse(graph, tuple(exclude))
    counts = count(graph.model, graph.shapes)
    _group_macs(analysis, counts)
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else ""
    return AnalysisReport(analysis, counts, path, graph)


def as_data(data) -> DataSpec | None:
    """A DataSpec from a spec string, an iterable of feed dicts or a CalibrationDataReader."""
    if data is None or isinstance(data, DataSpec):
        return data
    return DataSpec(source=data)


def score_groups(graph: Graph, analysis, criterion: str = "l1", combine: str = "sum", seed: int = 0,
                 data=None, **opts) -> dict[int, np.ndarray]:
    crit = get_criterion(criterion)
    atom_scores = crit.fn(graph, analysis, seed=seed, data=as_data(data), **opts)
    return {g.id: group_scores(atom_scores, g.atoms, combine) for g in analysis.groups if g.prunable}


def prune(model, criterion: str = "l1", ratio: float = 0.3, *, round_to: int = 1, min_channels: int = 1,
          exclude=(), input_shapes=None, plan: PruningPlan | None = None, verify_rewrite: bool = True,
          combine: str = "sum", seed: int = 0, data=None, nu: float = 0.9, samples: int = 2000,
          rescale: bool = True, target_macs: float | None = None) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune ``model`` and return ``(pruned ModelProto, PruneReport)``. With ``plan`` the plan is replayed
    instead of scoring and allocating."""
    t0 = time.perf_counter()
    check_ratio(ratio)
    report = analyze(model, input_shapes, exclude)
    graph = report.graph
    analysis = report.analysis
    timings = {"analyze": time.perf_counter() - t0}
    if plan is None:
        t = time.perf_counter()
        scores = score_groups(graph, analysis, criterion, combine, seed, data=data, nu=nu, samples=samples)
        if target_macs is not None:
            from .allocation.targets import plan_for_macs

            plan, _, ratio = plan_for_macs(graph, analysis, scores, target_macs, round_to, min_channels)
        else:
            plan = uniform_plan(analysis, scores, ratio, round_to, min_channels)
        plan.meta.update(criterion=criterion, ratio=ratio, round_to=round_to, min_channels=min_channels, combine=combine)
        timings["score_allocate"] = time.perf_counter() - t
    t = time.perf_counter()
    pruned = apply_plan(graph, analysis, plan)
    check_rewrite(graph, analysis, plan, pruned)
    timings["rewrite"] = time.perf_counter() - t
    ver = None
    if verify_rewrite:
        t = time.perf_counter()
        res = verify(graph, analysis, plan, pruned, seed=seed)
        timings["verify"] = time.perf_counter() - t
        ver = res.to_json()
        if not res.passed:
            raise VerificationError(f"rewrite is not exact: max |diff| {res.max_abs_diff:.3e} exceeds tolerance "
                                    f"(relative {res.max_rel_diff:.3e} > {res.tolerance:.1e}); output not written")
    rescaled: list[str] = []
    if rescale and plan.meta.get("criterion") == "thinet" and plan.remove:
        # after verification on purpose: the structural rewrite is proven exact first, then ThiNet's
        # least squares deliberately changes the kept weights of the layers that lost inputs
        from .criteria.thinet import rescale as thinet_rescale

        t = time.perf_counter()
        rescaled = thinet_rescale(graph, analysis, plan, pruned, as_data(data), samples, seed)
        timings["rescale"] = time.perf_counter() - t
    after = count(pruned, infer_shapes(pruned, graph.input_shapes))
    groups = []
    for g in analysis.groups:
        removed = sorted(plan.remove.get(g.id, []))
        gone = set(removed)
        groups.append({"id": g.id, "sources": g.sources, "channels": g.channels, "prunable": g.prunable,
                       "reason": g.reason, "macs": int(g.macs), "removed": removed, "kept": [c for c in range(g.channels) if c not in gone]})
    timings["total"] = time.perf_counter() - t0
    rep = PruneReport(report.counts, after, plan.to_json(analysis), plan.meta.get("criterion", criterion), ver,
                      {k: round(v, 4) for k, v in timings.items()}, groups, rescaled)
    _copy_metadata(graph.model, pruned)
    return pruned, rep


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    dst.producer_name = src.producer_name or dst.producer_name
    entry = dst.metadata_props.add()
    entry.key, entry.value = "onnxprune", "pruned"


__all__ = ["load", "analyze", "prune", "score_groups", "evaluate", "OnnxPruneError"]
