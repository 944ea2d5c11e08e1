"""Reconstruction-aware selection (Optimal Brain Surgeon, as Optimal Brain Compression and ZipLM apply it
to structures): a channel costs what its removal adds to the least-squares error of every layer that
reads it, after the kept weights of that layer are refitted.

For a consumer with input Gram matrix H = X'X (the original model's inputs at sampled positions, dampened
as in OBC by ``damp`` x mean(diag H)), removing the block of inputs j (a channel's kernel taps in a Conv,
its features after a Flatten) and refitting the rest raises the squared error by

    cost_j = sum over outputs o of  w_jo' (H^-1_jj)^-1 w_jo

which is exactly what the least-squares reconstruction then achieves for that one block. A channel's
score is the sum over every layer that consumes it (each branch of a residual stream). The scores are
computed once, one-shot: removing several channels of one layer together is scored as the sum of their
single costs, without the OBS update of H^-1 after each removal (documented limit).

With ``relative`` (the default) each layer's cost is divided by that layer's output energy
``trace(W' H W) = ||X W||^2``, so a channel's score is the fraction of each consumer's output that its
removal loses after the refit. That makes scores of different groups comparable (an absolute squared
error grows with the layer's width and activation scale), which is what ``--global`` ranks by; within a
group the order is the same unless its channels feed consumers of different energy.
"""

from __future__ import annotations

import numpy as np

from ..data import open_data
from ..errors import OnnxPruneError
from ..linear import as_layer, patches, positions, to_mats, weight_uses
from ..progress import bar
from ..runtime import session_with_outputs
from .registry import criterion


def _consumers(graph, analysis):
    """(node, layer, per-input-feature atom labels) for every refittable, ungrouped consumer."""
    nodes = {n.name: n for n in graph.model.graph.node}
    inits = {t.name: t for t in graph.model.graph.initializer}
    uses = weight_uses(graph.model)
    out = []
    for node_name, k, labels in analysis.terminals:
        node = nodes[node_name]
        if k != 0:
            continue
        layer, _ = as_layer(node, inits, uses)
        if layer is None or layer.groups != 1:
            continue
        axis = 1 if layer.op_type == "Conv" else labels.ndim - 1
        if labels.shape[axis] != labels.size:  # labels must vary along the input feature axis only
            continue
        out.append((node, layer, labels.reshape(-1)))
    return out


@criterion(
    "obs",
    "OBS cost of removing each channel from every layer that reads it, with the least-squares refit "
    "(Frantar & Alistarh 2022); needs --calib",
    needs_data=True,
)
def obs(
    graph, analysis, data=None, seed: int = 0, samples: int = 4096, damp: float = 0.01, relative: bool = True
) -> np.ndarray:
    if data is None:
        raise OnnxPruneError("obs needs data: pass --calib (e.g. data.npz, a folder of images)")
    consumers = _consumers(graph, analysis)
    scores = np.full(len(analysis.roots), np.nan)
    if not consumers:
        return scores
    names = sorted({node.input[0] for node, _, _ in consumers})
    sess = session_with_outputs(graph.model, names)
    batches = list(open_data(data, graph))
    per_batch = max(1, -(-samples // len(batches)))
    gram: dict[str, np.ndarray] = {}
    for b, (feeds, _) in enumerate(bar(batches, desc="obs statistics", unit="batch")):
        acts = dict(zip(names, sess.run(names, feeds)))
        for k, (node, layer, _) in enumerate(consumers):
            x = np.asarray(acts[node.input[0]])
            w_shape = graph.consts[node.input[1]].shape
            out_shape = (
                (x.shape[0], *graph.shapes[node.output[0]][1:]) if layer.op_type == "Conv" else (*x.shape[:-1], 1)
            )
            pos = positions(layer, out_shape, per_batch, np.random.default_rng([seed, k, b]))
            p = patches(layer, node, x, pos, w_shape[2:])[:, 0, :]  # m x K
            g = p.T @ p
            gram[node.name] = g if node.name not in gram else gram[node.name] + g
    cost = np.zeros(len(analysis.roots))
    seen = np.zeros(len(analysis.roots), dtype=bool)
    for node, layer, labels in consumers:
        w = to_mats(layer, graph.consts[node.input[1]].astype(np.float64))[0]  # K x O
        h = gram[node.name]
        energy = float(np.sum(w * (h @ w))) if relative else 1.0  # ||X W||^2 before dampening
        h = h + damp * float(np.mean(np.diag(h)) or 1.0) * np.eye(len(h))
        hinv = np.linalg.inv(h)
        taps = len(h) // len(labels)  # inputs read per labelled position (kernel taps of a Conv)
        feature_atom = np.repeat(labels, taps)
        for atom in np.unique(labels[labels >= 0]):
            idx = np.nonzero(feature_atom == atom)[0]
            cost[atom] += block_cost(hinv, w, idx) / max(energy, 1e-30)
            seen[atom] = True
    scores[seen] = cost[seen]
    return _fill_unseen(analysis, scores)


def block_cost(hinv: np.ndarray, w: np.ndarray, idx: np.ndarray) -> float:
    """Increase of ||X W - X' W'||^2 when inputs ``idx`` are removed and the rest refitted (OBS):
    sum over outputs of w_b' (H^-1_bb)^-1 w_b, with ``w`` the (K, O) weight matrix."""
    wb = w[idx]
    return float(np.sum(wb * np.linalg.solve(hinv[np.ix_(idx, idx)], wb)))


def _fill_unseen(analysis, scores: np.ndarray) -> np.ndarray:
    """A channel no scored layer reads keeps the group's highest score (it is removed last); a group with
    no scored channel abstains (NaN: left whole, as ThiNet does)."""
    for g in analysis.groups:
        if not g.prunable:
            continue
        per = [np.nansum(scores[a]) if np.any(~np.isnan(scores[a])) else np.nan for a in g.atoms]
        known = [v for v in per if not np.isnan(v)]
        if not known:
            continue
        top = max(known)
        for atoms, v in zip(g.atoms, per):
            if np.isnan(v):
                scores[atoms[0]] = top * 2 + 1e-12
    return scores
