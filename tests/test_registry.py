"""Every registered rule runs on a tiny model: a rule that is registered but never exercised fails here.

Each recipe takes the 8-channel output of a source Conv ``src`` (values in (0, 1)) through the op, and
says whether ``src``'s channels must stay prunable ("pass") or freeze ("freeze"). Prunable cases are
then pruned with random plans, each verified exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from graphs import G
from helpers import random_plan
from onnx import TensorProto, helper

import onnxprune
from onnxprune.groups import RULES

F = TensorProto.FLOAT


def pc(b, shape=(1, 8, 1, 1), lo=0.5):
    return b.const((np.random.default_rng(1).random(shape) + lo).astype(np.float32))


def unary(op, **kw):
    return lambda b, t: b.op(op, [t], **kw)


def binary(op):
    return lambda b, t: b.op(op, [t, pc(b)])


def to_float(b, y):
    return b.op("Cast", [y], to=F)


def compare(op):
    return lambda b, t: to_float(b, b.op(op, [t, pc(b)]))


def logical(op):
    return lambda b, t: to_float(b, b.op(op, [b.op("Greater", [t, pc(b, lo=0)]), b.op("Less", [t, pc(b, lo=0)])]))


def subgraph_if(b, t):
    then = helper.make_graph(
        [helper.make_node("Relu", [t], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", F, [1, 8, 6, 6])],
    )
    other = helper.make_graph(
        [helper.make_node("Sigmoid", [t], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", F, [1, 8, 6, 6])],
    )
    cond = b.const(np.array(True))
    return b.op("If", [cond], then_branch=then, else_branch=other)


def subgraph_loop(b, t):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", [t], ["scan_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("scan_out", F, [1, 8, 6, 6]),
        ],
    )
    y = b.op("Loop", [b.ints(1), b.const(np.array(True))], body=body)
    return b.op("Squeeze", [y, b.ints([0])])


def subgraph_scan(b, t):
    body = helper.make_graph(
        [helper.make_node("Relu", ["s_in"], ["s_out"])],
        "body",
        [helper.make_tensor_value_info("s_in", F, [8, 6, 6])],
        [helper.make_tensor_value_info("s_out", F, [8, 6, 6])],
    )
    return b.op("Scan", [t], body=body, num_scan_inputs=1)


def recurrent(op):
    """Channels as the features of a sequence (W, N, H x C) read by a bidirectional recurrent layer."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]

    def recipe(b, t):
        seq = b.op("Reshape", [b.op("Transpose", [t], perm=[3, 0, 2, 1]), b.ints([6, 1, 48])])
        w, r = (b.const(0.3 * np.random.rand(2, gates * 5, k).astype(np.float32)) for k in (48, 5))
        return b.op(op, [seq, w, r], n_out=2, direction="bidirectional", hidden_size=5)[0]

    return recipe


def roi(op):
    return lambda b, t: b.op(op, [t, b.const(np.array([[0, 0, 0, 3, 3]], dtype=np.float32))], pooled_shape=[2, 2])


