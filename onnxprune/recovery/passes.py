"""What every recovery step shares: the original/pruned correspondence, waves, and streamed data passes.

Recovery edits the pruned model layer by layer in graph order, each layer seeing the already recovered
layers upstream (He et al. 2017's sequential refit). Layers are grouped in *waves*: a wave holds layers none
of which reads the output of another layer still to be fitted, so one pass over the calibration data serves
a whole wave (a chain needs one pass per layer, a wide block one pass for all its branches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..data import batch_rows, batches
from ..errors import OnnxPruneError
from ..groups import Analysis
from ..linear import LINEAR, RECURRENT, Layer, as_layer, weight_uses
from ..load import Graph
from ..plan import Keep, PruningPlan
from ..runtime import session_with_outputs
from .propagate import ChannelSums

#: consumers whose data input carries its channels on axis 1 (the others: on the last axis)
CHANNELS_FIRST = ("Conv", "ConvTranspose", "BatchNormalization")

#: other ops with weights that can lose inputs: the report names them among the layers left as they are
WEIGHTED = ("ConvTranspose", "Einsum")

#: bytes of intermediate tensors one batch may hold when many are read from the original at once
BATCH_BUDGET = 1 << 30


@dataclass
class Recovery:
    """The original graph with its analysis and plan, and the pruned model edited in place."""

    original: Graph
    analysis: Analysis
    plan: PruningPlan
    pruned: onnx.ModelProto
    keep: Keep = field(init=False)
    inits: dict = field(init=False)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.keep = Keep(self.analysis, self.plan)
        self.refresh()

    def refresh(self) -> None:
        self.inits = {t.name: t for t in self.pruned.graph.initializer}
        self.nodes = {n.name: n for n in self.pruned.graph.node}
        self.orig_nodes = {n.name: n for n in self.original.model.graph.node}

    def kept(self, tensor: str, axis: int, dim: int) -> np.ndarray:
        """Indices of the original ``tensor``'s ``axis`` (of size ``dim``) that the pruned model keeps."""
        labels = self.analysis.expected.get(tensor)
        if labels is None:
            return np.arange(dim)
        axis = axis % labels.ndim
        if labels.shape[axis] == 1:
            return np.arange(dim)
        return self.keep.along(labels, axis)

    def lost_inputs(self, name: str) -> np.ndarray | None:
        """Boolean per original input channel of node ``name``'s data input (True = kept), or None when the
        node lost none."""
        node = self.orig_nodes.get(name)
        if node is None:
            return None
        labels = self.analysis.expected.get(node.input[0])
        if labels is None:
            return None
        axis = 1 if node.op_type in CHANNELS_FIRST else labels.ndim - 1
        if labels.shape[axis] == 1:
            return None
        kept = self.keep.kept_along(labels, axis)
        return None if kept.all() else kept

    def changed_starts(self) -> list[str]:
        """Nodes whose kept outputs differ from the original's: consumers that lost inputs, and
        normalisations whose statistics ran over removed channels."""
        starts = [n.name for n in self.pruned.graph.node if self.lost_inputs(n.name) is not None]
        starts += [name for name, labels, _ in self.analysis.stat_masks if not self.keep.mask(labels).all()]
        return sorted(set(starts), key=[n.name for n in self.pruned.graph.node].index)

    def layers(self, names) -> list[Layer]:
        """Refittable layers among ``names``; the others are recorded in ``skipped`` with the reason."""
        uses = weight_uses(self.pruned)
        out = []
        for name in names:
            layer, why = as_layer(self.nodes[name], self.inits, uses)
            if layer is None:
                op = self.nodes[name].op_type
                if op in LINEAR or op in RECURRENT:
                    self.skipped[name] = why
                elif op in WEIGHTED:
                    self.skipped[name] = f"{op}: no least-squares refit for this op"
                continue
            out.append(layer)
        return out


def downstream(model: onnx.ModelProto, starts) -> list[str]:
    """``starts`` and every node that reads (transitively) one of their outputs, in graph order."""
    hot: set[str] = set()
    out = []
    starts = set(starts)
    for node in model.graph.node:
        if node.name in starts or any(i in hot for i in node.input):
            hot.update(o for o in node.output if o)
            out.append(node.name)
    return out


def waves(model: onnx.ModelProto, units) -> list[list[str]]:
    """``units`` split into waves: a unit's wave is one more than the latest unit on any path into it."""
    units = set(units)
    depth: dict[str, int] = {}
    out: dict[int, list[str]] = {}
    for node in model.graph.node:
        d = max((depth.get(i, 0) for i in node.input if i), default=0)
        if node.name in units:
            out.setdefault(d, []).append(node.name)
            d += 1
        for o in node.output:
            depth[o] = d
    return [out[k] for k in sorted(out)]


