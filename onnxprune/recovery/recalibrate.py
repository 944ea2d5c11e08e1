"""Statistics recalibration: EagleEye's adaptive BatchNorm, carried over to exported graphs.

Pruning shifts the distribution of every activation downstream of the removed channels. Where
BatchNormalization nodes remain, their running mean and variance are recomputed on calibration data
(EagleEye). Exporters usually fold BN into the Conv, so where there is no BN the same correction is applied
at each affected layer's output: its kept channels are scaled and shifted so that their per-channel mean and
variance on calibration data equal the original model's,

    y' = (y - mu_pruned) * sigma_orig / sigma_pruned + mu_orig,

which is folded into the layer's weight and bias. Layers are corrected in graph order (waves), each seeing
the corrected layers upstream. MatMul layers (no bias input) are left as they are.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..progress import bar
from .layers import Layer, bias_vector, from_mats, set_weight, to_mats, weight_uses
from .passes import Recovery, downstream, moments, waves

EPS = 1e-12


def _scale_shift(rec: Recovery, lay: Layer, orig, pruned) -> None:
    mu_o, var_o = orig
    mu_p, var_p = pruned
    s = np.where(var_p > EPS, np.sqrt(var_o / np.maximum(var_p, EPS)), 1.0)
    w = numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64)
    mats = to_mats(lay, w) * s.reshape(lay.groups, 1, -1)
    b = bias_vector(lay, rec.inits, len(s))
    set_weight(lay, rec.pruned, rec.inits, from_mats(lay, mats, w.shape), s * b + mu_o - s * mu_p)


def _set_bn(rec: Recovery, name: str, mean: np.ndarray, var: np.ndarray) -> None:
    node = rec.nodes[name]
    for k, v in ((3, mean), (4, var)):
        t = rec.inits[node.input[k]]
        t.CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(t).dtype), node.input[k]))


def recalibrate(rec: Recovery, batches, progress: bool = False) -> list[str]:
    """Recompute remaining BN statistics and re-standardise folded layers; returns the nodes changed."""

    hot = downstream(rec.pruned, rec.changed_starts())
    uses = weight_uses(rec.pruned)
    bns = [
        n
        for n in hot
        if rec.nodes[n].op_type == "BatchNormalization"
        and all(rec.nodes[n].input[k] in rec.inits and uses[rec.nodes[n].input[k]] == 1 for k in (3, 4))
    ]
    layers = {}
    for lay in rec.layers(hot):
        if lay.op_type == "MatMul":
            rec.skipped[lay.node] = "recalibration: MatMul (no bias input)"
        else:
            layers[lay.node] = lay
    if not layers and not bns:
        return []
    outs = {rec.orig_nodes[n].output[0]: lay.channel_axis for n, lay in layers.items()}
    orig = moments(rec.original.model, outs, batches, rec.original.shapes)
    changed = []
    for wave in bar(waves(rec.pruned, list(layers) + bns), desc="recalibrate", unit="wave", enabled=progress):
        axes = {}
        for n in wave:
            node = rec.nodes[n]
            if n in layers:
                axes[node.output[0]] = layers[n].channel_axis
            else:
                axes[node.input[0]] = 1
        now = moments(rec.pruned, axes, batches)
        for n in wave:
            node = rec.nodes[n]
            if n not in layers:
                _set_bn(rec, n, *now[node.input[0]])
            else:
                out = node.output[0]
                mu_o, var_o = orig[out]
                kept = rec.kept(out, layers[n].channel_axis, len(mu_o))
                if len(kept) != len(now[out][0]):
                    rec.skipped[n] = "recalibration: output channels do not correspond"
                    continue
                _scale_shift(rec, layers[n], (mu_o[kept], var_o[kept]), now[out])
            changed.append(n)
    return changed
