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

from ..linear import Layer, bias_vector, from_mats, set_weight, to_mats, weight_uses
from ..progress import bar
from .passes import Recovery, downstream, moments
from .propagate import Propagation

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


def recalibrate(rec: Recovery, batches, progress: bool = False, budget: int | None = None) -> list[str]:
    """Recompute remaining BN statistics and re-standardise folded layers; returns the nodes changed.

    One pass of the original gives the target statistics; one propagation of the pruned model visits the
    nodes in graph order: a BN reads its input's statistics before it runs, a folded layer runs, reads
    its output's, and its cached output gets the same affine correction as its weights, so everything
    downstream sees the recalibrated layer without running it again."""
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
    order = {n.name: k for k, n in enumerate(rec.pruned.graph.node)}
    changed = []
    with Propagation(rec.pruned, batches, budget) as prop:
        for n in bar(
            sorted(list(layers) + bns, key=order.__getitem__), desc="recalibrate", unit="layer", enabled=progress
        ):
            node = rec.nodes[n]
            if n not in layers:
                prop.run_until(n)
                _set_bn(rec, n, *prop.moments(node.input[0], 1))
                changed.append(n)
                continue
            prop.run_through(n)
            out, axis = node.output[0], layers[n].channel_axis
            if out not in prop.frontier:  # nothing reads it: nothing to correct
                continue
            mu_o, var_o = orig[out]
            now = prop.moments(out, axis)
            kept = rec.kept(out, axis, len(mu_o))
            if len(kept) != len(now[0]):
                rec.skipped[n] = "recalibration: output channels do not correspond"
                continue
            s, t = _scale_shift(rec, layers[n], (mu_o[kept], var_o[kept]), now)
            prop.update(out, lambda y, s=s, t=t, axis=axis: _affine(y, s, t, axis))
            changed.append(n)
    return changed


def _affine(y: np.ndarray, s: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * y.ndim
    shape[axis % y.ndim] = len(s)
    return (y * s.reshape(shape) + t.reshape(shape)).astype(y.dtype)
