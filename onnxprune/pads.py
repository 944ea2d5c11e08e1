"""ONNX's ``auto_pad`` resolved to explicit pads, for every place that reads a window of a Conv or pool
input by hand (the torch interpreter, the refit's patches, ThiNet's samples).

Why here and not from a library: onnx's reference evaluator computes these pads inside its Conv and pool
kernels without exposing them, and torch's ``padding="same"`` takes stride 1 only and pads like SAME_UPPER
alone. PP-HGNetV2 stems (PP-OCRv5/v6 server and small models, paddle2onnx) open with a 2x2 Conv and a
MaxPool padded SAME_UPPER: an even kernel, where UPPER and LOWER differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper


def explicit_pads(
    auto_pad,
    pads: Sequence[int] | None,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
) -> list[int]:
    """``[begin_1, ..., begin_k, end_1, ..., end_k]`` of a Conv or pool over input ``spatial`` dims.

    SAME_*: the output is ceil(input / stride) and the padding it needs is split in two, the odd one at
    the end (SAME_UPPER) or at the beginning (SAME_LOWER); the kernel is taken dilated, as the ONNX spec
    says (onnxruntime refuses dilations with SAME).
    VALID: none. NOTSET: ``pads`` (zeros when absent)."""
    k = len(spatial)
    mode = auto_pad.decode() if isinstance(auto_pad, bytes) else (auto_pad or "NOTSET")
    if mode == "NOTSET":
        return list(pads) if pads is not None else [0] * (2 * k)
    if mode == "VALID":
        return [0] * (2 * k)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"unknown auto_pad {mode!r}")
    strides = list(strides) if strides else [1] * k
    dilations = list(dilations) if dilations else [1] * k
    begin, end = [], []
    for size, kern, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        need = max(0, (out - 1) * s + (kern - 1) * d + 1 - size)
        small, large = need // 2, need - need // 2
        begin.append(small if mode == "SAME_UPPER" else large)
        end.append(large if mode == "SAME_UPPER" else small)
    return begin + end


def node_pads(node: onnx.NodeProto, spatial: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """``explicit_pads`` of a Conv or pool node reading input ``spatial`` dims with ``kernel``."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return explicit_pads(a.get("auto_pad"), a.get("pads"), spatial, kernel, a.get("strides"), a.get("dilations"))


def conv_geometry_2d(node: onnx.NodeProto, spatial: Sequence[int], kernel: Sequence[int]):
    """((kh, kw), pads [top, left, bottom, right], (sh, sw), (dh, dw)) of a 1-D or 2-D Conv ``node``
    over input ``spatial`` dims, a 1-D one read as a 2-D one of height 1 (its input then viewed as
    ``x[:, :, None, :]``): one geometry for every place that gathers a Conv's windows by hand."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    pads = explicit_pads(a.get("auto_pad"), a.get("pads"), spatial, kernel, a.get("strides"), a.get("dilations"))
    strides = list(a.get("strides") or [1] * len(kernel))
    dilations = list(a.get("dilations") or [1] * len(kernel))
    if len(kernel) == 1:
        return (1, kernel[0]), [0, pads[0], 0, pads[1]], (1, strides[0]), (1, dilations[0])
    return tuple(kernel), pads, tuple(strides), tuple(dilations)
