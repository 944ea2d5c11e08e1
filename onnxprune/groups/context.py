"""The state a traversal carries: labels per tensor, the union-find of atoms, frozen atoms, actions."""

from __future__ import annotations

import numpy as np
import onnx

from ..load import Graph
from . import labels as L
from .actions import Action
from .group import Source


def _keep_one_axis(raw: np.ndarray) -> np.ndarray:
    """Compress every axis but the first non-trivial one (a single class spread over a channel axis)."""
    axis = next(ax for ax, d in enumerate(raw.shape) if d > 1)
    index: list[int | slice] = [0] * raw.ndim
    index[axis] = slice(None)
    shape = [1] * raw.ndim
    shape[axis] = raw.shape[axis]
    return np.ascontiguousarray(raw[tuple(index)]).reshape(shape)


class Context:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.uf = L.UnionFind()
        self._labels: dict[str, np.ndarray] = {}
        self.sources: list[Source] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.actions: list[Action] = []
        self.terminals: list[tuple[str, int, np.ndarray]] = []
        # Shape outputs: name -> (tensor measured, first axis reported); read by Gather/Slice rules
        self.shape_of: dict[str, tuple[str, int]] = {}
        # Normalisations whose statistics run over channels: (node, labels, reduced axes)
        self.stat_masks: list[tuple[str, np.ndarray, list[int]]] = []

    # --- reading -------------------------------------------------------------------------------
    def labels(self, name: str) -> np.ndarray | None:
        return self._labels.get(name) if name else None

    @property
    def labelled(self) -> dict[str, np.ndarray]:
        """Every tensor that carries channels, with its labels (the rewrite's shape check uses them)."""
        return dict(self._labels)

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.const(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.graph.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    # --- writing -------------------------------------------------------------------------------
    def set(self, name: str, labels: np.ndarray | None) -> None:
        """Store a tensor's labels, enforcing the invariants the rewriter relies on."""
        if not name or L.is_empty(labels):
            return
        raw = np.asarray(labels, dtype=np.int64)
        labels = L.compress(raw)
        if labels.size == 1 and raw.size > 1:  # one class over several positions: keep the axis
            labels = _keep_one_axis(raw)
        shape = self.shape(name)
        if shape is None or len(shape) != labels.ndim or any(d not in (1, s) for d, s in zip(labels.shape, shape)):
            self.freeze(labels, f"shape of '{name}' is unknown or does not match its channels")
            return
        if labels.size == 1:
            self.freeze(labels, f"'{name}' keeps a single channel of a group")
            return
        axes = L.labelled_axes(labels)
        if len(axes) > 1:
            labels = self._make_rectangular(labels, axes)
            if labels is None:  # frozen there, with the reason
                return
        self._labels[name] = labels

    def representatives(self, labels: np.ndarray) -> np.ndarray | None:
        """Labels as the rewrite will see them: multi-axis channels made rectangular and reduced to one
        atom per class (None when that is impossible; the channels are then frozen)."""
        labels = L.compress(np.asarray(labels, dtype=np.int64))
        axes = L.labelled_axes(labels)
        return self._make_rectangular(labels, axes) if len(axes) > 1 else labels

    def _make_rectangular(self, labels: np.ndarray, axes: list[int]) -> np.ndarray | None:
        # Channels spread over several axes (e.g. [groups, channels/group] inside a channel shuffle, or
        # [q/k/v, heads, head_dim] after a fused projection) must go as whole slices along one axis, or
        # the tensor stops being rectangular. If the coupled classes already depend on one axis only,
        # nothing to couple; otherwise couple along the last such axis. Either way the labels are then
        # replaced by one representative atom per class, so the axes no plan can shrink drop out.
        if np.any(labels < 0):
            last = axes[-1]
            cols = np.moveaxis(labels, last, -1).reshape(-1, labels.shape[last])
            if np.any((cols < 0).any(0) & (cols >= 0).any(0)):
                self.freeze(labels, "channels interleave with unprunable positions across axes")
                return None
        roots = self._roots(labels)
        if len(L.labelled_axes(L.compress(roots))) > 1:
            last = axes[-1]
            cols = np.moveaxis(labels, last, -1).reshape(-1, labels.shape[last])
            for j in range(cols.shape[1]):
                self.uf.union_arrays(cols[:, j], cols[:1, j])
            roots = self._roots(labels)
        roots = L.compress(roots)
        # a tensor whose positions all fall in one class keeps its atoms (the class stays protected from
        # emptying it by the allocator) rather than collapsing to a label without an axis
        return roots if roots.size > 1 else labels

    def _roots(self, labels: np.ndarray) -> np.ndarray:
        flat = labels.reshape(-1)
        out = np.array([self.uf.find(int(a)) if a >= 0 else -1 for a in flat], dtype=np.int64)
        return out.reshape(labels.shape)

    def fixed_axis(self, labels: np.ndarray, axis: int) -> bool:
        """True when no plan can shrink ``axis``: every class spans the whole axis (e.g. the q/k/v axis of
        a fused qkv projection, whose entries were coupled into one class per head dim)."""
        if labels.shape[axis] == 1:
            return True
        if np.any(labels < 0):
            return False
        roots = self._roots(labels)
        return bool(np.all(roots == np.take(roots, [0], axis=axis)))

    def source(
        self, node: onnx.NodeProto, output: str, axis: int, n: int, weight: str, weight_axis: int
    ) -> np.ndarray | None:
        """Create ``n`` fresh atoms for a node's output channels (on ``axis`` of ``output``)."""
        rank = self.rank(output)
        if rank is None or n < 2:
            return None
        base = self.uf.add(n)
        self.sources.append(Source(node.name, node.op_type, base, n, weight, weight_axis, output))
        return L.along(np.arange(base, base + n), axis % rank, rank)

    def couple(self, a: np.ndarray, b: np.ndarray) -> None:
        self.uf.union_arrays(a, b)

    def freeze(self, labels: np.ndarray | None, reason: str) -> None:
        if labels is not None and np.any(labels >= 0):
            self.frozen.append((np.unique(labels[labels >= 0]), reason))

    def freeze_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for i in node.input:
            self.freeze(self.labels(i), reason)
            self.freeze_shape_reader(i, reason)

    def freeze_shape_reader(self, name: str, reason: str) -> None:
        if name in self.shape_of:
            tensor, _ = self.shape_of[name]
            self.freeze(self.labels(tensor), reason)

    def act(self, action: Action) -> None:
        self.actions.append(action)

    def terminal(self, node: onnx.NodeProto, input_index: int, labels: np.ndarray | None) -> None:
        if labels is not None:
            self.terminals.append((node.name, input_index, labels))
