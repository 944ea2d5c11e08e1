"""Layout ops: Reshape, Flatten, Transpose, Squeeze/Unsqueeze, Expand, Tile...

Labels are reshaped and transposed exactly like the data, so a channel becomes a block of features
after Flatten, and the Reshape-Transpose-Reshape channel shuffle comes out as a permutation.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, axes_from, inp, target_pieces, user_of


def _reshaped(node, ctx):
    x, out = node.input[0], node.output[0]
    lab, sin, sout = ctx.labels(x), ctx.shape(x), ctx.shape(out)
    if sin is None or sout is None or int(np.prod(sin)) != int(np.prod(sout)):
        ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': static shapes unknown")
        return None
    return L.broadcast_full(lab, sin).reshape(sout)


@rule("Reshape")
def reshape(node, ctx) -> None:
    new = _reshaped(node, ctx)
    if new is None:
        return
    new = ctx.representatives(new)  # e.g. [heads, head_dim]: only head_dim can shrink
    if new is None:
        return
    pieces = target_pieces(ctx, node, inp(node, 1))
    if pieces is None:
        return ctx.freeze_inputs(node, f"Reshape '{node.name}': target shape is computed")
    edits: dict[tuple[str, int], dict] = {}
    for ax in L.labelled_axes(new):
        owner, k, value = pieces[ax]
        if value is None:
            return ctx.freeze_inputs(node, f"Reshape '{node.name}': computed target dim on a channel axis")
        if value > 0:  # -1 is inferred and 0 copies the (consistently pruned) input dim: both need no edit
            edits.setdefault(owner, {})[k] = (new, ax)
    for (owner, in_index), entries in edits.items():
        ctx.act(Action("counts", owner, input=in_index, entries=entries, user=user_of(ctx, owner, node)))
    ctx.set(node.output[0], new)


@rule("Flatten")
def flatten(node, ctx) -> None:
    new = _reshaped(node, ctx)
    if new is not None:
        ctx.set(node.output[0], new)


@rule("Transpose")
def transpose(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    perm = attr(node, "perm") or list(range(lab.ndim))[::-1]
    ctx.set(node.output[0], np.transpose(lab, perm))


@rule("Squeeze")
def squeeze(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    shape = ctx.shape(node.input[0])
    axes = axes_from(node, ctx, 1)
    if axes is None or shape is None:
        return ctx.freeze_inputs(node, f"Squeeze '{node.name}': axes computed")
    axes = [a % lab.ndim for a in axes] if axes else [a for a, d in enumerate(shape) if d == 1]
    ctx.set(node.output[0], np.squeeze(lab, axis=tuple(axes)))


@rule("Unsqueeze")
def unsqueeze(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    axes = axes_from(node, ctx, 1)
    rank = ctx.rank(node.output[0])
    if axes is None or rank is None:
        return ctx.freeze_inputs(node, f"Unsqueeze '{node.name}': axes computed")
    ctx.set(node.output[0], np.expand_dims(lab, tuple(sorted(a % rank for a in axes))))


@rule("Expand")
def expand(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    out = node.output[0]
    rank, target = ctx.rank(out), ctx.const(inp(node, 1))
    if inp(node, 1) in ctx.shape_of and ctx.shape_of[inp(node, 1)][1] == 0 and rank is not None:
        return _expand_as(node, ctx, lab, rank)
    if lab is None or rank is None or target is None:
        return ctx.freeze_inputs(node, f"Expand '{node.name}': target shape computed")
    lab = lab.reshape((1,) * (rank - lab.ndim) + lab.shape)
    offset = rank - len(target)
    entries = {ax - offset: (lab, ax) for ax in L.labelled_axes(lab) if ax >= offset and int(target[ax - offset]) > 1}
    if entries:
        ctx.act(Action("counts", node.name, input=1, entries=entries))
    ctx.set(out, lab)


def _expand_as(node, ctx, lab, rank) -> None:
    """``x.expand_as(y)``: Expand to Shape(y). The target follows y's pruned shape at run time, so the
    output simply carries y's channels (coupled with x's where x has them), like a broadcast."""
    other = ctx.shape_of[node.input[1]][0]
    if ctx.rank(other) != rank:
        return ctx.freeze_inputs(node, f"Expand '{node.name}': expands to the shape of a tensor of another rank")
    ylab = ctx.labels(other)
    xlab = None if lab is None else lab.reshape((1,) * (rank - lab.ndim) + lab.shape)
    shape_x = ctx.shape(node.input[0])
    if ylab is not None and xlab is None and shape_x is not None:
        offset = rank - len(shape_x)
        if any(ax >= offset and shape_x[ax - offset] > 1 for ax in L.labelled_axes(ylab)):
            return ctx.freeze_inputs(node, f"Expand '{node.name}': unlabelled input has the channel dim")
    if xlab is not None and ylab is not None:
        ctx.couple(xlab, ylab)
        ctx.set(node.output[0], np.where(xlab >= 0, xlab, ylab))
    else:
        ctx.set(node.output[0], xlab if xlab is not None else ylab)


@rule("Tile")
def tile(node, ctx) -> None:
    lab = ctx.labels(node.input[0])
    reps = ctx.const(inp(node, 1))
    if lab is None or reps is None or any(int(reps[a]) != 1 for a in L.labelled_axes(lab)):
        return ctx.freeze_inputs(node, f"Tile '{node.name}': repeats a channel axis")
    ctx.set(node.output[0], lab)


@rule("Shape")
def shape(node, ctx) -> None:
    x = node.input[0]
    rank = ctx.rank(x) or 0
    start = int(attr(node, "start", 0))
    ctx.shape_of[node.output[0]] = (x, start % rank if rank else 0)
    end = attr(node, "end")
    lab = ctx.labels(x)
    if lab is not None and end is not None:
        read = set(range(rank)[slice(start, int(end))])
        if not read & set(L.labelled_axes(lab)):
            ctx.shape_of.pop(node.output[0])  # reads only non-channel dims


@rule("Size")
def size(node, ctx) -> None:
    ctx.freeze_inputs(node, f"Size '{node.name}': reads the element count of a prunable tensor")
