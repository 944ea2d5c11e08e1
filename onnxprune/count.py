"""MACs and parameters per node, from static shapes (batch as given by the input shapes, usually 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .groups.rules._util import attr


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
    if op == "Conv" and out is not None and sh(1) is not None:
        return int(np.prod(out)) * int(np.prod(sh(1)[1:]))
    if op == "ConvTranspose" and sh(0) is not None and sh(1) is not None:
        w = sh(1)
        return int(np.prod(sh(0))) * int(np.prod(w[1:]))
    if op == "Gemm" and out is not None and sh(0) is not None:
        k = sh(0)[0] if int(attr(node, "transA", 0)) else sh(0)[1]
        return int(np.prod(out)) * int(k)
    if op == "MatMul" and out is not None and sh(0) is not None:
        return int(np.prod(out)) * int(sh(0)[-1])
    return 0


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def count(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> Counts:
    per = {n.name: node_macs(n, shapes) for n in model.graph.node}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)
    return Counts(sum(per.values()), params, per)
