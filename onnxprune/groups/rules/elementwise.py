"""Element-wise ops: channels pass straight through; broadcasting inputs couple or get sliced.

Residual ``Add`` couples both sides channel by channel; a per-channel constant (a PRelu slope, the scale of
a decomposed BatchNorm) is sliced; any other non-constant input with the channel dim cannot be sliced,
so the channels it meets are frozen.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import aligned, target_pieces, user_of

UNARY = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    "Gelu",
    "Mish",
    "Identity",
    "Cast",
    "CastLike",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Not",
    "IsNaN",
    "IsInf",
    "Shrink",
)
BROADCAST = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
    "PRelu",
    "Clip",
    "Dropout",
)


@rule(*UNARY, *BROADCAST)
def broadcast(node, ctx) -> None:
    out = node.output[0]
    rank = ctx.rank(out)
    if rank is None:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': output shape unknown")
    combined = None
    inputs = [(k, name) for k, name in enumerate(node.input) if name]
    if node.op_type == "Dropout":  # ratio / training_mode are scalars, not data
        inputs = inputs[:1]
    for _, name in inputs:
        lab = ctx.labels(name)
        if lab is None:
            continue
        lab = aligned(lab, rank)
        if combined is None:
            combined = lab
        else:
            ctx.couple(combined, lab)
            combined = np.where(combined >= 0, combined, lab)
    if combined is None:
        return
    axes = L.labelled_axes(combined)
    for k, name in inputs:
        if ctx.labels(name) is not None:
            continue
        shape = ctx.shape(name)
        if shape is None:
            return ctx.freeze(combined, f"{node.op_type} '{node.name}': shape of input '{name}' unknown")
        offset = rank - len(shape)
        hit = [ax for ax in axes if ax >= offset and shape[ax - offset] > 1]
        if not hit:
            continue
        if ctx.const(name) is None:
            if _broadcast_by_expand(ctx, name, hit, rank, combined):
                continue
            return ctx.freeze(
                combined, f"{node.op_type} '{node.name}': input '{name}' has the channel dim but is computed"
            )
        for ax in hit:
            ctx.act(Action("slice_param", node.name, labels=combined, axis=ax, input=k, param_axis=ax - offset))
    for o in node.output:
        if o:
            ctx.set(o, combined)


def _broadcast_by_expand(ctx, name, axes, rank, labels) -> bool:
    """An Expand whose target only broadcasts a size-1 axis up to the channel count (``norm.expand_as(x)``,
    its target folded to constants or built by Concat) follows the channels it meets: the target's
    constant entries are edited."""
    prod = ctx.graph.producer.get(name)
    if prod is None or prod.op_type != "Expand" or len(ctx.graph.consumers.get(name, [])) != 1:
        return False
    src = ctx.shape(prod.input[0])
    pieces = target_pieces(ctx, prod, prod.input[1])
    if src is None or pieces is None or ctx.labels(prod.input[0]) is not None:
        return False
    offset_src, offset_t = rank - len(src), rank - len(pieces)
    edits: dict[tuple[str, int], dict] = {}
    for ax in axes:
        if ax - offset_t < 0 or (ax - offset_src >= 0 and src[ax - offset_src] != 1):
            return False
        owner, k, value = pieces[ax - offset_t]
        if value is None:
            return False
        edits.setdefault(owner, {})[k] = (labels, ax)
    for (owner, in_index), entries in edits.items():
        ctx.act(Action("counts", owner, input=in_index, entries=entries, user=user_of(ctx, owner, prod)))
    return True
