"""Channel labels: which source channel ("atom") sits at each position of a tensor.

A tensor's labels are an int64 array of the tensor's rank whose dims are either 1 (the tensor's axis
carries no channel identity, e.g. spatial) or the full dim. -1 marks a position no source owns (it can
never be removed). Keeping labels as broadcastable arrays makes every shape op -- Reshape, Transpose,
Flatten, channel shuffles -- one numpy call, instead of a special case per pattern.
"""

from __future__ import annotations

import numpy as np

NONE = -1


def compress(labels: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the labels are constant to size 1 (smallest broadcast form)."""
    out = labels
    for ax in range(out.ndim):
        if out.shape[ax] > 1:
            first = np.take(out, [0], axis=ax)
            if np.all(out == first):
                out = first
    return np.ascontiguousarray(out)


def labelled_axes(labels: np.ndarray) -> list[int]:
    """Axes that carry channel identity. The analysis never stores a single-position label array
    (see ``Context.set``), so a size-1 axis is never a channel axis."""
    return [ax for ax, d in enumerate(labels.shape) if d > 1]


def vector(labels: np.ndarray, axis: int) -> np.ndarray:
    """The 1-D labels along one axis (requires all other axes to be broadcast, i.e. size 1)."""
    others = [d for ax, d in enumerate(labels.shape) if ax != axis]
    if any(d != 1 for d in others):
        raise ValueError("labels are not one-dimensional")
    return labels.reshape(-1)


def broadcast_full(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(labels, shape)


def along(vec: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """Place a 1-D label vector on ``axis`` of a rank-``rank`` array."""
    shape = [1] * rank
    shape[axis] = len(vec)
    return np.asarray(vec, dtype=np.int64).reshape(shape)


def is_empty(labels: np.ndarray | None) -> bool:
    return labels is None or not np.any(labels >= 0)


class UnionFind:
    """Disjoint sets over atom ids: coupled channels end up in one set (one prunable channel)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
        return base

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        mask = (a >= 0) & (b >= 0) & (a != b)
        if not mask.any():
            return
        pairs = np.unique(np.stack([a[mask], b[mask]], axis=1), axis=0)
        for x, y in pairs:
            self.union(int(x), int(y))

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
