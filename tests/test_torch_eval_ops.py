"""Ops of the torch interpreter equal onnxruntime's where third-party exports need them: LSTM, GRU and RNN
(CRNN recognisers such as ddddocr's, silero-vad), Pad in reflect/edge mode on any axes. The float64
verification arbiter, Taylor scores and distillation run through it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime import run_model

torch = pytest.importorskip("torch")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op, direction="forward", layout=0, bias=True, state=True, peephole=False, **attrs):
    rng = np.random.default_rng(0)
    seq, batch, inp, hid = 6, 3, 5, 4
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    consts = {
        "W": rng.standard_normal((dirs, g * hid, inp)) * 0.5,
        "R": rng.standard_normal((dirs, g * hid, hid)) * 0.5,
    }
    names = ["x", "W", "R", "B" if bias else "", ""]
    if bias:
        consts["B"] = rng.standard_normal((dirs, 2 * g * hid)) * 0.5
    if state:
        states = ["h0", "c0"] if op == "LSTM" else ["h0"]
        for s in states:
            consts[s] = rng.standard_normal((batch, dirs, hid) if layout else (dirs, batch, hid))
        names += states
    if peephole:
        consts["P"] = rng.standard_normal((dirs, 3 * hid))
        names += [""] * (7 - len(names)) + ["P"]
    outs = ["y", "yh", "yc"] if op == "LSTM" else ["y", "yh"]
    node = helper.make_node(op, names, outs, direction=direction, hidden_size=hid, layout=layout, **attrs)
    xshape = [batch, seq, inp] if layout else [seq, batch, inp]
    graph = helper.make_graph(
        [node],
        "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, {k: v.astype(np.float32) for k, v in consts.items()}, rng.standard_normal(xshape).astype(np.float32)


CASES = [
    ("LSTM", {}),
    ("LSTM", {"direction": "reverse"}),
    ("LSTM", {"direction": "bidirectional"}),
    ("LSTM", {"direction": "bidirectional", "bias": False, "state": False}),
    ("LSTM", {"peephole": True, "clip": 0.8}),
    ("GRU", {"direction": "bidirectional"}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"bias": False, "state": False, "direction": "reverse"}),
    ("RNN", {"direction": "bidirectional"}),
    ("RNN", {"activations": ["Relu"]}),
]


@pytest.mark.parametrize("float64", [False, True])
@pytest.mark.parametrize("op,kw", CASES)
def test_recurrent_ops_equal_onnxruntime(op, kw, float64):
    from onnxprune.torch_eval import TorchGraph

    model, consts, x = _model(op, **kw)
    want = run_model(model, {"x": x})
    with torch.no_grad():
        got, _ = TorchGraph(model, consts, float64=float64).run({"x": x})
    assert len(got) == len(want)
    for w, o in zip(want, got):
        assert tuple(o.shape) == w.shape
        np.testing.assert_allclose(o.numpy(), w, rtol=1e-4, atol=1e-5)


def test_batch_first_layout_is_the_transposed_sequence():
    """onnxruntime does not run layout=1; its result is the layout-0 op's, transposed."""
    from onnxprune.torch_eval import TorchGraph

    m0, c0, x0 = _model("LSTM", direction="bidirectional")
    m1, c1, _ = _model("LSTM", direction="bidirectional", layout=1)
    c1 = {**c1, "h0": c0["h0"].transpose(1, 0, 2), "c0": c0["c0"].transpose(1, 0, 2)}
    want = run_model(m0, {"x": x0})
    with torch.no_grad():
        got, _ = TorchGraph(m1, c1).run({"x": np.ascontiguousarray(x0.transpose(1, 0, 2))})
    np.testing.assert_allclose(got[0].numpy(), want[0].transpose(2, 0, 1, 3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), want[1].transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize(
    "shape,pads", [((2, 9), [0, 3, 0, 2]), ((2, 3, 5, 6), [0, 0, 1, 2, 0, 0, 2, 1]), ((4, 7), [1, 0, 1, 0])]
)
def test_pad_in_reflect_and_edge_modes_on_any_axes(mode, shape, pads):
    """silero-vad reflects its audio (batch, samples) before the STFT convolution."""
    from onnxprune.torch_eval import TorchGraph

    node = helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)
    graph = helper.make_graph(
        [node],
        "p",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(pads, np.int64), "p")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        got, _ = TorchGraph(model, {"p": np.array(pads, np.int64)}).run({"x": x})
    np.testing.assert_allclose(got[0].numpy(), run_model(model, {"x": x})[0], rtol=1e-6)


def test_distillation_trains_a_recurrent_layers_weights_and_gradients_reach_them():
    from onnxprune.recovery.finetune import trainable_names
    from onnxprune.torch_eval import TorchGraph

    model, consts, x = _model("LSTM", direction="bidirectional", peephole=True)
    assert trainable_names(model, consts) == ["B", "P", "R", "W"]
    tg = TorchGraph(model, consts)
    for k in ("W", "R", "B", "P"):
        tg.consts[k].requires_grad_(True)
    out, _ = tg.run({"x": x})
    out[0].square().sum().backward()
    assert all(float(tg.consts[k].grad.abs().sum()) > 0 for k in ("W", "R", "B", "P"))
