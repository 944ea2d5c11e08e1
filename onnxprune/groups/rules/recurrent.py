"""LSTM, GRU and RNN as consumers: the input features carry channels (a CRNN's convolutional features,
flattened per time step), and each is one column of every gate's input weight ``W``
(directions, gates x hidden, input), so removing a feature slices that column and nothing else.

The hidden units are no source: they couple every gate, both directions, the recurrent weight on both of
its axes and the states the caller passes in, and nothing downstream sees them as channels; the rule
leaves them whole. Channels on the sequence or batch axis, or reaching an initial state, freeze.
"""

from __future__ import annotations

from .. import labels as L
from ..actions import Action
from ..registry import rule
from ._util import inp


@rule("LSTM", "GRU", "RNN")
def recurrent(node, ctx) -> None:
    x = node.input[0]
    lab = ctx.labels(x)
    for k in range(1, len(node.input)):
        if ctx.labels(inp(node, k)) is not None:
            return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels reach its weights or states")
    if lab is None:
        return
    if L.labelled_axes(lab) != [lab.ndim - 1]:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': channels on the sequence or batch axis")
    if ctx.const(inp(node, 1)) is None:
        return ctx.freeze_inputs(node, f"{node.op_type} '{node.name}': input weight is computed")
    ctx.act(Action("slice_param", node.name, labels=lab, axis=lab.ndim - 1, input=1, param_axis=2))
    ctx.terminal(node, 0, lab)