def load_batches(data, graph: Graph) -> list:

    if data is None:
        raise OnnxPruneError("recovery needs calibration data: pass --calib (e.g. data.npz, a folder of images)")
    return batches(data, graph)  # read once: every wave streams the same batches


def stream(
    model: onnx.ModelProto,
    names: list[str],
    batches,
    shapes: dict,
    fn,
    budget: int = BATCH_BUDGET,
    arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Run ``model`` on every batch and call ``fn(batch_index, {name: array}, rows)``, ``rows`` being
    ``(start, stop, batch_rows)``: the rows of the batch the arrays hold. ``arrays``: the model's
    weights already held as arrays (a loaded graph's ``consts``), given to onnxruntime as they are.

    When one batch of all ``names`` would exceed ``budget`` bytes, each batch is run a few rows at a
    time with every name read at once (one pass of the model over the data; resnet50 at 224x224 has
    53 outputs to refit, 1.3 GB a batch of 32); only where the tensors are not batch-major (or a
    single row is over the budget) are the names split over several passes instead."""
    if not names:
        return
    n = batch_rows(batches[0][0]) if batches else 1
    est = {name: _row_bytes(shapes.get(name) or (1,)) for name in names}
    if sum(est.values()) * n > budget and n > 1 and sum(est.values()) <= budget:
        rows = max(1, budget // max(sum(est.values()), 1))
        if _stream_rows(model, names, batches, shapes, fn, rows, arrays):
            return
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name in names:
        if cur and size + est[name] * n > budget:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += est[name] * n
    chunks.append(cur)
    for chunk in chunks:
        sess = session_with_outputs(model, chunk, arrays)
        for b, (feeds, _) in enumerate(batches):
            rows_b = batch_rows(feeds)
            fn(b, dict(zip(chunk, sess.run(chunk, feeds))), (0, rows_b, rows_b))


def _follows_rows(out: np.ndarray, rows: int, shape) -> bool:
    """Whether ``out`` holds the ``rows`` rows run on its first axis: its length is the rows and its
    other axes are as analysed (a time-major (T, N, C) tensor fails one or the other)."""
    if np.ndim(out) == 0 or len(out) != rows:
        return False
    return shape is None or len(shape) != out.ndim or tuple(out.shape[1:]) == tuple(shape[1:])


def _row_bytes(shape) -> int:
    """float32 bytes of one batch row of a tensor of this (analysis-time) shape."""
    return int(np.prod(shape[1:], dtype=np.int64)) * 4 if len(shape) > 1 else 4


def _stream_rows(model: onnx.ModelProto, names: list[str], batches, shapes: dict, fn, rows: int, arrays) -> bool:
    """``stream`` a few rows at a time; False, before ``fn`` saw anything, when the rows cannot be
    taken apart: an input of some batch whose first axis is not that batch's rows, or an output that
    does not follow the rows (checked on a probe of the first batch's first rows)."""
    sizes = []
    for feeds, _ in batches:
        lengths = {len(v) if np.ndim(v) else -1 for v in feeds.values()}
        if len(lengths) != 1 or -1 in lengths:
            return False
        sizes.append(lengths.pop())
    if sizes[0] < 2:
        return False
    sess = session_with_outputs(model, names, arrays)
    probe = min(2, sizes[0] - 1)  # two rows: a time-major (1, N, C) tensor then shows as (1, 2, C)
    outs = sess.run(names, {k: v[:probe] for k, v in batches[0][0].items()})
    if not all(_follows_rows(o, probe, shapes.get(name)) for name, o in zip(names, outs)):
        return False
    for b, ((feeds, _), total) in enumerate(zip(batches, sizes)):
        for r0 in range(0, total, rows):
            r1 = min(r0 + rows, total)
            outs = sess.run(names, {k: v[r0:r1] for k, v in feeds.items()})
            fn(b, dict(zip(names, outs)), (r0, r1, total))
    return True


def moments(
    model: onnx.ModelProto,
    axes: dict[str, int],
    batches,
    shapes: dict | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> dict:
    """Per-channel mean and (population) variance of tensors over all batches; ``axes[name]`` is the
    channel axis (1 for NCHW, -1 for channels-last rows)."""
    sums = ChannelSums(axes)
    stream(model, sums.names, batches, shapes or {}, sums, arrays=arrays)
    return sums.moments()
