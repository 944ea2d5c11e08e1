"""Concat, Split, Slice and Gather: channels keep their identity, only their positions move.

Concat along the channel axis places each input's channels at an offset; Split/Slice/Gather pick
ranges or indices, whose constants the rewriter recomputes from the kept positions.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, axes_from, inp

BIG = 2**62


@rule("Concat")
def concat(node, ctx) -> None:
    out = node.output[0]
    rank = ctx.rank(out)
    shapes = [ctx.shape(i) for i in node.input]
    if rank is None or any(s is None for s in shapes):
        return ctx.freeze_inputs(node, f"Concat '{node.name}': shapes unknown")
    axis = int(attr(node, "axis")) % rank
    labs = [ctx.labels(i) for i in node.input]
    on_axis = any(lab is not None and axis in L.labelled_axes(lab) for lab in labs)
    if not on_axis:  # concatenating along a non-channel axis: channels line up, like an Add
        combined = None
        for lab in labs:
            if lab is None:
                continue
            if combined is not None:
                ctx.couple(combined, lab)
                lab = np.where(combined >= 0, combined, lab)
            combined = lab
        if any(lab is None for lab in labs):
            return ctx.freeze(combined, f"Concat '{node.name}': joins channels with an unlabelled tensor")
        return ctx.set(out, combined)
    parts = []
    for lab, shape in zip(labs, shapes):
        if lab is not None and L.labelled_axes(lab) != [axis]:
            return ctx.freeze_inputs(node, f"Concat '{node.name}': channels on more than the concat axis")
        n = shape[axis]
        parts.append(L.vector(lab, axis) if lab is not None else np.full(n, L.NONE, dtype=np.int64))
    ctx.set(out, L.along(np.concatenate(parts), axis, rank))


def _split_sizes(node, ctx, n_out: int, dim: int):
    """Split sizes and where they live: ('input', sizes), ('attr', sizes), ('equal', sizes) or None."""
    if inp(node, 1):
        s = ctx.const(node.input[1])
        return None if s is None else ("input", [int(v) for v in s])
    a = attr(node, "split")
    if a is not None:
        return ("attr", [int(v) for v in a])
    n = int(attr(node, "num_outputs", n_out))
    step = -(-dim // n)
    return ("equal", [min(step, dim - k * step) for k in range(n)])


@rule("Split")
def split(node, ctx) -> None:
    x = node.input[0]
    lab = ctx.labels(x)
    shape = ctx.shape(x)
    if lab is None or shape is None:
        return ctx.freeze_inputs(node, f"Split '{node.name}': sizes are computed from channels")
    axis = int(attr(node, "axis", 0)) % lab.ndim
    if axis not in L.labelled_axes(lab):
        for o in node.output:
            ctx.set(o, lab)
        return
    if ctx.fixed_axis(lab, axis):  # no plan shrinks this axis: the parts keep their sizes
        found = _split_sizes(node, ctx, len(node.output), shape[axis])
        if found is None:
            return ctx.freeze(lab, f"Split '{node.name}': computed sizes")
        offsets = np.cumsum([0] + found[1])
        for k, o in enumerate(node.output):
            ctx.set(o, np.take(lab, np.arange(offsets[k], offsets[k + 1]), axis=axis))
        return
    found = _split_sizes(node, ctx, len(node.output), shape[axis])
    if found is None or L.labelled_axes(lab) != [axis]:
        return ctx.freeze(lab, f"Split '{node.name}': computed sizes or channels on several axes")
    where, sizes = found
    vec = L.vector(lab, axis)
    offsets = np.cumsum([0] + sizes)
    entries = {}
    for k, o in enumerate(node.output):
        part = L.along(vec[offsets[k] : offsets[k + 1]], axis, lab.ndim)
        entries[k] = (part, axis)
        ctx.set(o, part)
    if where == "input":
        ctx.act(Action("counts", node.name, input=1, entries=entries))
    elif where == "attr":
        ctx.act(Action("counts", node.name, attr="split", entries=entries))
    else:
        ctx.act(Action("split_outputs", node.name, entries=entries))


def _slice_params(node, ctx, rank):
    starts, ends = ctx.const(inp(node, 1)), ctx.const(inp(node, 2))
    axes = axes_from(node, ctx, 3) if inp(node, 3) else None
    steps = ctx.const(inp(node, 4)) if inp(node, 4) else None
    if starts is None or ends is None or (inp(node, 3) and axes is None) or (inp(node, 4) and steps is None):
        return None
    n = len(starts)
    axes = [a % rank for a in axes] if axes is not None else list(range(n))
    steps = [int(s) for s in steps] if steps is not None else [1] * n
    return [int(s) for s in starts], [int(e) for e in ends], axes, steps


def _normalise_range(start: int, end: int, dim: int) -> tuple[int, int]:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    return max(0, min(start, dim)), max(0, min(end, dim))


@rule("Slice")
def slice_(node, ctx) -> None:
    x = node.input[0]
    if x in ctx.shape_of:
        return _slice_of_shape(node, ctx)
    lab = ctx.labels(x)
    shape = ctx.shape(x)
    if lab is None or shape is None:
        return ctx.freeze_inputs(node, f"Slice '{node.name}': its bounds depend on channels")
    params = _slice_params(node, ctx, lab.ndim)
    if params is None:
        return ctx.freeze_inputs(node, f"Slice '{node.name}': bounds are computed")
    out = lab
    for k, (s, e, a, st) in enumerate(zip(*params)):
        if a not in L.labelled_axes(lab):
            continue
        if ctx.fixed_axis(lab, a):  # no plan shrinks this axis: plain slicing of the labels
            out = np.take(out, np.arange(*slice(s, e, st).indices(shape[a])), axis=a)
            continue
        if st != 1:
            return ctx.freeze(lab, f"Slice '{node.name}': strided slice of a channel axis")
        s, e = _normalise_range(s, e, shape[a])
        ctx.act(Action("slice_range", node.name, labels=lab, axis=a, entry=k, start=s, end=e))
        out = np.take(out, np.arange(s, e), axis=a)
    ctx.set(node.output[0], out)


def _slice_of_shape(node, ctx) -> None:
    tensor, first = ctx.shape_of[node.input[0]]
    lab = ctx.labels(tensor)
    shape = ctx.shape(tensor)
    params = _slice_params(node, ctx, 1)
    if params is None or shape is None:
        return ctx.freeze(lab, f"Slice '{node.name}': reads the shape of a prunable tensor")
    s, e = _normalise_range(params[0][0], params[1][0], len(shape) - first)
    read = {first + i for i in range(s, e, params[3][0] or 1)}
    if read & set(L.labelled_axes(lab)):
        ctx.freeze(lab, f"Slice '{node.name}': reads the channel count of a prunable tensor")


@rule("Gather")
def gather(node, ctx) -> None:
    x, idx_name = node.input
    if x in ctx.shape_of:
        tensor, first = ctx.shape_of[x]
        lab = ctx.labels(tensor)
        idx = ctx.const(idx_name)
        rank = len(ctx.shape(tensor) or ())
        if idx is None or {(first + int(i)) % rank for i in np.atleast_1d(idx)} & set(L.labelled_axes(lab)):
            ctx.freeze(lab, f"Gather '{node.name}': reads the channel count of a prunable tensor")
        return
    lab = ctx.labels(x)
    if lab is None:
        return ctx.freeze_inputs(node, f"Gather '{node.name}': channels reach its indices")
    axis = int(attr(node, "axis", 0)) % lab.ndim
    idx = ctx.const(idx_name)
    if axis not in L.labelled_axes(lab) or (idx is not None and ctx.fixed_axis(lab, axis)):
        if idx is not None and lab.shape[axis] > 1:  # fixed axis: labels follow the data, no rewrite
            return ctx.set(node.output[0], np.take(lab, np.asarray(idx, dtype=np.int64), axis=axis))
        shape = np.shape(idx) if idx is not None else ctx.shape(idx_name)
        if shape is None:
            return ctx.freeze(lab, f"Gather '{node.name}': index shape unknown")
        out = np.take(lab, np.zeros(shape, dtype=np.int64), axis=axis)
        return ctx.set(node.output[0], out)
    if idx is None or idx.ndim == 0 or L.labelled_axes(lab) != [axis]:
        return ctx.freeze(lab, f"Gather '{node.name}': computed or single index on a channel axis")
    dim = lab.shape[axis]
    idx = np.where(idx < 0, idx + dim, idx).astype(np.int64)
    ctx.act(Action("gather_idx", node.name, labels=lab, axis=axis))
    ctx.set(node.output[0], np.take(lab, idx, axis=axis))
