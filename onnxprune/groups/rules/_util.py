"""Small helpers shared by the rules."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import OnnxPruneError


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def inp(node: onnx.NodeProto, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def axes_from(node: onnx.NodeProto, ctx, input_index: int, attr_name: str = "axes") -> list[int] | None:
    """Axes given as an attribute (old opsets) or a constant input (new opsets); None if computed."""
    a = attr(node, attr_name)
    if a is not None:
        return [int(x) for x in a]
    name = inp(node, input_index)
    if not name:
        return []
    c = ctx.const(name)
    return None if c is None else [int(x) for x in np.atleast_1d(c)]


def norm_axes(axes, rank: int) -> list[int]:
    """Non-negative axes, each once (onnxruntime reduces over a repeated axis once)."""
    bad = [a for a in axes if not -rank <= a < rank]
    if bad:
        raise OnnxPruneError(f"axes {list(axes)} out of range for a rank-{rank} tensor")
    return list(dict.fromkeys(a % rank for a in axes))


def aligned(labels: np.ndarray, rank: int) -> np.ndarray:
    """Right-align labels of a lower-rank (broadcast) input to ``rank``."""
    return labels.reshape((1,) * (rank - labels.ndim) + labels.shape)


def target_pieces(ctx, node, name: str):
    """Per target dim: (node owning the constant, its input index, entry) -> value (None if computed).

    Exporters build ``x.view(x.size(0), -1)`` as Concat(Unsqueeze(Gather(Shape(x))), [-1]); the channel
    dims of such targets are constants inside the Concat, and that constant is what the rewrite edits.
    """
    const = ctx.const(name)
    if const is not None:
        return [((node.name, 1), i, int(v)) for i, v in enumerate(np.atleast_1d(const))]
    prod = ctx.graph.producer.get(name)
    users = ctx.graph.consumers.get(name, [])
    # a target shared by several Reshape/Expand nodes is edited once per user; the rewriter refuses a
    # plan whose edits of one entry disagree
    if prod is None or prod.op_type != "Concat" or any(u.op_type not in ("Reshape", "Expand") for u, _ in users):
        return None
    pieces: list = []
    for k, piece in enumerate(prod.input):
        c = ctx.const(piece)
        shape = ctx.shape(piece)
        if c is not None:
            pieces.extend(((prod.name, k), i, int(v)) for i, v in enumerate(np.atleast_1d(c)))
        elif shape is not None and len(shape) == 1:
            pieces.extend(((prod.name, k), i, None) for i in range(shape[0]))
        else:
            return None
    return pieces


def user_of(ctx, owner: str, node) -> str:
    """``node.name`` when ``owner`` is a shape-building Concat shared with other nodes (the rewriter then
    gives ``node`` its own copy), else empty."""
    if owner == node.name:
        return ""
    prod = ctx.graph.producer.get(node.input[1])
    return node.name if prod is not None and len(ctx.graph.consumers.get(prod.output[0], [])) > 1 else ""
