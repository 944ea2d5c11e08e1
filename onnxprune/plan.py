"""A pruning plan: which channels of which group go. Plain data, JSON in and out, replayable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError
from .groups import Analysis
from .groups.labels import labelled_axes

FORMAT = "onnxprune.plan/1"


@dataclass
class PruningPlan:
    """``remove[group_id]`` lists the group's channel indices to remove (channel = coupled class)."""

    remove: dict[int, list[int]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # what a loaded plan says about each group (sources, channels), checked against the model it is applied to
    expect: dict[int, dict] = field(default_factory=dict, repr=False)

    def to_json(self, analysis: Analysis | None = None) -> dict:
        groups = []
        for gid in sorted(self.remove):
            entry = {"id": gid, "remove": sorted(int(c) for c in self.remove[gid])}
            if analysis is not None:
                g = analysis.groups[gid]
                entry.update(sources=list(g.sources), channels=g.channels)
            groups.append(entry)
        return {"format": FORMAT, "meta": self.meta, "groups": groups}

    @classmethod
    def from_json(cls, data: dict) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise OnnxPruneError(f"not an onnxprune plan (expected format '{FORMAT}')")
        if data.get("meta", {}).get("steps"):
            raise OnnxPruneError(
                "this plan comes from an iterative run (--steps); each step's groups belong to a "
                "partly pruned model, so it cannot be replayed: re-run with --steps"
            )
        try:
            remove = {int(g["id"]): [int(c) for c in g["remove"]] for g in data["groups"]}
        except (KeyError, TypeError, ValueError) as e:
            raise OnnxPruneError(f"malformed plan: {e}") from None
        return cls(remove, dict(data.get("meta", {})), {int(g["id"]): g for g in data["groups"]})

    @classmethod
    def load(cls, path: str) -> PruningPlan:
        try:
            with open(path) as f:
                return cls.from_json(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise OnnxPruneError(f"cannot read plan {path}: {e}") from None

    def validate(self, analysis: Analysis) -> None:
        """Refuse a plan that does not fit this model's groups (wrong model, frozen group, bad index)."""
        for gid, chans in self.remove.items():
            if not 0 <= gid < len(analysis.groups):
                raise OnnxPruneError(f"plan names group {gid}, but the model has {len(analysis.groups)} groups")
            g = analysis.groups[gid]
            e = self.expect.get(gid, {})
            if (
                "channels" in e
                and int(e["channels"]) != g.channels
                or "sources" in e
                and list(e["sources"]) != list(g.sources)
            ):
                made_for = f"sources {list(e['sources'])[:2]}..." if "sources" in e else f"{e['channels']} channels"
                raise OnnxPruneError(f"plan group {gid} was made for {made_for}, not this model's")
            if chans and not g.prunable:
                raise OnnxPruneError(f"plan removes channels of frozen group {gid} ({g.reason})")
            if any(not 0 <= c < g.channels for c in chans) or len(set(chans)) != len(chans):
                raise OnnxPruneError(f"plan group {gid}: channel indices must be distinct and in [0, {g.channels})")
            if len(chans) >= g.channels:
                raise OnnxPruneError(f"plan group {gid} removes all {g.channels} channels")

    @property
    def removed_channels(self) -> int:
        return sum(len(v) for v in self.remove.values())


class Keep:
    """Turns label arrays into keep masks for one plan."""

    def __init__(self, analysis: Analysis, plan: PruningPlan):
        removed = [a for gid, chans in plan.remove.items() for c in chans for a in analysis.groups[gid].atoms[c]]
        removed_roots = (
            np.unique(analysis.roots[np.array(removed, dtype=np.int64)]) if removed else np.array([], np.int64)
        )
        self.removed_atom = np.zeros(len(analysis.roots) + 1, dtype=bool)  # last slot: label -1
        if len(removed_roots):
            self.removed_atom[:-1] = np.isin(analysis.roots, removed_roots)

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """True where a position survives (same shape as ``labels``)."""
        return ~self.removed_atom[labels]

    def kept_along(self, labels: np.ndarray, axis: int) -> np.ndarray:
        """Boolean per position of ``axis``: a position goes when every label in its slice is removed."""
        m = self.mask(labels)
        other = tuple(a for a in range(m.ndim) if a != axis)
        return np.any(m, axis=other) if other else m

    def along(self, labels: np.ndarray, axis: int) -> np.ndarray:
        """Indices kept along ``axis``."""
        return np.nonzero(self.kept_along(labels, axis))[0]

    def count(self, labels: np.ndarray, axis: int) -> int:
        return len(self.along(labels, axis))


def emptied(analysis: Analysis, plan: PruningPlan) -> list[tuple[str, int]]:
    """(tensor, axis) pairs the plan would leave with no channel."""
    keep = Keep(analysis, plan)
    out = []
    for name, labels in analysis.expected.items():
        for ax in labelled_axes(labels):
            if keep.count(labels, ax) == 0:
                out.append((name, ax))
    return out