RECIPES = {
    **{
        op: ("pass", unary(op))
        for op in (
            "Abs",
            "Acos",
            "Asin",
            "Asinh",
            "Atan",
            "Atanh",
            "Ceil",
            "Celu",
            "Cos",
            "Cosh",
            "Elu",
            "Erf",
            "Exp",
            "Floor",
            "Gelu",
            "HardSigmoid",
            "HardSwish",
            "Identity",
            "LeakyRelu",
            "Log",
            "Mish",
            "Neg",
            "Reciprocal",
            "Relu",
            "Round",
            "Selu",
            "Shrink",
            "Sigmoid",
            "Sign",
            "Sin",
            "Sinh",
            "Softplus",
            "Softsign",
            "Sqrt",
            "Tan",
            "Tanh",
            "ThresholdedRelu",
            "Dropout",
        )
    },
    "Acosh": ("pass", lambda b, t: b.op("Acosh", [b.op("Add", [t, pc(b, (1,), lo=1)])])),
    "Cast": ("pass", lambda b, t: to_float(b, b.op("Cast", [t], to=TensorProto.DOUBLE))),
    "CastLike": ("pass", lambda b, t: b.op("CastLike", [t, b.const(np.float32(0))])),
    "Not": ("pass", lambda b, t: to_float(b, b.op("Not", [b.op("Greater", [t, pc(b)])]))),
    "IsNaN": ("pass", lambda b, t: to_float(b, b.op("IsNaN", [t]))),
    "IsInf": ("pass", lambda b, t: to_float(b, b.op("IsInf", [t]))),
    **{op: ("pass", binary(op)) for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean")},
    **{op: ("pass", compare(op)) for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")},
    **{op: ("pass", logical(op)) for op in ("And", "Or", "Xor")},
    "Mod": (
        "pass",
        lambda b, t: to_float(
            b,
            b.op(
                "Mod",
                [
                    b.op("Cast", [b.op("Mul", [t, pc(b, (1,), lo=99)])], to=TensorProto.INT32),
                    b.const(np.arange(1, 9, dtype=np.int32).reshape(1, 8, 1, 1)),
                ],
            ),
        ),
    ),
    "BitShift": (
        "pass",
        lambda b, t: to_float(
            b,
            b.op(
                "BitShift",
                [
                    b.op("Cast", [b.op("Mul", [t, pc(b, (1,), lo=9)])], to=TensorProto.UINT8),
                    b.const(np.arange(8, dtype=np.uint8).reshape(1, 8, 1, 1) % 3),
                ],
                direction="LEFT",
            ),
        ),
    ),
    "Where": ("pass", lambda b, t: b.op("Where", [b.op("Greater", [t, pc(b, lo=0)]), t, pc(b)])),
    "PRelu": ("pass", lambda b, t: b.op("PRelu", [b.op("Sub", [t, pc(b, (1,), lo=0.5)]), pc(b, (8, 1, 1))])),
    "Clip": ("pass", lambda b, t: b.op("Clip", [t, b.const(np.float32(0.2)), b.const(np.float32(0.8))])),
    "BatchNormalization": ("pass", lambda b, t: b.bn(t, 8)),
    "InstanceNormalization": ("pass", lambda b, t: b.op("InstanceNormalization", [t, pc(b, (8,)), pc(b, (8,))])),
    "LayerNormalization": ("pass", lambda b, t: b.op("LayerNormalization", [t, pc(b, (8, 6, 6))], axis=1)),
    "GroupNormalization": (
        "freeze",
        lambda b, t: b.op("GroupNormalization", [t, pc(b, (8,)), pc(b, (8,))], num_groups=2),
    ),
    "LpNormalization": ("freeze", unary("LpNormalization", axis=1)),
    "MeanVarianceNormalization": ("pass", unary("MeanVarianceNormalization")),
    "Softmax": ("freeze", unary("Softmax", axis=1)),
    "LogSoftmax": ("pass", unary("LogSoftmax", axis=-1)),
    "Hardmax": ("freeze", unary("Hardmax", axis=1)),
    "MaxPool": ("pass", unary("MaxPool", kernel_shape=[2, 2], strides=[2, 2])),
    "AveragePool": ("pass", unary("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "LpPool": ("pass", unary("LpPool", kernel_shape=[2, 2])),
    "GlobalAveragePool": ("pass", unary("GlobalAveragePool")),
    "GlobalMaxPool": ("pass", unary("GlobalMaxPool")),
    "GlobalLpPool": ("pass", unary("GlobalLpPool")),
    "MaxRoiPool": ("pass", roi("MaxRoiPool")),
    "RoiAlign": (
        "pass",
        lambda b, t: b.op(
            "RoiAlign",
            [t, b.const(np.array([[0, 0, 3, 3], [1, 1, 5, 4]], dtype=np.float32)), b.ints([0, 0])],
            output_height=2,
            output_width=2,
        ),
    ),
    "Resize": ("pass", lambda b, t: b.op("Resize", [t, "", "", b.ints([1, 8, 9, 9])], mode="linear")),
    "Pad": ("pass", lambda b, t: b.op("Pad", [t, b.ints([0, 0, 1, 2, 0, 0, 2, 1])], mode="reflect")),
    **{
        op: ("pass", unary(op, axes=[2, 3], keepdims=1))
        for op in (
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceL1",
            "ReduceL2",
            "ReduceSumSquare",
        )
    },
    "ReduceSum": ("pass", lambda b, t: b.op("ReduceSum", [t, b.ints([1])], keepdims=1)),
    "ArgMax": ("pass", lambda b, t: to_float(b, b.op("ArgMax", [t], axis=2))),
    "ArgMin": ("freeze", lambda b, t: to_float(b, b.op("ArgMin", [t], axis=1))),
    "Concat": ("pass", lambda b, t: b.op("Concat", [t, b.conv(b.x, 4, 3)], axis=1)),
    "Split": (
        "pass",
        lambda b, t: b.op("Add", b.op("Split", [t, b.ints([2, 6])], n_out=2, axis=1)[:1] + [pc(b, (1, 2, 1, 1))]),
    ),
    "Slice": ("pass", lambda b, t: b.op("Slice", [t, b.ints([1, 0]), b.ints([7, 5]), b.ints([1, 2])])),
    "Gather": ("pass", lambda b, t: b.op("Gather", [t, b.ints([6, 1, 1, 3])], axis=1)),
    "Reshape": ("pass", lambda b, t: b.op("Reshape", [t, b.ints([0, 8, 36])])),
    "Flatten": ("pass", lambda b, t: b.gemm(b.op("Flatten", [t]), 288, 4)),
    "Transpose": ("pass", lambda b, t: b.op("Transpose", [t], perm=[0, 2, 3, 1])),
    "Squeeze": ("pass", lambda b, t: b.op("Squeeze", [b.op("GlobalAveragePool", [t]), b.ints([2, 3])])),
    "Unsqueeze": ("pass", lambda b, t: b.op("Unsqueeze", [t, b.ints([0])])),
    "Expand": ("pass", lambda b, t: b.op("Expand", [b.op("GlobalMaxPool", [t]), b.ints([1, 8, 6, 6])])),
    "Tile": ("pass", lambda b, t: b.op("Tile", [t, b.ints([1, 1, 2, 1])])),
    "Shape": (
        "pass",
        lambda b, t: b.op(
            "Reshape",
            [t, b.op("Concat", [b.op("Slice", [b.op("Shape", [t]), b.ints([0]), b.ints([1])]), b.ints([-1])], axis=0)],
        ),
    ),
    "Size": ("freeze", lambda b, t: b.op("Add", [t, b.op("Cast", [b.op("Size", [t])], to=F)])),
    "Conv": ("pass", lambda b, t: b.conv(t, 8, 6)),
    "ConvTranspose": (
        "pass",
        lambda b, t: b.op("ConvTranspose", [t, b.const(np.random.rand(8, 5, 2, 2).astype(np.float32))], strides=[2, 2]),
    ),
    "Gemm": ("pass", lambda b, t: b.gemm(b.op("Flatten", [b.op("GlobalAveragePool", [t])]), 8, 5)),
    "MatMul": ("pass", lambda b, t: b.matmul(b.op("Transpose", [t], perm=[0, 2, 3, 1]), 8, 5)),
    "Einsum": (
        "pass",
        lambda b, t: b.op("Einsum", [t, b.const(np.random.rand(8, 5).astype(np.float32))], equation="nchw,cd->ndhw"),
    ),
    **{op: ("pass", recurrent(op)) for op in ("LSTM", "GRU", "RNN")},
    "If": ("freeze", subgraph_if),
    "Loop": ("freeze", subgraph_loop),
    "Scan": ("freeze", subgraph_scan),
}


def build(op):
    b = G(shape=(1, 4, 6, 6), opset={"Gelu": 20, "Mish": 18, "GroupNormalization": 21}.get(op, 17))
    src = b.conv(b.x, 4, 8, name="src")
    t = b.op("Sigmoid", [src])
    y = RECIPES[op][1](b, t)
    tail = b.op("ReduceSum", [b.op("Cast", [y], to=F)], keepdims=0)  # a sum is exact under masking
    b.output(tail, shape=[])
    return b.model()


def test_every_rule_has_a_recipe():
    assert set(RULES) == set(RECIPES), set(RULES) ^ set(RECIPES)


@pytest.mark.parametrize("op", sorted(RECIPES))
def test_rule(op):
    model = build(op)
    assert any(n.op_type == op for n in model.graph.node)
    rep = onnxprune.analyze(model)
    src = next(g for g in rep.groups if "src" in g.sources)
    if RECIPES[op][0] == "freeze":
        assert not src.prunable, f"{op} should freeze the channels it cannot prove safe"
        return
    assert src.prunable, src.reason
    for seed in range(3):
        pruned, r = onnxprune.prune(model, plan=random_plan(rep, seed))
        assert r.verification["passed"]
        assert r.after.params < r.before.params
