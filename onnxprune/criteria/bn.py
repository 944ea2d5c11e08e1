"""BN-scale (Liu et al., Network Slimming): |gamma| of the BatchNormalization that normalises a channel."""

from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError
from .registry import criterion


@criterion(
    "bn",
    "|gamma| of the channel's BatchNormalization (Network Slimming); needs BN nodes in the "
    "graph -- eval-mode exports usually fold BN into the convolutions",
)
def bn_scale(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    bns = {n.name for n in graph.model.graph.node if n.op_type == "BatchNormalization"}
    if not bns:
        raise OnnxPruneError(
            "criterion bn: the model has no BatchNormalization nodes (the exporter folded them "
            "into the convolutions, as eval-mode exports do); choose another criterion"
        )
    scores = np.full(len(analysis.roots), np.nan)
    nodes = {n.name: n for n in graph.model.graph.node}
    for act in analysis.actions:
        if act.kind == "slice_param" and act.node in bns and act.input == 1:
            gamma = np.abs(graph.consts[nodes[act.node].input[1]].astype(np.float64)).reshape(-1)
            lab = act.labels.reshape(-1)
            ok = lab >= 0
            scores[lab[ok]] = np.fmax(scores[lab[ok]], gamma[ok])
    return scores
