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

from ..groups.rules._util import attr
from ..linear import (
    RECURRENT,
    Layer,
    as_layer,
    bias_vector,
    effective_bias,
    from_mats,
    outputs_at,
    patches,
    positions,
    set_weight,
    to_mats,
)
from .blas import threads_for
from .passes import Recovery, stream


def _out_channels(layer: Layer, w: np.ndarray) -> int:
    if layer.op_type in RECURRENT:  # every gate of every direction
        return w.shape[0] * w.shape[1]
    if layer.op_type == "Conv":
        return w.shape[0]
    return w.shape[0] if layer.trans_b else w.shape[1]


class TargetSampler:
    """Collects, during the original model's pass, each layer's sampled positions and the original
    (kept) outputs there: ``names`` are the tensors it reads, calling it takes one batch of them.

    Where a layer's original input row is narrower than its kept output row (a 1x1 expansion, a
    classifier or a recogniser's 18,385-way head), the sampler keeps the original *inputs* at the
    sampled positions, with a column of ones, and ``maps[node]`` the original weights M (kept outputs
    only, bias as the last row): the targets are then ``rows @ M`` and the refit's X'Y is X'rows @ M.
    Why: the layer is linear, so nothing is lost, and the recogniser's head kept 600 MB of targets
    (37 MB a batch, fresh pages each, 80 ms apiece on this VM) for 81 inputs; ``via_inputs=False`` keeps
    the outputs always (the reference the tests compare with)."""

    def __init__(self, rec: Recovery, layers: list[Layer], n_batches: int, samples: int, seed: int, via_inputs=True):
        self.rec, self.layers, self.seed = rec, layers, seed
        self.per_batch = {lay.node: max(1, -(-layer_samples(rec, lay, samples) // max(n_batches, 1))) for lay in layers}
        self.pos: dict[str, list] = {lay.node: [] for lay in layers}
        self.targets: dict[str, list] = {lay.node: [] for lay in layers}
        self.outs = {lay.node: rec.orig_nodes[lay.node].output[0] for lay in layers}
        self.maps: dict[str, np.ndarray] = {}
        self._orig: dict[str, Layer] = {}
        self.reads = dict(self.outs)  # the tensor each layer's targets are taken from
        orig_inits = {t.name: t for t in rec.original.model.graph.initializer}
        # a recurrent layer's targets are always computed from its inputs (``_input_map``)
        for lay in layers if via_inputs else [lay for lay in layers if lay.op_type in RECURRENT]:
            found = _input_map(rec, lay, orig_inits)
            if found is not None:
                self._orig[lay.node], self.maps[lay.node] = found
                self.reads[lay.node] = rec.orig_nodes[lay.node].input[0]
        self.names = sorted(set(self.reads.values()))
        self._kept: dict[str, np.ndarray] = {}
        self._open: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # a batch whose rows are still coming

    def _out_shape(self, lay: Layer, v: np.ndarray, n: int) -> tuple[int, ...]:
        """The layer's output shape for a batch of ``n`` rows, from what it read."""
        if lay.node not in self.maps:
            return (n, *v.shape[1:])
        o = self.maps[lay.node].shape[1]
        if lay.op_type == "Conv":  # 1x1, unpadded (``_input_map``)
            sh, sw = attr(self.rec.orig_nodes[lay.node], "strides", [1, 1])
            return (n, o, (v.shape[2] - 1) // sh + 1, (v.shape[3] - 1) // sw + 1)
        return (n, *v.shape[1:-1], o)

    def _kept_channels(self, lay: Layer, dim: int) -> np.ndarray:
        """The original output channels of ``lay`` (``dim`` of them) that the pruned model keeps."""
        if lay.node not in self._kept:
            self._kept[lay.node] = self.rec.kept(self.outs[lay.node], lay.channel_axis, dim)
        return self._kept[lay.node]

    def _values(self, lay: Layer, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Targets at ``pos``: the kept outputs, or the original input rows with a column of ones."""
        if lay.node not in self.maps:
            return outputs_at(lay, v, pos, self._kept_channels(lay, v.shape[lay.channel_axis]))
        orig = self._orig[lay.node]
        node = self.rec.orig_nodes[lay.node]
        rows = patches(orig, node, v, pos, (1, 1), np.float32)[:, 0]
        return np.concatenate([rows, np.ones((len(rows), 1), np.float32)], axis=1)

    def __call__(self, b: int, arrs: dict, rows=None) -> None:
        """One batch, or rows ``(start, stop, batch_rows)`` of it: positions are drawn over the whole
        batch when its first rows arrive, so a batch run a few rows at a time samples what it would
        have sampled whole. Targets are kept in float32, the precision the normal equations use."""
        for k, lay in enumerate(self.layers):
            if self.reads[lay.node] not in arrs:  # read in another chunk of the same pass (``stream``)
                continue
            v = np.asarray(arrs[self.reads[lay.node]])
            r0, r1, n = rows or (0, len(v), len(v))
            if r0 == 0 and r1 == n:
                # the whole batch: positions span the tensor as it is, whose first axis need not be the
                # batch's (a CRNN's time-major (sequence, batch, features) LSTM input or head; sampled
                # as batch rows, one time step of each sequence was all its refit saw)
                r1 = n = len(v)
            if r0 == 0:
                out_shape = self._out_shape(lay, v, n)
                p = positions(lay, out_shape, self.per_batch[lay.node], np.random.default_rng([self.seed, k, b]))
                if r1 == n:  # the whole batch at once
                    self.pos[lay.node].append(p)
                    self.targets[lay.node].append(self._values(lay, v, p).astype(np.float32, copy=False))
                    continue
                if lay.node in self.maps:
                    width = self.maps[lay.node].shape[0]
                else:
                    width = len(self._kept_channels(lay, out_shape[lay.channel_axis]))
                self._open[lay.node] = (p, np.empty((len(p), width), np.float32))
            p, t = self._open[lay.node]
            # the positions in these rows, shifted to them (a dense layer's positions are flat rows)
            per_row = 1 if lay.op_type == "Conv" else int(np.prod(v.shape[1:-1], dtype=np.int64))
            first = p[:, 0] if lay.op_type == "Conv" else p // per_row
            sel = (first >= r0) & (first < r1)
            local = p[sel].copy()
            if lay.op_type == "Conv":
                local[:, 0] -= r0
            else:
                local -= r0 * per_row
            t[sel] = self._values(lay, v, local)
            if r1 == n:
                self.pos[lay.node].append(p)
                self.targets[lay.node].append(t)
                del self._open[lay.node]


#: sampled rows a grouped (depthwise) refit takes per unknown of a group (its K inputs and the bias)
ROWS_PER_INPUT = 256
#: the fewest rows a refit takes
MIN_ROWS = 1024


def layer_samples(rec: Recovery, lay: Layer, samples: int) -> int:
    """Positions sampled for ``lay``: ``samples``, or for a grouped layer ROWS_PER_INPUT per unknown of
    one group where that is fewer.

    Why: a depthwise layer's every channel is its own least squares of K + 1 unknowns, 10 for 3x3, and
    8,192 rows for them only cost time (sampling, gathering the windows and the products scale with the
    rows: on MobileNetV2 at 28x28, 4,096 images, its solves 0.56 -> 0.33 s). Why not the same for
    ungrouped layers: 128 rows per unknown there (a 1x1 layer of 16 inputs: 2,176 rows) lost a point of
    the PP-OCRv5 recogniser's character accuracy at -30% MACs over three seeds (61.92 -> 60.89 mean);
    grouped layers alone at 256 per unknown measured 61.92 -> 61.68, within the seeds' spread (60.6-62.8)."""
    if lay.groups == 1:
        return samples
    dims = rec.inits[lay.weight].dims
    k = int(np.prod(dims[1:]))  # a Conv's inputs per group: C / groups x kernel taps
    return min(samples, max(MIN_ROWS, ROWS_PER_INPUT * (k + 1)))


def _input_map(rec: Recovery, lay: Layer, orig_inits: dict) -> tuple[Layer, np.ndarray] | None:
    """(the original layer, M) when ``lay``'s original input rows are narrower than its kept outputs
    and its targets can be taken from them (ungrouped; a Conv 1x1 and unpadded, so an output position
    reads one input pixel), else None. M is (K + 1, kept outputs) in float64, the bias last.
    ``orig_inits``: the original model's initializers by name."""
    node = rec.orig_nodes[lay.node]
    orig, _ = as_layer(node, orig_inits, {})
    if orig is None or orig.groups != 1:
        return None
    w0 = rec.original.consts[orig.weight].astype(np.float64)
    if orig.op_type == "Conv" and (w0.shape[2:] != (1, 1) or any(attr(node, "pads", [0, 0, 0, 0]))):
        return None
    mats = to_mats(orig, w0)[0]  # K x O
    if orig.op_type in RECURRENT:  # its product X W^T + Wb is no tensor: the targets can only be computed
        kept = np.arange(mats.shape[1])
    else:
        kept = rec.kept(node.output[0], lay.channel_axis, mats.shape[1])
        if mats.shape[0] + 1 >= len(kept):
            return None
    bias = np.zeros(mats.shape[1])
    if orig.bias is not None:
        bias = effective_bias(orig, rec.original.consts[orig.bias], mats.shape[1])
    return orig, np.concatenate([mats[:, kept], bias[None, kept]])


def sample_targets(rec: Recovery, layers: list[Layer], batches, samples: int, seed: int):
    """Positions and the original model's (kept) outputs there, per layer and batch (one original pass)."""
    sampler = TargetSampler(rec, layers, len(batches), samples, seed, via_inputs=False)
    stream(rec.original.model, sampler.names, batches, rec.original.shapes, sampler, arrays=rec.original.consts)
    return sampler.pos, sampler.targets


def refittable(rec: Recovery) -> list[Layer]:
    """The layers that lost input channels and can be refitted (the others land in ``rec.skipped``)."""
    return rec.layers([n for n in rec.changed_starts() if rec.lost_inputs(n) is not None])


def fit_layer(
    rec: Recovery, lay: Layer, inputs, pos: list, targets: list, ridge: float, target_map: np.ndarray | None = None
) -> bool:
    """Refit ``lay`` from the pruned model's per-batch ``inputs`` (its data input, upstream already
    recovered) to the original's ``targets`` at ``pos`` (``targets @ target_map`` where a map is given,
    see ``TargetSampler``); False when it cannot be fitted."""
    w = numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64)
    o = _out_channels(lay, w)
    width = targets[0].shape[1] if target_map is None else target_map.shape[1]
    if width != o:
        rec.skipped[lay.node] = f"output channels do not correspond ({width} vs {o})"
        return False
    node = rec.nodes[lay.node]
    intercept = lay.op_type != "MatMul"  # the bias is refitted too
    acc: tuple[np.ndarray, np.ndarray] | None = None
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for b, x in enumerate(inputs):
        rows.append(_sample_rows(lay, node, x, pos[b], w.shape, targets[b]))
        if sum(len(p) for p, _ in rows) >= max(rows[0][0].shape[-1] + intercept, FLUSH_ROWS):
            acc = _add_products(acc, rows, intercept)
            rows = []
    if not rows and acc is None:  # no calibration batch
        return False
    m0 = _current_mats(rec, lay, w)
    if acc is None and sum(len(p) for p, _ in rows) < rows[0][0].shape[-1] + intercept:  # fewer rows than inputs
        _write(rec, lay, w, _solve_rows(rows, intercept, m0, ridge, target_map))
        return True
    if rows:
        acc = _add_products(acc, rows, intercept)
    assert acc is not None  # rows, or products already taken
    xtx, xty = acc
    if target_map is not None:
        xty = xty @ target_map
    _write(rec, lay, w, _solve(xtx, xty, m0, ridge))
    return True


#: how many float32 GEMM operations one float64 solve operation is counted as when choosing BLAS's threads
#: (``blas.threads_for``): LAPACK's float64 LU ran at about a quarter of the float32 products' rate here
#: (the recogniser's refits: 5e9 flops of solve in 0.10 s, 1.5e10 of products in 0.04 s, two threads)
FLOAT64_WEIGHT = 4.0

#: sampled rows gathered before their products are taken (at least the layer's width K)
FLUSH_ROWS = 1024


def _sample_rows(lay: Layer, node, x: np.ndarray, pos, w_shape, target: np.ndarray):
    """One batch's sampled inputs (rows, groups, K) and targets (rows, groups, O / groups), in float32."""
    p32 = patches(lay, node, x, pos, w_shape[2:], np.float32)
    return p32, target.reshape(len(p32), lay.groups, -1).astype(np.float32, copy=False)


def _add_products(acc, rows: list[tuple[np.ndarray, np.ndarray]], intercept: bool):
    """X'X and X'Y per group of the gathered rows, X with a column of ones where ``intercept``, added to
    ``acc`` in float64.

    Why rows are gathered over batches first: the products are taken in float32 (float64 ones took a
    third of the recovery time; relative error ~1e-6 over a few thousand rows) and each addition to the
    float64 sums converts K^2 values; taken per batch, a wide layer paid that conversion once per batch
    (vgg11's 4,609-input Gemm, one row per image: on 4,096 images in batches of 64, 64 conversions of
    21 M values for 64 rows each).
    Flushing once at least max(K, FLUSH_ROWS) rows are in keeps the buffer about the size of the
    float64 sums (a few MB for narrower layers).
    Why the rows are copied group-major, with the column of ones written into the copy: the sampled
    windows come channel-last (rows, taps, channels), and numpy's stacked matmul over such strides ran
    2x slower than the copy plus the matmul (the recogniser's 320-channel 5x5 depthwise layers: 42 ->
    21 ms per 1,024 rows); summing the rows for the intercept separately cost more than the copy."""
    y = np.concatenate([t for _, t in rows]) if len(rows) > 1 else rows[0][1]
    n, (_, g, k) = len(y), rows[0][0].shape
    if intercept or g > 1:
        q = np.empty((g, n, k + intercept), np.float32)
        at = 0
        for p, _ in rows:  # each batch's rows straight into the copy
            q[:, at : at + len(p), :k] = p.transpose(1, 0, 2)
            at += len(p)
        if intercept:
            q[:, :, k] = 1.0
    else:  # one group, no intercept: BLAS reads the transposed operand in place
        q = (np.concatenate([p for p, _ in rows]) if len(rows) > 1 else rows[0][0]).transpose(1, 0, 2)
    qt = q.transpose(0, 2, 1)
    with threads_for(2.0 * q.size * (q.shape[2] + y.shape[2])):
        a = (qt @ q).astype(np.float64)
        c = (qt @ np.ascontiguousarray(y.transpose(1, 0, 2))).astype(np.float64)
    return (a, c) if acc is None else (acc[0] + a, acc[1] + c)


def _current_mats(rec: Recovery, lay: Layer, w: np.ndarray) -> np.ndarray:
    """The layer's current (G, K [+ 1], O / G) matrices, the bias as the last row where it has one."""
    m0 = to_mats(lay, w)
    if lay.op_type != "MatMul":
        b0 = bias_vector(lay, rec.inits, _out_channels(lay, w)).reshape(lay.groups, 1, -1)
        m0 = np.concatenate([m0, b0], axis=1)
    return m0


def _solve(xtx: np.ndarray, xty: np.ndarray, m0: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge towards the current weights: min ||Y - XW||^2 + lam ||W - W0||^2, lam scale-free."""
    k = xtx.shape[-1]
    lam = ridge * np.trace(xtx, axis1=1, axis2=2) / k + 1e-12
    with threads_for(FLOAT64_WEIGHT * len(xtx) * k * k * (k / 1.5 + 2 * xty.shape[-1])):
        return np.linalg.solve(xtx + lam[:, None, None] * np.eye(k)[None], xty + lam[:, None, None] * m0)


def _solve_rows(rows, intercept: bool, m0: np.ndarray, ridge: float, target_map: np.ndarray | None) -> np.ndarray:
    """The same ridge solution from the R rows themselves where R < K, in its dual form:
    W = W0 + X'(XX' + lam I)^-1 (Y - X W0), an R x R system instead of K x K (the push-through
    identity; lam = ridge * trace(X'X) / K as in ``_solve``, trace(X'X) being the rows' sum of squares).
    Why: a wide Flatten->Gemm on a few hundred calibration images (vgg11's 4,609 inputs on 512
    Fashion-MNIST images: the K x K solve was a quarter of its recovery; a 224x224 VGG's 25,088 inputs
    would need a 5 GB float64 X'X)."""
    x = np.concatenate([p for p, _ in rows]).astype(np.float64).transpose(1, 0, 2)  # G x R x K
    y = np.concatenate([t for _, t in rows]).astype(np.float64).transpose(1, 0, 2)
    if target_map is not None:
        y = y @ target_map
    if intercept:
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
    k = x.shape[-1]
    lam = ridge * np.einsum("grk,grk->g", x, x) / k + 1e-12
    g, r = x.shape[:2]
    with threads_for(FLOAT64_WEIGHT * g * r * (2 * r * k + r * r / 1.5 + 4 * k * y.shape[-1])):
        gram = x @ x.transpose(0, 2, 1) + lam[:, None, None] * np.eye(r)[None]
        return m0 + x.transpose(0, 2, 1) @ np.linalg.solve(gram, y - x @ m0)


def _write(rec: Recovery, lay: Layer, w: np.ndarray, m: np.ndarray) -> None:
    if lay.op_type == "MatMul":
        set_weight(lay, rec.pruned, rec.inits, from_mats(lay, m, w.shape), None)
    else:
        set_weight(lay, rec.pruned, rec.inits, from_mats(lay, m[:, :-1], w.shape), m[:, -1].reshape(-1))
