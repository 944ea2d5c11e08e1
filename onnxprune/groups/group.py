"""Domain objects of the dependency analysis."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .actions import Action


@dataclass
class Source:
    """A node whose constant weight creates channels: ``n`` atoms starting at ``base``.

    ``weight`` / ``axis`` say where atom ``base + i``'s filter lives (index i along ``axis``), which is all a
    magnitude criterion needs.
    """

    node: str
    op_type: str
    base: int
    n: int
    weight: str
    axis: int
    output: str


@dataclass
class ChannelGroup:
    """Channels that must be removed together; channel k is one class of coupled atoms.

    ``atoms[k]`` lists the source atoms of channel k: removing channel k removes every one of them
    from every tensor and parameter they reach.
    """

    id: int
    sources: list[str]
    atoms: list[np.ndarray]
    prunable: bool = True
    reason: str = ""
    macs: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return len(self.atoms)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "channels": self.channels,
            "prunable": self.prunable,
            "reason": self.reason,
            "sources": list(self.sources),
            "macs": int(self.macs),
            "notes": list(self.notes),
        }


@dataclass
class Analysis:
    """Everything the planner, rewriter and verifier need, derived once from the graph."""

    groups: list[ChannelGroup]
    sources: list[Source]
    roots: np.ndarray  # atom -> class root
    actions: list[Action]
    terminals: list[tuple[str, int, np.ndarray]]  # (node, input index, labels) where channels are consumed
    expected: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> labels (for shape checks)
    stat_masks: list[tuple[str, np.ndarray, list[int]]] = field(default_factory=list)
    source_channels: int = 0
    #: why layers the graph holds are no groups' sources at all (quantized integer layers)
    notes: list[str] = field(default_factory=list)

    def atom_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Per atom: its group id and channel index within the group (-1 for none)."""
        gid = np.full(len(self.roots), -1, dtype=np.int64)
        ch = np.full(len(self.roots), -1, dtype=np.int64)
        for g in self.groups:
            for c, atoms in enumerate(g.atoms):
                gid[atoms] = g.id
                ch[atoms] = c
        return gid, ch
