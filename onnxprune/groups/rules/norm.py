"""Normalisations and softmax-like ops.

Per-channel normalisations (BatchNorm, InstanceNorm) are exact to prune: slice their parameters.
LayerNormalization over the channel axis (channels-last ConvNeXt/ViT blocks) is prunable with one
documented semantic: after pruning its mean and variance cover the kept channels only. The verifier's
reference computes exactly that (statistics masked to the kept channels), so the rewrite is still proven.
GroupNorm, Lp/MVN normalisation and Softmax over channels freeze: never a wrong rewrite.
"""

from __future__ import annotations

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, inp


def _per_channel(node, ctx, params) -> None:
    x = node.input[0]
    lab = ctx.labels(x)
    if L.labelled_axes(lab) != [1]:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels are not on axis 1")
    for k in params:
        name = inp(node, k)
        if not name:
            continue
        if ctx.const(name) is None:
            return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': parameter '{name}' is computed")
        ctx.act(Action("slice_param", node.name, labels=lab, axis=1, input=k, param_axis=0))
    ctx.set(node.output[0], lab)
    for o in node.output[1:]:  # training-mode running statistics
        if o and ctx.graph.consumers.get(o) or o in ctx.graph.output_names:
            ctx.freeze(lab, f"{node.op_type} '{node.name}': training-mode outputs are used")


@rule("BatchNormalization")
def batch_norm(node, ctx) -> None:
    _per_channel(node, ctx, (1, 2, 3, 4))


@rule("InstanceNormalization")
def instance_norm(node, ctx) -> None:
    _per_channel(node, ctx, (1, 2))


@rule(
    "LayerNormalization",
    "GroupNormalization",
    "LpNormalization",
    "MeanVarianceNormalization",
    "Softmax",
    "LogSoftmax",
    "Hardmax",
)
def over_axes(node, ctx) -> None:
    """Pass channels through when the op's statistics do not span them; freeze otherwise."""
    x = node.input[0]
    lab = ctx.labels(x)
    rank = lab.ndim
    op = node.op_type
    if op == "LayerNormalization":
        first = int(attr(node, "axis", -1)) % rank
        reduced = set(range(first, rank))
    elif op == "GroupNormalization":
        reduced = set(range(1, rank))
    elif op == "MeanVarianceNormalization":
        reduced = {a % rank for a in attr(node, "axes", [0, 2, 3])}
    elif op == "LpNormalization":
        reduced = {int(attr(node, "axis", -1)) % rank}
    else:
        default = -1 if ctx.graph.opset >= 13 else 1
        ax = int(attr(node, "axis", default)) % rank
        reduced = {ax} if ctx.graph.opset >= 13 else set(range(ax, rank))
    if reduced & set(L.labelled_axes(lab)):
        if op != "LayerNormalization" or len(node.output) > 1 and any(node.output[1:]):
            return ctx.freeze_inputs(node, f"{op} '{node.name}': its statistics span the channel axis")
        for k in (1, 2):
            name = inp(node, k)
            if not name:
                continue
            shape = ctx.shape(name)
            if ctx.const(name) is None or shape is None:
                return ctx.freeze_inputs(node, f"LayerNormalization '{node.name}': computed scale/bias")
            offset = rank - len(shape)
            for ax in L.labelled_axes(lab):
                if ax >= offset and shape[ax - offset] > 1:
                    ctx.act(Action("slice_param", node.name, labels=lab, axis=ax, input=k, param_axis=ax - offset))
        ctx.stat_masks.append((node.name, lab, sorted(reduced)))
    ctx.set(node.output[0], lab)
