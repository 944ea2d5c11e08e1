"""Activation statistics through onnxruntime: APoZ (Hu et al., Network Trimming) and mean |activation|.

Channels are measured where they are consumed -- the inputs of the Conv/Gemm/MatMul that read them,
i.e. after whatever activation, normalisation or residual Add precedes -- so one definition covers
plain chains, residual streams and concatenations. APoZ is the fraction of values <= 0 there: the
zeros of a ReLU, and for smooth activations (SiLU, GELU, HardSwish) the share of their near-zero
negative region. Batches stream through one session; only per-channel sums are kept.
"""

from __future__ import annotations

import numpy as np

from ..data import open_data
from ..errors import OnnxPruneError
from ..progress import bar
from ..runtime import session_with_outputs
from .registry import criterion


def consumed_tensors(graph, analysis) -> dict[str, np.ndarray]:
    nodes = {n.name: n for n in graph.model.graph.node}
    out: dict[str, np.ndarray] = {}
    for node_name, k, labels in analysis.terminals:
        out.setdefault(nodes[node_name].input[k], labels)
    return out


def activation_stats(graph, analysis, data) -> tuple[np.ndarray, np.ndarray]:
    """Per atom: (fraction of values <= 0, mean |value|) over all data; NaN where never consumed."""

    if data is None:
        raise OnnxPruneError("this criterion needs data: pass --calib (e.g. random:64, data.npz, a folder of images)")
    tensors = consumed_tensors(graph, analysis)
    names = list(tensors)
    sess = session_with_outputs(graph.model, names, graph.consts)
    n_atoms = len(analysis.roots)
    zeros, mags, counts = np.zeros(n_atoms), np.zeros(n_atoms), np.zeros(n_atoms)

    for feeds, _ in bar(open_data(data, graph), desc="activation statistics", unit="batch"):
        for name, arr in zip(names, sess.run(names, feeds)):
            labels = tensors[name]
            arr = np.asarray(arr, dtype=np.float32)
            axes = tuple(ax for ax, d in enumerate(labels.shape) if d == 1)
            z = np.mean(arr <= 0, axis=axes, keepdims=True).reshape(-1)
            m = np.mean(np.abs(arr), axis=axes, keepdims=True).reshape(-1)
            lab = labels.reshape(-1)
            ok = lab >= 0
            np.add.at(zeros, lab[ok], z[ok])
            np.add.at(mags, lab[ok], m[ok])
            np.add.at(counts, lab[ok], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, zeros / counts, np.nan), np.where(counts > 0, mags / counts, np.nan)


@criterion(
    "apoz",
    "1 - APoZ, the share of non-positive activations where channels are consumed (Hu et al. 2016); needs --calib",
    needs_data=True,
)
def apoz(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    return 1.0 - activation_stats(graph, analysis, data)[0]


@criterion("mean-act", "mean |activation| where channels are consumed; needs --calib", needs_data=True)
def mean_act(graph, analysis, data=None, seed: int = 0) -> np.ndarray:
    return activation_stats(graph, analysis, data)[1]
