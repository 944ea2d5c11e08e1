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

from ..data import batches
from ..errors import OnnxPruneError
from ..groups import Analysis
from ..linear import Layer, as_layer, weight_uses
from ..load import Graph
from ..plan import Keep, PruningPlan
from ..runtime import session_with_outputs
from .propagate import ChannelSums

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
        axis = 1 if node.op_type in ("Conv", "BatchNormalization") else labels.ndim - 1
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
                if self.nodes[name].op_type in ("Conv", "Gemm", "MatMul"):
                    self.skipped[name] = why
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
    """Run ``model`` on every batch and call ``fn(batch_index, {name: array})``; names are split over
    several passes when one batch of all of them would exceed ``budget`` bytes. ``arrays``: the
    model's weights already held as arrays (a loaded graph's ``consts``), given to onnxruntime as they are."""
    if not names:
        return
    n = len(next(iter(batches[0][0].values()))) if batches else 1
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name in names:
        shape = shapes.get(name) or (1,)
        est = int(np.prod(shape[1:], dtype=np.int64)) * 4 * n if len(shape) > 1 else 4 * n
        if cur and size + est > budget:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += est
    chunks.append(cur)
    for chunk in chunks:
        sess = session_with_outputs(model, chunk, arrays)
        for b, (feeds, _) in enumerate(batches):
            fn(b, dict(zip(chunk, sess.run(chunk, feeds))))


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
