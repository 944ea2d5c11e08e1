"""Bias compensation: fold the mean contribution of removed input channels into the consumer's bias.

A removed channel c contributed sum_k W[o, c, k] * x_c(p + k) to output o. Replacing x_c by its mean over
the calibration data turns that into a constant, which the bias absorbs. The result is *exact* when each
removed channel is constant over the data (a dead or saturated channel) and the consumer reads no zero
padding: a 1x1 Conv, a Gemm/MatMul-like dense layer, or a Conv with pads 0. With padding the border
outputs read zeros instead of the mean, so compensation over-corrects there. Grouped Conv consumers are
skipped: removing an input of a group also removes its outputs. MatMul has no bias input and is skipped.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..linear import as_layer, bias_vector, set_weight, to_mats
from .passes import Recovery, moments


def compensate_bias(rec: Recovery, batches) -> list[str]:
    names = [n for n in rec.changed_starts() if rec.lost_inputs(n) is not None]
    layers = []
    for lay in rec.layers(names):
        if lay.op_type == "MatMul" or lay.groups != 1:
            rec.skipped[lay.node] = (
                "bias compensation: MatMul (no bias input)"
                if lay.op_type == "MatMul"
                else "bias compensation: grouped Conv"
            )
            continue
        layers.append(lay)
    if not layers:
        return []
    inputs = {rec.orig_nodes[lay.node].input[0]: lay.channel_axis for lay in layers}
    stats = moments(rec.original.model, inputs, batches, rec.original.shapes, rec.original.consts)
    orig_inits = {t.name: t for t in rec.original.model.graph.initializer}
    changed = []
    for lay in layers:
        node = rec.orig_nodes[lay.node]
        orig_layer, why = as_layer(node, orig_inits, {})
        if orig_layer is None:
            raise AssertionError(f"'{node.name}' was a layer in the pruned model but not in the original: {why}")
        w0 = rec.original.consts[node.input[1]].astype(np.float64)
        if lay.op_type == "Conv":
            per_input = w0.reshape(w0.shape[0], w0.shape[1], -1).sum(-1).T  # C x O
        else:
            per_input = to_mats(orig_layer, w0)[0]  # K x O
        kept_in = rec.lost_inputs(lay.node)
        assert kept_in is not None  # only layers that lost inputs were selected above
        delta = stats[node.input[0]][0][~kept_in] @ per_input[~kept_in]  # O (original outputs)
        kept_out = rec.kept(node.output[0], lay.channel_axis, len(delta))
        w = numpy_helper.to_array(rec.inits[lay.weight])
        b = bias_vector(lay, rec.inits, len(kept_out)) + delta[kept_out]
        set_weight(lay, rec.pruned, rec.inits, w, b)
        changed.append(lay.node)
    return changed
