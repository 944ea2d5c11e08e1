"""Tiny hand-built ONNX graphs for rule tests: a fluent builder over onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class G:
    def __init__(self, shape=(1, 4, 8, 8), opset: int = 17, seed: int = 0, name: str = "x", domains=()):
        self.domains = list(domains)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))]
        self.outputs: list[onnx.ValueInfoProto] = []
        self.opset = opset
        self.k = 0
        self.x = name

    def _name(self, op: str) -> str:
        self.k += 1
        return f"{op.lower()}{self.k}"

    def const(self, arr, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> str | list[str]:
        name = self._name(op)
        outs = [f"{name}_o{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        group: int = 1,
        bias: bool = True,
        name: str | None = None,
        w: np.ndarray | None = None,
    ) -> str:
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) if w is None else w)
        ins = [x, w]
        if bias:
            ins.append(self.const(self.rng.standard_normal(cout).astype(np.float32)))
        out = self.op("Conv", ins, pads=[k // 2] * 4, group=group, kernel_shape=[k, k])
        if name:
            self.nodes[-1].name = name
        return out

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        ps = [
            self.const(r.random(c).astype(np.float32) + 0.5),
            self.const(r.standard_normal(c).astype(np.float32)),
            self.const(r.standard_normal(c).astype(np.float32)),
            self.const(r.random(c).astype(np.float32) + 0.5),
        ]
        return self.op("BatchNormalization", [x, *ps])

    def gemm(self, x: str, k: int, n: int) -> str:
        w = self.const(self.rng.standard_normal((n, k)).astype(np.float32))
        b = self.const(self.rng.standard_normal(n).astype(np.float32))
        return self.op("Gemm", [x, w, b], transB=1)

    def matmul(self, x: str, k: int, n: int) -> str:
        return self.op("MatMul", [x, self.const(self.rng.standard_normal((k, n)).astype(np.float32))])

    def ints(self, vals) -> str:
        return self.const(np.array(vals, dtype=np.int64))

    def output(self, name: str, shape=None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def model(self) -> onnx.ModelProto:
        outs = self.outputs
        g = helper.make_graph(self.nodes, "t", self.inputs, outs, self.inits)
        m = helper.make_model(
            g, opset_imports=[helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in self.domains]
        )
        m.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        typed = [o if o.type.tensor_type.HasField("shape") else orig for o, orig in zip(inferred.graph.output, outs)]
        del m.graph.output[:]
        m.graph.output.extend(typed)
        return m


def compounding(
    depth: int = 20, c: int = 32, classes: int = 6625, common: float = 1e4, seed: int = 0
) -> onnx.ModelProto:
    """A correct rewrite whose float32 difference exceeds 1e-4: 20 residual HardSwish blocks, LayerNorms,
    and a 6,625-way softmax whose logits share a large common component, so float32 rounding of the
    accumulation (different in the pruned Gemm) moves the probabilities (as in PP-OCR's recogniser)."""
    g = G((1, 3, 24, 24), seed=seed)
    x = g.conv(g.x, 3, c)
    for i in range(depth):
        w = (g.rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        x = g.op("Add", [x, g.op("HardSwish", [g.conv(x, c, c, w=w)])])
        if i % 5 == 4:
            t = g.op("Transpose", [x], perm=[0, 2, 3, 1])
            t = g.op(
                "LayerNormalization", [t, g.const(np.ones(c, np.float32)), g.const(np.zeros(c, np.float32))], axis=-1
            )
            x = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    w = (g.rng.standard_normal(c) * common + g.rng.standard_normal((classes, c))).astype(np.float32)
    logits = g.op("Gemm", [f, g.const(w), g.const(np.zeros(classes, np.float32))], transB=1)
    g.output(g.op("Softmax", [logits], axis=-1))
    return g.model()


def absorbable() -> onnx.ModelProto:
    """Conv 'a' (4 channels) then a linear 1x1 'head'. Channel 3 of 'a' is twice channel 0, and both have
    the largest filters (so l1 keeps them): only 0 or 3 can go without loss, and least squares can
    absorb either into the head exactly."""
    b = G(shape=(1, 3, 6, 6))
    wa = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    wa[0] *= 3
    wa[3] = 2 * wa[0]
    a = b.conv(b.x, 3, 4, w=wa, bias=False, name="a")
    b.output(b.conv(a, 4, 5, k=1, name="head"))
    return b.model()


def redundant_source(b: G, rng: np.random.Generator, kernel=(1, 1)) -> str:
    """Conv "A" (4 -> 6 channels, no activation) whose channels 4 and 5 are linear combinations of
    channels 0-3: without them a consumer can be refitted to the original's outputs exactly."""
    wa = rng.standard_normal((6, 4, *kernel)).astype(np.float32)
    wa[4] = 0.5 * wa[0] - 1.5 * wa[2]
    wa[5] = wa[1] + 0.25 * wa[3]
    a = b.op("Conv", [b.x, b.const(wa)], kernel_shape=list(kernel))
    b.nodes[-1].name = "A"
    return a
