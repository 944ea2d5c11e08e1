"""First-order Taylor importance (Molchanov et al. 2017), from a torch backprop pass over the ONNX graph.

Each channel is scored where it is consumed (the input of the next Conv/Gemm/MatMul) by
|mean over positions of activation x gradient|, averaged over examples, then L2-normalised per consumed
tensor so layers compare (the paper's layer-wise normalisation). Loss: cross-entropy when the data has
labels. Without labels, the KL divergence to the original model's soft outputs has zero gradient at the
unpruned model (the two distributions are equal), so the label-free loss is the KL divergence to the
original's *hard* outputs, i.e. cross-entropy against its own top-1.
"""

from __future__ import annotations

import numpy as np

from ..data import open_data
from ..errors import OnnxPruneError
from ..progress import bar
from ..torch_eval import TorchGraph
from .activation import consumed_tensors
from .registry import criterion


def _loss(torch, logits, labels):
    logits = logits.reshape(logits.shape[0], -1)
    target = torch.as_tensor(labels).long().reshape(-1) if labels is not None else logits.detach().argmax(1)
    return torch.nn.functional.cross_entropy(logits, target)


def first_order_terms(tg, feeds, labels, tensors) -> dict[str, np.ndarray]:
    """Per consumed tensor: activation x gradient, averaged over the non-channel axes of each example
    (shape: batch x positions along the labelled axes)."""
    import torch

    outs, kept = tg.run(feeds, keep=set(tensors), grad=True)
    loss = _loss(torch, outs[0], labels)
    loss.backward()
    res = {}
    for name, labels_arr in tensors.items():
        a = kept[name]
        if a.grad is None:
            continue
        prod = (a * a.grad).detach().cpu().numpy().astype(np.float64)
        axes = tuple(ax for ax, d in enumerate(labels_arr.shape) if d == 1 and ax != 0)
        res[name] = prod.mean(axis=axes, keepdims=True) if axes else prod
    return res


@criterion(
    "taylor",
    "|activation x gradient| where channels are consumed, from a torch backprop pass, "
    "L2-normalised per layer (Molchanov et al. 2017); labels -> cross-entropy, else the "
    "original's top-1; needs --calib and torch",
    needs_data=True,
)
def taylor(graph, analysis, data=None, seed: int = 0) -> np.ndarray:

    if data is None:
        raise OnnxPruneError("taylor needs data: pass --calib (e.g. random:64, data.npz, a folder of images)")
    try:
        tg = TorchGraph(graph.model, graph.consts)
    except ImportError:
        raise OnnxPruneError("taylor needs torch: pip install 'onnxprune[torch]'") from None
    tensors = consumed_tensors(graph, analysis)
    sums = {name: 0.0 for name in tensors}
    count = 0
    for feeds, labels in bar(open_data(data, graph), desc="taylor", unit="batch"):
        terms = first_order_terms(tg, feeds, labels, tensors)
        n = len(next(iter(feeds.values())))
        for name, v in terms.items():
            sums[name] = sums[name] + np.abs(v).sum(axis=0, keepdims=True)
        count += n
    scores = np.zeros(len(analysis.roots))
    hits = np.zeros(len(analysis.roots))
    for name, labels in tensors.items():
        if isinstance(sums[name], float):
            continue
        theta = (sums[name] / count).reshape(-1)
        theta = theta / (np.linalg.norm(theta) + 1e-12)
        lab = labels.reshape(-1)
        ok = lab >= 0
        np.add.at(scores, lab[ok], theta[ok])
        np.add.at(hits, lab[ok], 1)
    with np.errstate(invalid="ignore"):
        return np.where(hits > 0, scores / np.maximum(hits, 1), np.nan)
