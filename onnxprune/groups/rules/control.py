"""Control flow: subgraphs are left untouched, so every channel they can see is frozen."""

from __future__ import annotations

import onnx

from ..registry import rule


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope (implicit inputs)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i and i not in defined)
        for a in node.attribute:
            for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                used.update(outer_names(sg) - defined)
        defined.update(node.output)
    return used


def implicit_reads(node: onnx.NodeProto) -> set[str]:
    """Names ``node``'s subgraphs read from the enclosing scope."""
    names: set[str] = set()
    for a in node.attribute:
        for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            names |= outer_names(sg)
    return names


@rule("If", "Loop", "Scan")
def control(node, ctx) -> None:
    reason = f"{node.op_type} '{node.name}': subgraphs are not rewritten"
    ctx.freeze_inputs(node, reason)
    for a in node.attribute:
        for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for name in outer_names(sg):
                ctx.freeze(ctx.labels(name), reason)
                ctx.freeze_shape_reader(name, reason)
