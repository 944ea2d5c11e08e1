"""Gemm and MatMul with a constant weight: features in, new features out.

After a Flatten the input features are channel blocks (one channel -> H*W features); labels already
say that, so slicing the weight rows by the kept labels is all Flatten->Gemm needs.
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import attr, inp


@rule("Gemm", source=True)
def gemm(node, ctx) -> None:
    a, b, c = node.input[0], node.input[1], inp(node, 2)
    B = ctx.const(b)
    lab = ctx.labels(a)
    if B is None or int(attr(node, "transA", 0)) or (c and ctx.const(c) is None):
        return ctx.freeze_inputs(node, f"Gemm '{node.name}': weight not constant or transA set")
    trans_b = int(attr(node, "transB", 0))
    if lab is not None:
        if L.labelled_axes(lab) != [1]:
            return ctx.freeze_inputs(node, f"Gemm '{node.name}': rows of its input carry channels")
        ctx.act(Action("slice_param", node.name, labels=lab, axis=1, input=1, param_axis=1 if trans_b else 0))
        ctx.terminal(node, 0, lab)
    out = node.output[0]
    n = B.shape[0] if trans_b else B.shape[1]
    out_lab = ctx.source(node, out, 1, n, b, 0 if trans_b else 1)
    if out_lab is None:
        return
    ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=1, param_axis=0 if trans_b else 1))
    if c:
        C = ctx.const(c)
        if C.ndim >= 1 and C.shape[-1] == n and n > 1:
            ctx.act(Action("slice_param", node.name, labels=out_lab, axis=1, input=2, param_axis=C.ndim - 1))
    ctx.set(out, out_lab)


@rule("MatMul", source=True)
def matmul(node, ctx) -> None:
    a, b = node.input[0], node.input[1]
    B = ctx.const(b)
    lab = ctx.labels(a)
    out = node.output[0]
    rank = ctx.rank(out)
    if B is None and ctx.const(a) is None and rank is not None and min(ctx.rank(a) or 0, ctx.rank(b) or 0) >= 2:
        return _matmul_activations(node, ctx)
    if B is None or B.ndim != 2 or rank is None or ctx.rank(a) is None or ctx.rank(a) < 2:
        return ctx.freeze_inputs(node, f"MatMul '{node.name}': second input is not a constant matrix")
    ra = ctx.rank(a)
    passed = None
    if lab is not None:
        axes = L.labelled_axes(lab)
        if ra - 1 in axes:
            if axes != [ra - 1]:
                return ctx.freeze_inputs(node, f"MatMul '{node.name}': features and rows both carry channels")
            ctx.act(
                Action(
                    "slice_param", node.name, labels=L.vector(lab, ra - 1).reshape(-1, 1), axis=0, input=1, param_axis=0
                )
            )
            ctx.terminal(node, 0, lab)
        else:  # channels on the rows (e.g. tokens) pass through untouched
            passed = np.take(lab, [0], axis=ra - 1)
    out_lab = ctx.source(node, out, rank - 1, B.shape[1], b, 1)
    if out_lab is not None:
        ctx.act(Action("slice_param", node.name, labels=out_lab.reshape(1, -1), axis=1, input=1, param_axis=1))
    if passed is not None and out_lab is not None:
        ctx.freeze(passed, f"MatMul '{node.name}': rows and columns both carry channels")
        ctx.freeze(out_lab, f"MatMul '{node.name}': rows and columns both carry channels")
        return
    ctx.set(out, out_lab if out_lab is not None else passed)


def _matmul_activations(node, ctx) -> None:
    """A @ B of two activations (attention): the contracted axis of A and B must lose the same channels
    (q.k over head dims), which is exact under masking; rows of A and columns of B pass through."""
    a, b = node.input[0], node.input[1]
    la, lb = ctx.labels(a), ctx.labels(b)
    rank = ctx.rank(node.output[0])
    la = None if la is None else la.reshape((1,) * (rank - la.ndim) + la.shape)
    lb = None if lb is None else lb.reshape((1,) * (rank - lb.ndim) + lb.shape)
    ka = la is not None and la.shape[-1] > 1
    kb = lb is not None and lb.shape[-2] > 1
    if ka != kb:  # only one side could be sliced
        return ctx.freeze_inputs(node, f"MatMul '{node.name}': channels on one side of a contraction only")
    if ka:
        assert la is not None and lb is not None  # ka == kb: both sides carry the contracted channels
        ctx.couple(np.take(la, [0], axis=-2)[..., 0, :], np.take(lb, [0], axis=-1)[..., :, 0])
        ctx.terminal(node, 0, la)
    if (ka and len(L.labelled_axes(la)) > 1) or (kb and len(L.labelled_axes(lb)) > 1):
        return ctx.freeze_inputs(node, f"MatMul '{node.name}': channels on the contraction and another axis")
    rows = None if la is None or ka else la  # after the contraction only non-contracted labels survive
    cols = None if lb is None or kb else lb
    if rows is not None and cols is not None and np.any(rows >= 0) and np.any(cols >= 0):
        return ctx.freeze_inputs(node, f"MatMul '{node.name}': rows and columns both carry channels")
    out = rows if rows is not None and np.any(rows >= 0) else cols
    ctx.set(node.output[0], out)
