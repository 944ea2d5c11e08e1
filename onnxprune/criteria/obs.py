"""Reconstruction-aware selection (Optimal Brain Surgeon, as Optimal Brain Compression and ZipLM apply it
to structures): a channel costs what its removal adds to the least-squares error of every layer that
reads it, after the kept weights of that layer are refitted.

For a consumer with input Gram matrix H = X'X (the original model's inputs at sampled positions, dampened
as in OBC by ``damp`` x mean(diag H)), removing the block of inputs j (a channel's kernel taps in a Conv,
its features after a Flatten) and refitting the rest raises the squared error by

    cost_j = sum over outputs o of  w_jo' (H^-1_jj)^-1 w_jo

which is exactly what the least-squares reconstruction then achieves for that one block. A channel's
score is the sum over every layer that consumes it (each branch of a residual stream). The scores are
greedy (``greedy``, the default, as OBC and ZipLM do): within a group the cheapest channel is removed, every
consumer's H^-1 and weights take the OBS update for that removal, and the remaining channels are costed
again, so two channels that can each stand in for the other are not both scored as free. A channel's score
is the summed cost of the greedy removals up to and including it (monotone along the removal order; at any
count it is the refitted error of removing the channels before it). Groups wider than ``GREEDY_STEPS``
channels remove ceil(n / GREEDY_STEPS) channels per update, the cheapest of that step first (blockwise, as
ZipLM does for wide layers), which bounds the work at GREEDY_STEPS updates of H^-1 per consumer.
``greedy=False`` scores each channel alone on the original weights (one-shot).

With ``relative`` (the default) each layer's cost is divided by that layer's output energy
``trace(W' H W) = ||X W||^2``, so a channel's score is the fraction of each consumer's output that its
removal loses after the refit. That makes scores of different groups comparable (an absolute squared
error grows with the layer's width and activation scale), which is what ``--global`` ranks by; within a
group the order is the same unless its channels feed consumers of different energy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

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
    comparable=True,
)
def obs(
    graph,
    analysis,
    data=None,
    seed: int = 0,
    samples: int = 4096,
    damp: float = 0.01,
    relative: bool = True,
    greedy: bool = True,
) -> np.ndarray:
    if data is None:
        raise OnnxPruneError("obs needs data: pass --calib (e.g. data.npz, a folder of images)")
    consumers = _consumers(graph, analysis)
    scores = np.full(len(analysis.roots), np.nan)
    if not consumers:
        return scores
    names = sorted({node.input[0] for node, _, _ in consumers})
    sess = session_with_outputs(graph.model, names, graph.consts)
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
    layers = []
    for node, layer, labels in consumers:
        w = to_mats(layer, graph.consts[node.input[1]].astype(np.float64))[0]  # K x O
        h = gram.pop(node.name)  # replaced by its inverse: one K x K matrix per layer in memory
        energy = float(np.sum(w * (h @ w))) if relative else 1.0  # ||X W||^2 before dampening
        h = h + damp * float(np.mean(np.diag(h)) or 1.0) * np.eye(len(h))
        taps = len(h) // len(labels)  # inputs read per labelled position (kernel taps of a Conv)
        layers.append(Consumer(w, np.linalg.inv(h), max(energy, 1e-30), np.repeat(labels, taps)))
    scores = _greedy(analysis, layers) if greedy else _one_shot(analysis, layers)
    return _fill_unseen(analysis, scores)


@dataclass
class Consumer:
    """One layer reading pruned channels: its (K, O) weights, the inverse of its dampened input Gram
    matrix, its output energy (1 when costs are absolute) and the atom each of its K inputs carries."""

    w: np.ndarray
    hinv: np.ndarray
    energy: float
    feature_atom: np.ndarray


def _one_shot(analysis, layers: list[Consumer]) -> np.ndarray:
    cost = np.zeros(len(analysis.roots))
    seen = np.zeros(len(analysis.roots), dtype=bool)
    for c in layers:
        for atom in np.unique(c.feature_atom[c.feature_atom >= 0]):
            idx = np.nonzero(c.feature_atom == atom)[0]
            cost[atom] += block_cost(c.hinv, c.w, idx) / c.energy
            seen[atom] = True
    scores = np.full(len(analysis.roots), np.nan)
    scores[seen] = cost[seen]
    return scores


GREEDY_STEPS = 64


def _greedy(analysis, layers: list[Consumer]) -> np.ndarray:
    """Per group, the greedy OBS removal order; a channel's score (on its first atom, the others abstain)
    is the summed cost of the removals up to it."""
    gid, ch = analysis.atom_index()
    blocks: dict[int, list[tuple[Consumer, dict[int, np.ndarray]]]] = defaultdict(list)
    for c in layers:
        fa = c.feature_atom
        group = np.where(fa >= 0, gid[np.maximum(fa, 0)], -1)
        chan = np.where(fa >= 0, ch[np.maximum(fa, 0)], -1)
        for g in np.unique(group[group >= 0]):
            mine = group == g
            blocks[int(g)].append((c, {int(k): np.nonzero(mine & (chan == k))[0] for k in np.unique(chan[mine])}))
    scores = np.full(len(analysis.roots), np.nan)
    todo = [g for g in analysis.groups if g.prunable and g.id in blocks]
    for g in bar(todo, desc="obs greedy", unit="group"):
        for channel, score in greedy_order(blocks[g.id]).items():
            scores[g.atoms[channel][0]] = score
    return scores


def greedy_order(reads: list[tuple[Consumer, dict[int, np.ndarray]]], steps: int = GREEDY_STEPS) -> dict[int, float]:
    """Channel -> cumulative cost of removing it and every channel removed before it, each consumer's
    weights and H^-1 updated (OBS) after each removal step. ``reads``: per consumer, the input features
    each channel occupies in it. The consumers' arrays are copied, not changed."""
    state = [(c.w.copy(), c.hinv.copy(), c.energy, idx) for c, idx in reads]
    left = sorted({k for _, idx in reads for k in idx})
    per_step = max(1, -(-len(left) // steps))
    out: dict[int, float] = {}
    total = 0.0
    while left:
        cost = np.zeros(len(left))
        for w, hinv, energy, idx in state:
            cost += _block_costs(hinv, w, [idx.get(k) for k in left]) / energy
        order = np.argsort(cost, kind="stable")[:per_step]
        for j in order:
            total += float(cost[j])
            out[left[j]] = total
        gone = {left[j] for j in order}
        for w, hinv, _, idx in state:
            cut = [idx[k] for k in gone if k in idx]
            if cut:
                _obs_remove(hinv, w, np.concatenate(cut))
        left = [k for k in left if k not in gone]
    return out


def _block_costs(hinv: np.ndarray, w: np.ndarray, blocks: list[np.ndarray | None]) -> np.ndarray:
    """``block_cost`` of each block, solved in batches of equal block size (None: the layer does not read it)."""
    out = np.zeros(len(blocks))
    sizes: dict[int, list[int]] = defaultdict(list)
    for k, b in enumerate(blocks):
        if b is not None and len(b):
            sizes[len(b)].append(k)
    for ks in sizes.values():
        idx = np.stack([blocks[k] for k in ks])  # (m, b)
        hb = hinv[idx[:, :, None], idx[:, None, :]]  # (m, b, b)
        wb = w[idx]  # (m, b, O)
        out[ks] = np.sum(wb * np.linalg.solve(hb, wb), axis=(1, 2))
    return out


def _obs_remove(hinv: np.ndarray, w: np.ndarray, idx: np.ndarray) -> None:
    """Remove inputs ``idx`` in place: the OBS weight correction of the kept inputs and the matching
    update of H^-1 (the inverse of H with those rows and columns deleted, zero-padded)."""
    cols = hinv[:, idx]
    sol = np.linalg.solve(hinv[np.ix_(idx, idx)], np.concatenate([w[idx], cols.T], axis=1))
    w -= cols @ sol[:, : w.shape[1]]
    hinv -= cols @ sol[:, w.shape[1] :]
    w[idx] = 0.0
    hinv[idx, :] = 0.0
    hinv[:, idx] = 0.0


def block_cost(hinv: np.ndarray, w: np.ndarray, idx: np.ndarray) -> float:
    """Increase of ||X W - X' W'||^2 when inputs ``idx`` are removed and the rest refitted (OBS):
    sum over outputs of w_b' (H^-1_bb)^-1 w_b, with ``w`` the (K, O) weight matrix."""
    return float(_block_costs(hinv, w, [np.asarray(idx)])[0])


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
