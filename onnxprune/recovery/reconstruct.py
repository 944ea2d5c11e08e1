"""Least-squares reconstruction (He et al. 2017, *Channel Pruning*; ThiNet's rescaling generalised).

Every layer that lost input channels gets its kept weights (and its bias) refitted so that, fed with the
*pruned* model's activations -- upstream layers already refitted -- its output matches the original
model's output on calibration data:

    min_W ||Y_orig - [X_pruned 1] W||^2 + lam ||W - W_0||^2

The ridge pulls towards the layer's current weights W_0 rather than towards zero, so a layer with fewer
sample rows than inputs (a wide Flatten->Gemm on a small calibration set) stays near the plain pruned
weights instead of collapsing; ``lam = ridge * trace(X'X) / K`` makes ``ridge`` scale-free. Normal
equations are accumulated a few thousand sampled rows at a time (at least K), so memory is about K^2 per
group whatever the number of samples.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..linear import Layer, bias_vector, from_mats, outputs_at, patches, positions, set_weight, to_mats
from .passes import Recovery, stream


def _out_channels(layer: Layer, w: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return w.shape[0]
    return w.shape[0] if layer.trans_b else w.shape[1]


class TargetSampler:
    """Collects, during the original model's pass, each layer's sampled positions and the original
    (kept) outputs there: ``names`` are the tensors it reads, calling it takes one batch of them."""

    def __init__(self, rec: Recovery, layers: list[Layer], n_batches: int, samples: int, seed: int):
        self.rec, self.layers, self.seed = rec, layers, seed
        self.per_batch = max(1, -(-samples // max(n_batches, 1)))
        self.pos: dict[str, list] = {lay.node: [] for lay in layers}
        self.targets: dict[str, list] = {lay.node: [] for lay in layers}
        self.outs = {lay.node: rec.orig_nodes[lay.node].output[0] for lay in layers}
        self.names = sorted(set(self.outs.values()))
        self._kept: dict[str, np.ndarray] = {}
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # a batch whose rows are still coming

    def __call__(self, b: int, arrs: dict, rows=None) -> None:
        """One batch, or rows ``(start, stop, batch_rows)`` of it: positions are drawn over the whole
        batch when its first rows arrive, so a batch run a few rows at a time samples what it would
        have sampled whole. Targets are kept in float32, the precision the normal equations use."""
        for k, lay in enumerate(self.layers):
            if self.outs[lay.node] not in arrs:  # read in another chunk of the same pass (``stream``)
                continue
            y = np.asarray(arrs[self.outs[lay.node]])
            r0, r1, n = rows or (0, len(y), len(y))
            if lay.node not in self._kept:
                self._kept[lay.node] = self.rec.kept(self.outs[lay.node], lay.channel_axis, y.shape[lay.channel_axis])
            kept = self._kept[lay.node]
            if r0 == 0:
                p = positions(lay, (n, *y.shape[1:]), self.per_batch, np.random.default_rng([self.seed, k, b]))
                if r1 == n:  # the whole batch at once
                    self.pos[lay.node].append(p)
                    self.targets[lay.node].append(outputs_at(lay, y, p, kept).astype(np.float32, copy=False))
                    continue
                self._open[lay.node] = (p, np.empty((len(p), len(kept)), np.float32))
            p, t = self._open[lay.node]
            # the positions in these rows, shifted to them (a dense layer's positions are flat rows)
            per_row = 1 if lay.op_type == "Conv" else int(np.prod(y.shape[1:-1], dtype=np.int64))
            first = p[:, 0] if lay.op_type == "Conv" else p // per_row
            sel = (first >= r0) & (first < r1)
            local = p[sel].copy()
            if lay.op_type == "Conv":
                local[:, 0] -= r0
            else:
                local -= r0 * per_row
            t[sel] = outputs_at(lay, y, local, kept)
            if r1 == n:
                self.pos[lay.node].append(p)
                self.targets[lay.node].append(t)
                del self._open[lay.node]


def sample_targets(rec: Recovery, layers: list[Layer], batches, samples: int, seed: int):
    """Positions and the original model's (kept) outputs there, per layer and batch (one original pass)."""
    sampler = TargetSampler(rec, layers, len(batches), samples, seed)
    stream(rec.original.model, sampler.names, batches, rec.original.shapes, sampler, arrays=rec.original.consts)
    return sampler.pos, sampler.targets


def refittable(rec: Recovery) -> list[Layer]:
    """The layers that lost input channels and can be refitted (the others land in ``rec.skipped``)."""
    return rec.layers([n for n in rec.changed_starts() if rec.lost_inputs(n) is not None])


def fit_layer(rec: Recovery, lay: Layer, inputs, pos: list, targets: list, ridge: float) -> bool:
    """Refit ``lay`` from the pruned model's per-batch ``inputs`` (its data input, upstream already
    recovered) to the original's ``targets`` at ``pos``; False when it cannot be fitted."""
    w = numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64)
    o = _out_channels(lay, w)
    if targets[0].shape[1] != o:
        rec.skipped[lay.node] = f"output channels do not correspond ({targets[0].shape[1]} vs {o})"
        return False
    node = rec.nodes[lay.node]
    acc: tuple[np.ndarray, np.ndarray] | None = None
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for b, x in enumerate(inputs):
        rows.append(_sample_rows(lay, node, x, pos[b], w.shape, targets[b]))
        if sum(len(p) for p, _ in rows) >= max(rows[0][0].shape[-1], FLUSH_ROWS):
            acc = _add_products(acc, rows)
            rows = []
    if rows:
        acc = _add_products(acc, rows)
    if acc is None:  # no calibration batch
        return False
    _solve(rec, lay, w, *acc, ridge)
    return True


#: sampled rows gathered before their products are taken (at least the layer's width K)
FLUSH_ROWS = 1024


def _sample_rows(lay: Layer, node, x: np.ndarray, pos, w_shape, target: np.ndarray):
    """One batch's sampled inputs (rows, groups, K), the intercept column included where the layer has a
    bias, and targets (rows, groups, O / groups), in float32."""
    p32 = patches(lay, node, x, pos, w_shape[2:], np.float32)
    if lay.op_type != "MatMul":  # intercept column: the bias is refitted too
        p32 = np.concatenate([p32, np.ones(p32.shape[:2] + (1,), np.float32)], axis=2)
    return p32, target.reshape(len(p32), lay.groups, -1).astype(np.float32)


def _add_products(acc, rows: list[tuple[np.ndarray, np.ndarray]]):
    """X'X and X'Y per group of the gathered rows, added to ``acc`` in float64.

    Why rows are gathered over batches first: the products are taken in float32 (float64 ones took a
    third of the recovery time; relative error ~1e-6 over a few thousand rows) and each addition to the
    float64 sums converts K^2 values; taken per batch, a wide layer paid that conversion once per batch
    (vgg11's 4,609-input Gemm, one row per image: on 4,096 images in batches of 64, 64 conversions of
    21 M values for 64 rows each).
    Flushing once at least max(K, FLUSH_ROWS) rows are in keeps the buffer about the size of the
    float64 sums (a few MB for narrower layers)."""
    p32 = np.concatenate([p for p, _ in rows]) if len(rows) > 1 else rows[0][0]
    y = np.concatenate([t for _, t in rows]) if len(rows) > 1 else rows[0][1]
    pt = p32.transpose(1, 2, 0)
    a = (pt @ p32.transpose(1, 0, 2)).astype(np.float64)
    c = (pt @ y.transpose(1, 0, 2)).astype(np.float64)
    return (a, c) if acc is None else (acc[0] + a, acc[1] + c)


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
