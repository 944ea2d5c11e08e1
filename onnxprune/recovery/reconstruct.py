"""Least-squares reconstruction (He et al. 2017, *Channel Pruning*; ThiNet's rescaling generalised).

Every layer that lost input channels gets its kept weights (and its bias) refitted so that, fed with the
*pruned* model's activations -- upstream layers already refitted -- its output matches the original
model's output on calibration data:

    min_W ||Y_orig - [X_pruned 1] W||^2 + lam ||W - W_0||^2

The ridge pulls towards the layer's current weights W_0 rather than towards zero, so a layer with fewer
sample rows than inputs (a wide Flatten->Gemm on a small calibration set) stays near the plain pruned
weights instead of collapsing; ``lam = ridge * trace(X'X) / K`` makes ``ridge`` scale-free. Normal
equations are accumulated batch by batch, so memory is K^2 per group whatever the number of samples.
"""

from __future__ import annotations

import time

import numpy as np
from onnx import numpy_helper

from ..linear import Layer, bias_vector, from_mats, outputs_at, patches, positions, set_weight, to_mats
from ..progress import bar
from .passes import Recovery, stream
from .propagate import Propagation


def _out_channels(layer: Layer, w: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return w.shape[0]
    return w.shape[0] if layer.trans_b else w.shape[1]


def sample_targets(rec: Recovery, layers: list[Layer], batches, samples: int, seed: int):
    """Positions and the original model's (kept) outputs there, per layer and batch."""
    per_batch = max(1, -(-samples // len(batches)))
    pos: dict[str, list] = {lay.node: [] for lay in layers}
    targets: dict[str, list] = {lay.node: [] for lay in layers}
    outs = {lay.node: rec.orig_nodes[lay.node].output[0] for lay in layers}
    kept: dict[str, np.ndarray] = {}

    def take(b, arrs):
        for k, lay in enumerate(layers):
            y = np.asarray(arrs[outs[lay.node]])
            p = positions(lay, y.shape, per_batch, np.random.default_rng([seed, k, b]))
            if lay.node not in kept:
                kept[lay.node] = rec.kept(outs[lay.node], lay.channel_axis, y.shape[lay.channel_axis])
            pos[lay.node].append(p)
            targets[lay.node].append(outputs_at(lay, y, p)[:, kept[lay.node]].astype(np.float64))

    stream(rec.original.model, sorted(set(outs.values())), batches, rec.original.shapes, take)
    return pos, targets


def reconstruct(
    rec: Recovery,
    batches,
    samples: int = 8192,
    ridge: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    budget: int | None = None,
    timings: dict | None = None,
) -> list[str]:
    """Refit every refittable layer that lost inputs; returns the layers changed (in graph order).

    One pass of the original model collects the targets at sampled positions; one propagation of the
    pruned model (``Propagation``) brings each layer its inputs with every upstream layer already refitted.
    ``timings`` (if given) receives the seconds of the original pass, the propagation and the solves."""
    timings = {} if timings is None else timings
    layers = rec.layers([n for n in rec.changed_starts() if rec.lost_inputs(n) is not None])
    if not layers:
        return []
    t0 = time.perf_counter()
    pos, targets = sample_targets(rec, layers, batches, samples, seed)
    timings["original_pass"] = round(time.perf_counter() - t0, 4)
    order = {n.name: k for k, n in enumerate(rec.pruned.graph.node)}
    changed = []
    t1 = time.perf_counter()
    with Propagation(rec.pruned, batches, budget) as prop:
        for lay in bar(
            sorted(layers, key=lambda lay: order[lay.node]), desc="reconstruct", unit="layer", enabled=progress
        ):
            prop.run_until(lay.node)
            w = numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64)
            o = _out_channels(lay, w)
            if targets[lay.node][0].shape[1] != o:
                rec.skipped[lay.node] = f"output channels do not correspond ({targets[lay.node][0].shape[1]} vs {o})"
                continue
            node = rec.nodes[lay.node]
            acc: tuple[np.ndarray, np.ndarray] | None = None
            for b, x in enumerate(prop.tensor(node.input[0])):
                a, c = _normal_equations(lay, node, x, pos[lay.node][b], w.shape, targets[lay.node][b])
                acc = (a, c) if acc is None else (acc[0] + a, acc[1] + c)
            if acc is None:  # no calibration batch
                continue
            _solve(rec, lay, w, *acc, ridge)
            changed.append(lay.node)
        timings["propagation"] = round(prop.seconds_run, 4)
        timings["segments"] = prop.segments
    timings["solves"] = round(time.perf_counter() - t1 - prop.seconds_run, 4)
    return changed


def _normal_equations(lay: Layer, node, x: np.ndarray, pos, w_shape, target: np.ndarray):
    """One batch's X'X and X'Y per group, the intercept column included where the layer has a bias."""
    p = patches(lay, node, x, pos, w_shape[2:])
    if lay.op_type != "MatMul":  # intercept column: the bias is refitted too
        p = np.concatenate([p, np.ones(p.shape[:2] + (1,))], axis=2)
    # one batch's products in float32 (a few hundred rows: relative error ~1e-6), summed over batches in
    # float64 by the caller; float64 products took a third of the recovery time
    p32 = p.astype(np.float32)
    y = target.reshape(len(p), lay.groups, -1).astype(np.float32)
    pt = p32.transpose(1, 2, 0)
    return (pt @ p32.transpose(1, 0, 2)).astype(np.float64), (pt @ y.transpose(1, 0, 2)).astype(np.float64)


def _solve(rec: Recovery, lay: Layer, w: np.ndarray, xtx: np.ndarray, xty: np.ndarray, ridge: float) -> None:
    """Ridge towards the current weights: min ||Y - XW||^2 + lam ||W - W0||^2, lam scale-free."""
    m0 = to_mats(lay, w)
    if lay.op_type != "MatMul":
        b0 = bias_vector(lay, rec.inits, _out_channels(lay, w)).reshape(lay.groups, 1, -1)
        m0 = np.concatenate([m0, b0], axis=1)
    k = xtx.shape[-1]
    lam = ridge * np.trace(xtx, axis1=1, axis2=2) / k + 1e-12
    m = np.linalg.solve(xtx + lam[:, None, None] * np.eye(k)[None], xty + lam[:, None, None] * m0)
    if lay.op_type == "MatMul":
        set_weight(lay, rec.pruned, rec.inits, from_mats(lay, m, w.shape), None)
    else:
        set_weight(lay, rec.pruned, rec.inits, from_mats(lay, m[:, :-1], w.shape), m[:, -1].reshape(-1))
