"""The state a traversal carries: labels per tensor, the union-find of atoms, frozen atoms, actions."""
from __future__ import annotations

import numpy as np
import onnx

from ..load import Graph
from . import labels as L
from .actions import Action
from .group import Source


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

    def const(self, name: str) -> np.ndarray | None:
        return self.graph.const(name)

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.graph.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    # --- writing -------------------------------------------------------------------------------
    def set(self, name: str, labels: np.ndarray | None, node: onnx.NodeProto | None = None) -> None:
        """Store a tensor's labels, enforcing the invariants the rewriter relies on."""
        if not name or L.is_empty(labels):
            return
        labels = L.compress(np.asarray(labels, dtype=np.int64))
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
            if labels is None:
                return
        self._labels[name] = labels

    def _make_rectangular(self, labels: np.ndarray, axes: list[int]) -> np.ndarray | None:
        # Channels spread over several axes (e.g. [groups, channels/group] inside a channel shuffle) must go
        # as whole slices along one axis, or the tensor stops being rectangular. If the coupled classes
        # already depend on one axis only, nothing to do; otherwise couple along the last such axis.
        if np.all(labels >= 0):
            roots = np.vectorize(self.uf.find, otypes=[np.int64])(labels)
            if len(L.labelled_axes(L.compress(roots))) <= 1:
                return labels
        last = axes[-1]
        cols = np.moveaxis(labels, last, -1).reshape(-1, labels.shape[last])
        for j in range(cols.shape[1]):
            col = cols[:, j]
            if np.any(col < 0) and np.any(col >= 0):
                self.freeze(labels, "channels interleave with unprunable positions across axes")
                return None
            self.uf.union_arrays(col, col[:1])
        return labels

    def source(self, node: onnx.NodeProto, output: str, axis: int, n: int, weight: str, weight_axis: int) -> np.ndarray | None:
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
