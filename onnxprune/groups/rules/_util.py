"""Small helpers shared by the rules."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


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
    return [a % rank for a in axes]


def aligned(labels: np.ndarray, rank: int) -> np.ndarray:
    """Right-align labels of a lower-rank (broadcast) input to ``rank``."""
    return labels.reshape((1,) * (rank - labels.ndim) + labels.shape)
