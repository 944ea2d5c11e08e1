"""ThiNet (Luo et al. 2017): choose the channels whose removal changes the next layer's output least,
then rescale the kept input channels of that layer by least squares.

Samples are random (image, output channel, position) triples of each *consumer* of a group (the Conv,
Gemm or MatMul that reads its channels). For each sample, x_hat[c] is channel c's contribution to that
output value, so the output is sum_c x_hat[c]. Channels are removed greedily so that the squared sum of
removed contributions stays smallest (the paper's objective); the criterion's score is the greedy order.
After the rewrite, ``rescale`` solves min_w ||y - X_kept w||^2 per consumer and scales its weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import open_data
from ..errors import OnnxPruneError
from ..groups.rules._util import attr
from ..pads import conv_geometry_2d
from ..plan import Keep
from ..progress import bar
from ..runtime import session_with_outputs
from .registry import criterion

log = logging.getLogger(__name__)
SUPPORTED = ("Conv", "Gemm", "MatMul")


def _consumers(graph, analysis):
    nodes = {n.name: n for n in graph.model.graph.node}
    out = []
    for node_name, k, labels in analysis.terminals:
        node = nodes[node_name]
        weight = graph.const(node.input[1]) if k == 0 and node.op_type in SUPPORTED else None
        if weight is None:
            continue
        if node.op_type == "Conv" and (int(attr(node, "group", 1)) != 1 or weight.ndim not in (3, 4)):
            continue  # grouped, or a 3-D convolution
        if node.op_type == "Gemm" and int(attr(node, "transA", 0)):
            continue
        out.append((node, labels))
    return out


def _conv_samples(node, x, w, out_shape, m, rng):
    (kh, kw), pads, (sh, sw), (dh, dw) = conv_geometry_2d(node, x.shape[2:], w.shape[2:])
    if w.ndim == 3:  # 1-D: height 1
        x, w, out_shape = x[:, :, None, :], w[:, :, None, :], (*out_shape[:2], 1, out_shape[2])
    n_img, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n = rng.integers(0, n_img, m)
    o = rng.integers(0, w.shape[0], m)
    h = rng.integers(0, out_shape[2], m)
    v = rng.integers(0, out_shape[3], m)
    rows = h[:, None] * sh + np.arange(kh)[None] * dh  # m x kh
    cols = v[:, None] * sw + np.arange(kw)[None] * dw  # m x kw
    patch = xp[
        n[:, None, None, None], np.arange(c)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
    ]
    return np.einsum("mckl,mckl->mc", patch, w[o])  # m x C contributions


def _dense_samples(x, wt, m, rng):
    """x: (rows, K); wt: (K, O)."""
    r = rng.integers(0, x.shape[0], m)
    o = rng.integers(0, wt.shape[1], m)
    return x[r] * wt[:, o].T  # m x K


def collect(graph, analysis, data, samples: int = 2000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per consumer: (contributions m x P along its labelled input axis, labels of those P positions)."""

    if data is None:
        raise OnnxPruneError("thinet needs data: pass --calib (e.g. random:64, data.npz, a folder of images)")
    consumers = _consumers(graph, analysis)
    names = sorted({node.input[0] for node, _ in consumers})
    sess = session_with_outputs(graph.model, names, graph.consts)
    batches = list(open_data(data, graph))  # reading twice would double the I/O; only inputs are kept
    per_batch = max(1, -(-samples // len(batches)))
    rng = np.random.default_rng(seed)
    got: dict[str, list[np.ndarray]] = {n.name: [] for n, _ in consumers}
    for feeds, _ in bar(batches, desc="thinet samples", unit="batch"):
        acts = dict(zip(names, sess.run(names, feeds)))
        for node, _labels in consumers:
            x = np.asarray(acts[node.input[0]], dtype=np.float32)
            w = graph.consts[node.input[1]].astype(np.float32)
            if node.op_type == "Conv":
                got[node.name].append(_conv_samples(node, x, w, graph.shapes[node.output[0]], per_batch, rng))
            else:
                wt = w.T if node.op_type == "Gemm" and int(attr(node, "transB", 0)) else w
                got[node.name].append(_dense_samples(x.reshape(-1, x.shape[-1]), wt, per_batch, rng))
    out = {}
    for node, labels in consumers:
        axis = 1 if node.op_type in ("Conv", "Gemm") else labels.ndim - 1
        out[node.name] = (
            np.concatenate(got[node.name])[:samples].astype(np.float64),
            labels.reshape(-1) if labels.shape[axis] == labels.size else None,
        )
    return {k: v for k, v in out.items() if v[1] is not None}


@criterion(
    "thinet",
    "greedy ThiNet selection on the next layer's reconstruction (Luo et al. 2017), then "
    "least-squares rescaling of that layer; needs --calib, --samples",
    needs_data=True,
)
def thinet(graph, analysis, data=None, seed: int = 0, samples: int = 2000) -> np.ndarray:
    contrib = collect(graph, analysis, data, samples, seed)
    roots = analysis.roots
    scores = np.full(len(roots), np.nan)
    for g in analysis.groups:
        if not g.prunable:
            continue
        cls_of_root = {int(roots[a[0]]): k for k, a in enumerate(g.atoms)}
        blocks = []
        for x, labels in contrib.values():
            cls = np.array([cls_of_root.get(int(roots[a]), -1) if a >= 0 else -1 for a in labels])
            if not np.any(cls >= 0):
                continue
            m = np.zeros((x.shape[0], g.channels))
            for p in np.nonzero(cls >= 0)[0]:
                m[:, cls[p]] += x[:, p]
            blocks.append(m)
        if not blocks:
            continue  # no reconstructible consumer: the group abstains (left whole, reported)
        order = greedy_order(np.concatenate(blocks))
        rank = np.empty(g.channels)
        rank[order] = np.arange(g.channels)  # removed first = lowest score
        for k, atoms in enumerate(g.atoms):
            scores[atoms] = rank[k] / len(atoms)
    return scores


def greedy_order(x: np.ndarray) -> np.ndarray:
    """Channels in the order ThiNet removes them: each step adds the channel that keeps
    ||sum of removed contributions||^2 smallest."""
    n = x.shape[1]
    chosen = np.zeros(n, dtype=bool)
    s = np.zeros(x.shape[0])
    order = []
    for _ in range(n):
        cost = ((s[:, None] + x) ** 2).sum(0)
        cost[chosen] = np.inf
        c = int(np.argmin(cost))
        order.append(c)
        chosen[c] = True
        s += x[:, c]
    return np.array(order)


def rescale(graph, analysis, plan, pruned: onnx.ModelProto, data, samples: int = 2000, seed: int = 0) -> list[str]:
    """Least-squares scales for the kept input channels of every consumer that lost inputs; returns the
    consumers changed. The pruned model is edited in place (its sliced weights are per-node copies)."""

    keep = Keep(analysis, plan)
    contrib = collect(graph, analysis, data, samples, seed)
    inits = {t.name: t for t in pruned.graph.initializer}
    nodes = {n.name: n for n in pruned.graph.node}
    changed = []
    for name, (x, labels) in contrib.items():
        kept = keep.mask(labels)
        if kept.all():
            continue
        node = nodes[name]
        wname = node.input[1]
        if wname in graph.consts:  # never scale a weight that other nodes may share
            continue
        y = x[:, labels >= 0].sum(1)
        a = x[:, kept & (labels >= 0)]
        scale, *_ = np.linalg.lstsq(a, y, rcond=None)
        w = numpy_helper.to_array(inits[wname]).astype(np.float64)
        new_idx = np.nonzero(kept & (labels >= 0))[0]
        pos = np.cumsum(kept) - 1  # position of each kept input in the pruned tensor
        if node.op_type == "Conv":
            w[:, pos[new_idx]] *= scale[None, :, None, None]
        elif node.op_type == "Gemm" and int(attr(node, "transB", 0)):
            w[:, pos[new_idx]] *= scale[None, :]
        else:
            w[pos[new_idx], :] *= scale[:, None]
        inits[wname].CopyFrom(numpy_helper.from_array(w.astype(numpy_helper.to_array(inits[wname]).dtype), wname))
        changed.append(name)
    return changed
