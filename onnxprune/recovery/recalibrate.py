"""Statistics recalibration: EagleEye's adaptive BatchNorm, carried over to exported graphs.

Pruning shifts the distribution of every activation downstream of the removed channels. Where
BatchNormalization nodes remain, their running mean and variance are recomputed on calibration data
(EagleEye). Exporters usually fold BN into the Conv, so where there is no BN the same correction is applied
at each affected layer's output: its kept channels are scaled and shifted so that their per-channel mean and
variance on calibration data equal the original model's,

    y' = (y - mu_pruned) * sigma_orig / sigma_pruned + mu_orig,

which is folded into the layer's weight and bias. Layers are corrected in graph order, each seeing the
corrected layers upstream. MatMul layers (no bias input) are left as they are.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..linear import RECURRENT, Layer, bias_vector, from_mats, set_weight, to_mats, weight_uses
from .passes import Recovery, downstream
from .propagate import ChannelSums, Propagation

EPS = 1e-12


def _scale_shift(rec: Recovery, lay: Layer, orig, pruned) -> tuple[np.ndarray, np.ndarray]:
    """Fold y' = s * y + t into the layer; returns (s, t) per output channel."""
    mu_o, var_o = orig
    mu_p, var_p = pruned
    s = np.where(var_p > EPS, np.sqrt(var_o / np.maximum(var_p, EPS)), 1.0)
    w = numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64)
    mats = to_mats(lay, w) * s.reshape(lay.groups, 1, -1)
    b = bias_vector(lay, rec.inits, len(s))
    t = mu_o - s * mu_p
    set_weight(lay, rec.pruned, rec.inits, from_mats(lay, mats, w.shape), s * b + t)
    return s, t


def _set_bn(rec: Recovery, name: str, mean: np.ndarray, var: np.ndarray) -> None:
    node = rec.nodes[name]
    for k, v in ((3, mean), (4, var)):
        t = rec.inits[node.input[k]]
        t.CopyFrom(numpy_helper.from_array(v.astype(numpy_helper.to_array(t).dtype), node.input[k]))


def targets(rec: Recovery) -> tuple[dict[str, Layer], list[str]]:
    """Folded layers downstream of the cut whose outputs get re-standardised, and BatchNormalization
    nodes whose statistics are recomputed (only those owning their mean and variance)."""
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
        elif lay.op_type in RECURRENT:
            rec.skipped.setdefault(lay.node, f"recalibration: {lay.op_type} (its outputs are not its refitted product)")
        else:
            layers[lay.node] = lay
    return layers, bns


def output_sums(rec: Recovery, layers: dict[str, Layer]) -> ChannelSums:
    """The collector of the original model's per-channel output statistics of ``layers``, the targets
    of their re-standardisation."""
    return ChannelSums({rec.orig_nodes[n].output[0]: lay.channel_axis for n, lay in layers.items()})


def set_bn_statistics(rec: Recovery, name: str, prop: Propagation) -> None:
    """A remaining BatchNormalization takes the statistics of its input as the pruned model now has it
    (``prop`` stands just before the node)."""
    _set_bn(rec, name, *prop.moments(rec.nodes[name].input[0], 1))


def restandardise(rec: Recovery, lay: Layer, prop: Propagation, orig: dict) -> bool:
    """``prop`` has just run ``lay``: scale and shift its kept output channels to the original's mean and
    variance, in its weights and in the propagated output, so everything downstream sees the corrected
    layer without running it again. False when there is nothing to correct."""
    out, axis = rec.nodes[lay.node].output[0], lay.channel_axis
    if not prop.holds(out):  # nothing reads it: nothing to correct
        return False
    mu_o, var_o = orig[out]
    now = prop.moments(out, axis)
    kept = rec.kept(out, axis, len(mu_o))
    if len(kept) != len(now[0]):
        rec.skipped[lay.node] = "recalibration: output channels do not correspond"
        return False
    s, t = _scale_shift(rec, lay, (mu_o[kept], var_o[kept]), now)
    prop.update(out, lambda y: _affine(y, s, t, axis))
    return True


def _affine(y: np.ndarray, s: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    """``y * s + t`` per channel, in place and in ``y``'s precision: the frontier holds whole activations
    of the calibration set (a float64 product cost resnet50's recalibration 7 s of 48)."""
    shape = [1] * y.ndim
    shape[axis % y.ndim] = len(s)
    y = y if y.flags.writeable else y.copy()
    y *= s.astype(y.dtype).reshape(shape)
    y += t.astype(y.dtype).reshape(shape)
    return y
