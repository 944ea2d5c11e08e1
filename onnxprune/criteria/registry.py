"""Criteria registry: a criterion scores every source atom (higher = more important)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import OnnxPruneError


@dataclass(frozen=True)
class Criterion:
    name: str
    help: str
    fn: Callable[..., np.ndarray]
    needs_data: bool = False


CRITERIA: dict[str, Criterion] = {}


def criterion(name: str, help: str, needs_data: bool = False):
    def deco(fn):
        if name in CRITERIA:
            raise RuntimeError(f"duplicate criterion {name}")
        CRITERIA[name] = Criterion(name, help, fn, needs_data)
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion '{name}'; choose from {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


COMBINE = {"sum": np.sum, "mean": np.mean, "max": np.max}


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
