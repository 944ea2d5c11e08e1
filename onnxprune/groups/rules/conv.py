"""Conv and ConvTranspose: consume input channels, create output channels.

Depthwise convs (group == in_channels) tie output channels to input channels and pass them through.
Grouped convs must lose the same in-group offset in every group to stay grouped, so offset j of every
group is coupled; the ``group`` attribute then never changes.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, inp


def _channel_vector(ctx, node, name):
    lab = ctx.labels(name)
    if lab is None:
        return None
    if L.labelled_axes(lab) != [1]:
        ctx.freeze(lab, f"{node.op_type} '{node.name}': channels of its input are not on axis 1")
        return None
    return L.vector(lab, 1)


def _couple_offsets(ctx, vec: np.ndarray, groups: int) -> None:
    per = vec.reshape(groups, -1)
    for k in range(1, groups):
        ctx.couple(per[0], per[k])


@rule("Conv", source=True)
def conv(node, ctx) -> None:
    x, w, b = node.input[0], node.input[1], inp(node, 2)
    W = ctx.const(w)
    if W is None or (b and ctx.const(b) is None):
        return ctx.freeze_inputs(node, f"Conv '{node.name}': weights are not constant")
    g = int(attr(node, "group", 1))
    cout, cin_g = W.shape[0], W.shape[1]
    out = node.output[0]
    vec = _channel_vector(ctx, node, x)
    if g > 1 and cin_g == 1:  # depthwise (with channel multiplier cout / g)
        if vec is None:
            return
        out_vec = np.repeat(vec, cout // g)
        out_lab = L.along(out_vec, 1, W.ndim)
        ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=1, param_axis=0))
        if b:
            ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=2, param_axis=0))
        ctx.act(Action("set_group", node.name, labels=L.along(vec, 1, W.ndim), axis=1))
        ctx.set(out, out_lab)
        return
    if vec is not None:
        if g > 1:
            _couple_offsets(ctx, vec, g)
        local = L.along(vec[:cin_g], 1, W.ndim)
        ctx.act(Action("slice_param", node.name, labels=local, axis=1, input=1))
        ctx.terminal(node, 0, ctx.labels(x))
    out_lab = ctx.source(node, out, 1, cout, w, 0)
    if out_lab is None:
        return
    if g > 1:
        _couple_offsets(ctx, L.vector(out_lab, 1), g)
    ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=1, param_axis=0))
    if b:
        ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=2, param_axis=0))
    ctx.set(out, out_lab)


@rule("ConvTranspose", source=True)
def conv_transpose(node, ctx) -> None:
    x, w, b = node.input[0], node.input[1], inp(node, 2)
    W = ctx.const(w)
    g = int(attr(node, "group", 1))
    if W is None or (b and ctx.const(b) is None) or g != 1:
        return ctx.freeze_inputs(node, f"ConvTranspose '{node.name}': non-constant weights or grouped")
    vec = _channel_vector(ctx, node, x)
    if vec is not None:
        ctx.act(Action("slice_param", node.name, labels=L.along(vec, 0, W.ndim), axis=0, input=1))
        ctx.terminal(node, 0, ctx.labels(x))
    out = node.output[0]
    out_lab = ctx.source(node, out, 1, W.shape[1], w, 1)
    if out_lab is None:
        return
    ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=1, param_axis=1))
    if b:
        ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=2, param_axis=0))
    ctx.set(out, out_lab)
