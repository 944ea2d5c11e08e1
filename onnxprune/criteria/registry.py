"""Criteria registry: a criterion scores every source atom (higher = more important)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxPruneError


@dataclass(frozen=True)
class Criterion:
    name: str
    help: str
    fn: Callable[..., np.ndarray]
    needs_data: bool = False
    # scores of different groups are already on one scale (obs: the fraction of each consumer's output
    # energy lost after the refit), so --global ranks them as they are instead of normalising per group
    comparable: bool = False

    def parameters(self) -> dict[str, object]:
        """The criterion's own settings and their defaults (every keyword parameter but the ones each
        criterion takes: graph, analysis, data, seed)."""
        sig = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in sig.items() if k not in _COMMON and p.default is not p.empty}


_COMMON = ("graph", "analysis", "data", "seed")


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, help: str, needs_data: bool = False, comparable: bool = False):
    def deco(fn):
        if name in CRITERIA:
            raise RuntimeError(f"duplicate criterion {name}")
        CRITERIA[name] = Criterion(name, help, fn, needs_data, comparable)
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion '{name}'; choose from {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


COMBINE = {"sum": np.sum, "mean": np.mean, "max": np.max}


@dataclass(frozen=True)
class CriterionOptions:
    """Which criterion scores the channels, how a group's atoms combine, and the criterion's own settings
    (``params``: ThiNet's ``samples``, weak-layer's ``nu``...), checked against its signature so a
    misspelt or foreign setting is refused instead of ignored."""

    name: str = "l1"
    combine: str = "sum"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = get_criterion(self.name).parameters()
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
            raise OnnxPruneError(f"unknown option(s) {', '.join(unknown)} for criterion '{self.name}' ({takes})")
        if self.combine not in COMBINE:
            raise OnnxPruneError(f"unknown --combine '{self.combine}'; choose from {', '.join(COMBINE)}")

    def value(self, key: str):
        """A setting as the criterion will see it (given, or its default)."""
        return self.params.get(key, get_criterion(self.name).parameters().get(key))

    def scores(self, graph, analysis, data=None, seed: int = 0) -> np.ndarray:
        """Per-atom scores (higher = more important)."""
        return get_criterion(self.name).fn(graph, analysis, data=data, seed=seed, **self.params)


def group_scores(atom_scores: np.ndarray, atoms: list[np.ndarray], combine: str = "sum") -> np.ndarray:
    """Score of each channel of a group: its member atoms' scores combined (a residual channel is as
    important as the sum of what every producer puts into it)."""
    if combine not in COMBINE:
        raise OnnxPruneError(f"unknown --combine '{combine}'; choose from {', '.join(COMBINE)}")
    f = COMBINE[combine]
    out = np.full(len(atoms), np.nan)
    for k, a in enumerate(atoms):
        vals = atom_scores[a]
        vals = vals[~np.isnan(vals)]  # an atom the criterion cannot see (no BN, never consumed) abstains
        if len(vals):
            out[k] = f(vals)
    return out
