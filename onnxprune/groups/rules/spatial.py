"""Ops that work on spatial axes only: pooling, Resize, Pad, and reductions.

Channels pass through as long as the op does not touch the channel axis. A reduction over channels is
exact only when a removed channel contributes nothing (sums of values, squares or magnitudes); means,
maxima and products over channels freeze.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, axes_from, inp, norm_axes


def _spatial_only(node, ctx, lab) -> bool:
    if any(ax >= 2 for ax in L.labelled_axes(lab)) or 0 in L.labelled_axes(lab):
        ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels are not on axis 1")
        return False
    return True


@rule(
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool", "RoiAlign"
)
def pool(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    if lab is None:  # only the RoIs carry channels
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels reach its RoI input")
    if not _spatial_only(node, ctx, lab):
        return
    if (
        len(node.output) > 1
        and node.output[1]
        and (ctx.graph.consumers.get(node.output[1]) or node.output[1] in ctx.graph.output_names)
    ):
        return ctx.freeze(lab, f"MaxPool '{node.name}': its flat indices depend on the channel count")
    ctx.set(node.output[0], lab)


@rule("Resize")
def resize(node, ctx) -> None:
    x, out = node.input[0], node.output[0]
    lab = ctx.labels(x)
    if lab is None:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels reach its scales/sizes")
    in_shape, out_shape = ctx.shape(x), ctx.shape(out)
    axes = L.labelled_axes(lab)
    if in_shape is None or out_shape is None or any(in_shape[a] != out_shape[a] for a in axes):
        return ctx.freeze(lab, f"{node.op_type} '{node.name}': it resizes a channel axis")
    if node.op_type == "Resize" and inp(node, 3):
        sizes = ctx.const(node.input[3])
        if sizes is None:
            return ctx.freeze(lab, f"Resize '{node.name}': sizes are computed")
        resized_axes = axes_from(node, ctx, 99) or list(range(len(in_shape)))
        entries = {k: (lab, a % len(in_shape)) for k, a in enumerate(resized_axes) if a % len(in_shape) in axes}
        if entries:
            ctx.act(Action("counts", node.name, input=3, entries=entries))
    ctx.set(out, lab)


@rule("Pad")
def pad(node, ctx) -> None:
    x = node.input[0]
    lab = ctx.labels(x)
    if lab is None:
        return ctx.freeze_inputs(node, f"Pad '{node.name}': channels reach its pads")
    rank = lab.ndim
    pads = attr(node, "pads") if ctx.graph.opset < 11 else ctx.const(inp(node, 1))
    axes = axes_from(node, ctx, 3) if inp(node, 3) else list(range(rank))
    if pads is None or axes is None:
        return ctx.freeze(lab, f"Pad '{node.name}': pads are computed")
    pads = np.asarray(pads).reshape(2, -1)
    for k, a in enumerate(norm_axes(axes, rank)):
        if a in L.labelled_axes(lab) and (pads[0, k] != 0 or pads[1, k] != 0):
            return ctx.freeze(lab, f"Pad '{node.name}': it pads a channel axis")
    ctx.set(node.output[0], lab)


SUM_LIKE = ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare")


@rule(
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceLogSum",
    "ReduceLogSumExp",
    *SUM_LIKE,
    "ArgMax",
    "ArgMin",
)
def reduce(node, ctx) -> None:
    x = node.input[0]
    lab = ctx.labels(x)
    if lab is None:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels reach its axes input")
    rank = lab.ndim
    axes: list[int] | None
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [int(attr(node, "axis", 0))]
    else:
        axes = axes_from(node, ctx, 1)
        if axes is None:
            return ctx.freeze(lab, f"{node.op_type} '{node.name}': axes are computed")
        if not axes:
            if int(attr(node, "noop_with_empty_axes", 0)):
                return ctx.set(node.output[0], lab)
            axes = list(range(rank))
    axes = norm_axes(axes, rank)
    hit = set(axes) & set(L.labelled_axes(lab))
    if hit:
        if node.op_type not in SUM_LIKE or len(L.labelled_axes(lab)) > 1:
            return ctx.freeze(lab, f"{node.op_type} '{node.name}': it reduces over the channel axis (not exact)")
        ctx.terminal(node, 0, lab)
        return
    out = lab
    if not int(attr(node, "keepdims", 1)):
        out = np.squeeze(lab, axis=tuple(axes))
    ctx.set(node.output[0], out)
