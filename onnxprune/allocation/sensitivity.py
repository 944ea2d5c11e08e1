"""Sensitivity-driven allocation (Li et al. 2017, Fig. 2b): give each group the largest ratio whose measured
loss stays under a budget. The measurement itself (pruning one group at a time) is ``onnxprune.sensitivity``,
above the rewrite layer it needs.

With labels the loss is the top-1 drop in points; without, it is 100 - top-1 agreement with the original
(KL divergence is recorded too). Pruned copies are evaluated on data held in memory, so keep the
evaluation set small (``--limit``); groups can be spread over worker processes (``jobs``).
"""

from __future__ import annotations

import json
import os

from ..errors import OnnxPruneError
from ..groups import Analysis

FORMAT = "onnxprune.sensitivity/1"


def ratios_from_sensitivity(result: dict, analysis: Analysis, max_drop: float) -> dict[int, float]:
    """Per group, the largest measured ratio such that it and every smaller one lose at most ``max_drop``."""
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise OnnxPruneError(f"not an onnxprune sensitivity file (expected format '{FORMAT}')")
    if max_drop < 0:
        raise OnnxPruneError("--max-drop must be >= 0")
    out = {}
    for g in result["groups"]:
        gid = int(g["id"])
        if gid >= len(analysis.groups) or list(analysis.groups[gid].sources) != list(g["sources"]):
            raise OnnxPruneError(
                f"sensitivity file group {gid} does not match this model (was it made for another model?)"
            )
        best = 0.0
        for p in sorted(g["points"], key=lambda p: p["ratio"]):
            if p["drop"] > max_drop:
                break
            best = p["ratio"]
        out[gid] = best
    return out


def load_sensitivity(path: str) -> dict:
    if not os.path.isfile(path):
        raise OnnxPruneError(f"sensitivity file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise OnnxPruneError(f"cannot read sensitivity file {path}: {e}") from None
