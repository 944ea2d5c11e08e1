"""The linear layers that recovery refits and the obs criterion scores: Conv (1-D or 2-D, any group), Gemm
and MatMul with a constant weight, and the input product ``X W^T + Wb`` of an LSTM/GRU/RNN (every gate of
every direction: its outputs are ``directions x gates x hidden`` columns, computed, never a tensor).

Every layer is seen as G independent matrices ``(G, K, Og)`` -- G the Conv groups (1 for dense layers), K
the inputs one output reads (Cg x kh x kw for a Conv), Og the outputs per group -- so least squares,
bias folding and per-channel rescaling are written once for every kind. Sample rows are drawn at
positions chosen from the *output* shape alone, so the original and the pruned model (which differ only
in channel counts) are sampled at the same images and pixels. A 1-D Conv (audio, text) is read as a
2-D one of height 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .groups.rules._util import attr
from .pads import conv_geometry_2d

LINEAR = ("Conv", "Gemm", "MatMul")
RECURRENT = ("LSTM", "GRU", "RNN")


@dataclass
class Layer:
    node: str
    op_type: str
    weight: str  # initializer name in the model being edited
    bias: str | None
    groups: int
    alpha: float = 1.0  # Gemm: y = alpha * x W + beta * c
    beta: float = 1.0
    trans_b: bool = False

    @property
    def channel_axis(self) -> int:
        """Axis of the output (and input) that carries channels: 1 for Conv, last for dense layers."""
        return 1 if self.op_type == "Conv" else -1


def weight_uses(model: onnx.ModelProto) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    return uses


def as_layer(node: onnx.NodeProto, inits: dict, uses: dict[str, int]) -> tuple[Layer | None, str]:
    """The layer view of ``node``, or None and why it cannot be refitted."""
    if node.op_type in RECURRENT:
        return _recurrent_layer(node, inits, uses)
    if node.op_type not in LINEAR:
        return None, "not a linear layer"
    if len(node.input) < 2 or node.input[1] not in inits:
        return None, "weight is not a constant"
    w = inits[node.input[1]]
    if w.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None, "weight is not float32/float64"
    if uses.get(node.input[1], 0) > 1:
        return None, "weight is shared with another node"
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and (bias not in inits or uses.get(bias, 0) > 1):
        return None, "bias is not a constant of its own"
    if node.op_type == "Conv":
        if len(w.dims) not in (3, 4):
            return None, "only 1-D and 2-D convolutions are refitted"
        return Layer(node.name, "Conv", node.input[1], bias, int(attr(node, "group", 1))), ""
    if len(w.dims) != 2:
        return None, "weight is not a matrix"
    if node.op_type == "Gemm":
        if int(attr(node, "transA", 0)):
            return None, "Gemm with transA"
        if bias is not None and (len(inits[bias].dims) > 1 and inits[bias].dims[0] != 1):
            return None, "Gemm bias is not per output"
        return Layer(
            node.name,
            "Gemm",
            node.input[1],
            bias,
            1,
            float(attr(node, "alpha", 1.0)),
            float(attr(node, "beta", 1.0)),
            bool(int(attr(node, "transB", 0))),
        ), ""
    return Layer(node.name, "MatMul", node.input[1], None, 1), ""


def _recurrent_layer(node: onnx.NodeProto, inits: dict, uses: dict[str, int]) -> tuple[Layer | None, str]:
    w = inits.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None, "input weight is not a float constant"
    if uses.get(node.input[1], 0) > 1:
        return None, "weight is shared with another node"
    if int(attr(node, "layout", 0)):
        return None, "batch-first layout"
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if bias is not None and (bias not in inits or uses.get(bias, 0) > 1):
        return None, "bias is not a constant of its own"
    return Layer(node.name, node.op_type, node.input[1], bias, 1), ""


def to_mats(layer: Layer, w: np.ndarray) -> np.ndarray:
    """Weight -> (G, K, Og) effective matrices (Gemm's alpha folded in)."""
    if layer.op_type in RECURRENT:  # (directions, gates x hidden, K) -> K x (directions x gates x hidden)
        return w.transpose(2, 0, 1).reshape(w.shape[2], -1)[None]
    if layer.op_type == "Conv":
        o = w.shape[0]
        g = layer.groups
        return w.reshape(g, o // g, -1).transpose(0, 2, 1)
    m = w.T if layer.trans_b else w
    return (m * layer.alpha)[None]


def from_mats(layer: Layer, mats: np.ndarray, shape) -> np.ndarray:
    if layer.op_type in RECURRENT:
        return mats[0].reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0)
    if layer.op_type == "Conv":
        return mats.transpose(0, 2, 1).reshape(shape)
    m = mats[0] / layer.alpha
    return m.T if layer.trans_b else m


def bias_vector(layer: Layer, inits: dict, out_channels: int) -> np.ndarray:
    """Effective per-output bias (zeros when the layer has none)."""
    if layer.bias is None:
        return np.zeros(out_channels)
    return effective_bias(layer, numpy_helper.to_array(inits[layer.bias]), out_channels)


def effective_bias(layer: Layer, b: np.ndarray, out_channels: int) -> np.ndarray:
    """The per-output bias a bias array adds: a recurrent layer's input half ``Wb`` of B (directions,
    2 x gates x hidden); the recurrent half ``Rb`` stays where it is."""
    b = np.asarray(b, np.float64)
    if layer.op_type in RECURRENT:
        return b[:, : b.shape[1] // 2].reshape(-1).copy()
    return np.broadcast_to(b.reshape(-1) * layer.beta, (out_channels,)).copy()


def set_weight(layer: Layer, model: onnx.ModelProto, inits: dict, w: np.ndarray, b: np.ndarray | None) -> None:
    """Write weight (and bias, adding a bias input when the layer had none) into ``model``."""
    old = inits[layer.weight]
    dtype = numpy_helper.to_array(old).dtype
    inits[layer.weight].CopyFrom(numpy_helper.from_array(w.astype(dtype), layer.weight))
    if b is None:
        return
    if layer.op_type == "MatMul":
        raise ValueError("MatMul has no bias input")
    if layer.op_type in RECURRENT:
        b = _recurrent_bias(layer, inits, w.shape, b)
    if layer.bias is None:
        node = next(n for n in model.graph.node if n.name == layer.node)
        names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
        name, k = f"{layer.node}.recovered_bias", 0
        while name in names:
            k += 1
            name = f"{layer.node}.recovered_bias_{k}"
        t = model.graph.initializer.add()
        t.CopyFrom(numpy_helper.from_array((b / layer.beta).astype(dtype), name))
        inits[name] = t
        slot = 3 if layer.op_type in RECURRENT else 2
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name
        layer.bias = name
        return
    shape = tuple(inits[layer.bias].dims)
    inits[layer.bias].CopyFrom(numpy_helper.from_array((b / layer.beta).reshape(shape).astype(dtype), layer.bias))


def _recurrent_bias(layer: Layer, inits: dict, w_shape, b: np.ndarray) -> np.ndarray:
    """The whole B (directions, 2 x gates x hidden) with its input half set to ``b``."""
    dirs, gates_hidden = w_shape[0], w_shape[1]
    full = np.zeros((dirs, 2 * gates_hidden))
    if layer.bias is not None:
        full[:] = numpy_helper.to_array(inits[layer.bias])
    full[:, :gates_hidden] = np.asarray(b).reshape(dirs, gates_hidden)
    return full


def positions(layer: Layer, out_shape: tuple[int, ...], m: int, rng: np.random.Generator) -> np.ndarray:
    """Sample positions: (n, h, w) rows for a Conv, flat row indices for a dense layer. Where the batch
    has no more than ``m`` positions (a classifier's Gemm: one per image) each is taken once: drawn with
    replacement they would repeat (vgg11's 4,609-wide normal equations built from 16x the rows the data
    has) and weigh the rows unevenly, at random."""
    if layer.op_type == "Conv":
        n, _, h, w = out_shape if len(out_shape) == 4 else (*out_shape[:2], 1, out_shape[2])  # 1-D: height 1
        if n * h * w <= m:
            return np.stack(np.unravel_index(np.arange(n * h * w), (n, h, w)), 1)
        return np.stack([rng.integers(0, n, m), rng.integers(0, h, m), rng.integers(0, w, m)], 1)
    rows = int(np.prod(out_shape[:-1]))
    return np.arange(rows) if rows <= m else rng.integers(0, rows, m)


def outputs_at(layer: Layer, y: np.ndarray, pos: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
    """(m, O) output values at ``pos``, only ``channels`` of them where given. A dense layer's are
    gathered at once (a recogniser's 18,385-way head made the full rows, then the channel subset, cost
    more than its pass); a Conv's rows (a few hundred channels) whole, then the subset, which measured
    1.8x faster than the 2-D gather."""
    if channels is not None and len(channels) == y.shape[1 if layer.op_type == "Conv" else -1]:
        channels = None
    if layer.op_type == "Conv":
        y = y if y.ndim == 4 else y[:, :, None, :]
        rows = y[pos[:, 0], :, pos[:, 1], pos[:, 2]]
        return rows if channels is None else rows[:, channels]
    flat = y.reshape(-1, y.shape[-1])
    return flat[pos] if channels is None else flat[pos[:, None], channels[None, :]]


def patches(
    layer: Layer, node: onnx.NodeProto, x: np.ndarray, pos: np.ndarray, k_shape, dtype=np.float64
) -> np.ndarray:
    """(m, G, K) inputs read by the outputs at ``pos`` (as ``dtype``), in the order of ``to_mats``' K axis.

    Only the sampled windows are gathered: a 1x1 Conv reads one pixel per output, a kxk one a window of
    a strided view (taps in the zero padding read as 0). Padding and converting the whole activation
    tensor, or indexing it element by element, cost more than the least squares themselves."""
    if layer.op_type != "Conv":
        return np.asarray(x.reshape(-1, x.shape[-1])[pos], dtype=dtype)[:, None, :]
    (kh, kw), pads, (sh, sw), (dh, dw) = conv_geometry_2d(node, x.shape[2:], k_shape)
    x = x if x.ndim == 4 else x[:, :, None, :]  # 1-D: height 1
    if kh == kw == 1 and not any(pads):
        p = x[pos[:, 0], :, pos[:, 1] * sh, pos[:, 2] * sw]  # m x C
        return np.asarray(p, dtype=dtype).reshape(len(pos), layer.groups, -1)
    if any(pads):
        return _padded_windows(x, pos, (kh, kw), pads, (sh, sw), (dh, dw), dtype).reshape(len(pos), layer.groups, -1)
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    windows = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(2, 3))  # N C H' W' sh sw
    p = windows[pos[:, 0], :, pos[:, 1] * sh, pos[:, 2] * sw][..., ::dh, ::dw]  # m x C x kh x kw
    return np.asarray(p, dtype=dtype).reshape(len(pos), layer.groups, -1)


def _padded_windows(x: np.ndarray, pos: np.ndarray, k_shape, pads, strides, dilations, dtype) -> np.ndarray:
    """(m, C, kh, kw) windows at ``pos`` of ``x`` zero-padded by ``pads``, without padding ``x``: each
    tap's row and column are clipped into the tensor and the taps that fall in the padding are zeroed.
    Why: padding the whole batch to read a few hundred windows copied every activation once per batch
    and layer (numpy's pad was the largest cost of resnet56's solves on 4,096 images)."""
    h, w = x.shape[2:]
    (kh, kw), (sh, sw), (dh, dw) = k_shape, strides, dilations
    rows = (pos[:, 1] * sh - pads[0])[:, None] + dh * np.arange(kh)[None, :]  # m x kh
    cols = (pos[:, 2] * sw - pads[1])[:, None] + dw * np.arange(kw)[None, :]  # m x kw
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # m x kh x kw
    rc, cc = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    # advanced indices around the channel slice: the result is m x kh x kw x C
    p = np.asarray(x[pos[:, 0, None, None], :, rc[:, :, None], cc[:, None, :]], dtype=dtype)
    p *= inside[..., None]
    return p.transpose(0, 3, 1, 2)


def channel_stats_axes(layer_or_op: str, ndim: int) -> tuple[int, ...]:
    """Axes reduced for per-channel statistics of a layer's output."""
    if layer_or_op in ("Conv", "BatchNormalization"):
        return tuple(a for a in range(ndim) if a != 1)
    return tuple(range(ndim - 1))
