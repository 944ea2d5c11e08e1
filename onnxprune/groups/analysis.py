"""Channel-dependency analysis: one pass over the graph in topological order, rules from the registry."""

from __future__ import annotations

import fnmatch
import logging

import numpy as np
import onnx

from ..load import Graph
from . import rules  # noqa: F401  (registers every rule)
from .context import Context
from .group import Analysis, ChannelGroup
from .labels import UnionFind
from .registry import SOURCE_OPS, get_rule
from .rules.control import control

log = logging.getLogger(__name__)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def trace(graph: Graph) -> Context:
    """Run every node's rule; an op without a rule freezes whatever channels reach it."""
    ctx = Context(graph)
    for node in graph.model.graph.node:
        fn = get_rule(node.op_type, node.domain)
        touched = any(ctx.labels(i) is not None or i in ctx.shape_of for i in node.input) or _has_subgraph(node)
        if fn is None and _has_subgraph(node):
            fn = control  # any op with a subgraph: freeze what it can see, outer scope included
        if fn is None:
            if touched:
                ctx.freeze_inputs(
                    node, f"unsupported op {node.domain + '.' if node.domain else ''}{node.op_type} '{node.name}'"
                )
            continue
        if touched or node.op_type in SOURCE_OPS:
            fn(node, ctx)
    for out in graph.output_names:
        ctx.freeze(ctx.labels(out), f"reaches graph output '{out}'")
        ctx.freeze_shape_reader(out, f"graph output '{out}' is the shape of a prunable tensor")
    return ctx


#: the ops of quantized models: integer layers and (de)quantization; none has a channel rule
QUANTIZED_OPS = {
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "DynamicQuantizeLSTM",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
}


def quantized_note(graph: Graph) -> str:
    """Why a quantized model's layers make no groups or freeze, or "" when it has no quantized ops:
    channel scores, the rewrite and its exactness proof work on float weights, and a dynamically
    quantized activation's scale is taken over every channel, so removing one changes the rounding of
    the others."""
    ops: dict[str, int] = {}
    for node in graph.model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    if not ops:
        return ""
    what = ", ".join(f"{n} {op}" for op, n in sorted(ops.items()))
    return (
        f"quantized layers are not pruned ({what}): prune the float model, then quantize "
        "(README: prune -> reconstruct -> fine-tune -> quantize)"
    )


def analyse(graph: Graph, exclude: list[str] | tuple[str, ...] = ()) -> Analysis:
    ctx = trace(graph)
    roots = ctx.uf.roots()
    # Groups are connected components of the bipartite source--class graph: a source's channels belong
    # together, and a class shared by two sources (a residual Add) joins their groups.
    comp = UnionFind()
    comp.add(len(roots))
    for s in ctx.sources:
        r = roots[s.base : s.base + s.n]
        for x in np.unique(r):
            comp.union(int(x), int(r[0]))
    atoms_by_group: dict[int, list[int]] = {}
    sources_by_group: dict[int, list[str]] = {}
    for s in ctx.sources:
        key = comp.find(int(roots[s.base]))
        atoms_by_group.setdefault(key, []).extend(range(s.base, s.base + s.n))
        sources_by_group.setdefault(key, []).append(s.node)
    groups: list[ChannelGroup] = []
    key_to_id: dict[int, int] = {}
    for key in sorted(atoms_by_group):
        atoms = np.array(atoms_by_group[key], dtype=np.int64)
        classes: dict[int, list[int]] = {}
        for a in atoms:  # ordered by atom id: channel k of the first source is channel k of the group
            classes.setdefault(int(roots[a]), []).append(int(a))
        gid = len(groups)
        key_to_id[key] = gid
        groups.append(ChannelGroup(gid, sources_by_group[key], [np.array(v) for v in classes.values()]))
    for atoms, reason in ctx.frozen:
        for key in {comp.find(int(roots[a])) for a in atoms}:
            g = groups[key_to_id[key]] if key in key_to_id else None
            if g is not None and g.prunable:
                g.prunable, g.reason = False, reason
    for node_name, labels, _ in ctx.stat_masks:
        for key in {comp.find(int(roots[a])) for a in np.unique(labels[labels >= 0])}:
            g = groups[key_to_id[key]]
            if len(g.notes) < 3:
                g.notes.append(f"LayerNormalization '{node_name}' normalises over the kept channels only")
    if exclude:
        matched: set[str] = set()
        for g in groups:
            hits = [s for s in g.sources for pat in exclude if fnmatch.fnmatchcase(s, pat)]
            matched.update(pat for pat in exclude for s in g.sources if fnmatch.fnmatchcase(s, pat))
            if hits and g.prunable:
                g.prunable, g.reason = False, f"excluded by --exclude ({hits[0]})"
        for pat in set(exclude) - matched:
            log.warning("--exclude '%s' matches no source node", pat)
    for g in groups:
        if g.prunable and g.channels < 2:
            g.prunable, g.reason = False, "a single channel cannot be pruned"
    return Analysis(
        groups=groups,
        sources=ctx.sources,
        roots=roots,
        actions=ctx.actions,
        terminals=ctx.terminals,
        expected=ctx.labelled,
        stat_masks=ctx.stat_masks,
        source_channels=sum(s.n for s in ctx.sources),
        notes=[n for n in [quantized_note(graph)] if n],
    )
