"""MACs and parameters per node, from static shapes (batch as given by the input shapes, usually 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .groups.rules._util import attr
from .groups.rules.control import implicit_reads


@dataclass
class Counts:
    macs: int
    params: int
    per_node: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"macs": int(self.macs), "params": int(self.params)}


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    def sh(k):
        return shapes.get(node.input[k]) if len(node.input) > k and node.input[k] else None

    out = shapes.get(node.output[0]) if node.output else None
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):  # quantized layers count too: they make no groups
        w = sh(3 if op == "QLinearConv" else 1)
        return 0 if out is None or w is None else int(np.prod(out)) * int(np.prod(w[1:]))
    if op == "ConvTranspose" and sh(0) is not None and sh(1) is not None:
        w = sh(1)
        return int(np.prod(sh(0))) * int(np.prod(w[1:]))
    if op == "Gemm" and out is not None and sh(0) is not None:
        k = sh(0)[0] if int(attr(node, "transA", 0)) else sh(0)[1]
        return int(np.prod(out)) * int(k)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and out is not None and sh(0) is not None:
        return int(np.prod(out)) * int(sh(0)[-1])
    if op in ("LSTM", "GRU", "RNN") and sh(0) is not None and sh(1) is not None and sh(2) is not None:
        # every step: the gates' input and recurrent products, for each direction and sequence
        steps_by_batch = int(np.prod(sh(0)[:-1]))
        dirs, gates_hidden, inputs = sh(1)
        return steps_by_batch * dirs * gates_hidden * (inputs + sh(2)[-1])
    return 0


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
#: initializer types counted as parameters: float weights and the 8-bit weights of quantized layers (not
#: the int64 shapes and indices)
PARAM_TYPES = FLOAT_TYPES + (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)


def count(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> Counts:
    per = {n.name: node_macs(n, shapes) for n in model.graph.node}
    read = {i for n in model.graph.node for i in [*n.input, *implicit_reads(n)]} | {o.name for o in model.graph.output}
    # only what a node reads: folding a DequantizeLinear leaves its 8-bit weight behind, unread
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in PARAM_TYPES and t.name in read)
    return Counts(sum(per.values()), params, per)
