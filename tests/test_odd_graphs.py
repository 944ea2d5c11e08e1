"""Odd but legal graphs: each must prune exactly (or freeze what it cannot prove) and run afterwards."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from graphs import G
from helpers import feeds_for, outputs
from onnx import TensorProto, helper

import onnxprune
from onnxprune.runtime import run_model


def _prune_and_check(model, shapes=None, ratio=0.5, **kw):
    # exact ratios (round_to=1): these graphs have groups of 2 to 8 channels
    pruned, rep = onnxprune.prune(model, criterion="l1", ratio=ratio, input_shapes=shapes, round_to=1, **kw)
    assert rep.verification["passed"]
    onnx.checker.check_model(pruned, full_check=True)
    return pruned, rep


def test_dynamic_batch_and_spatial_dims(tmp_path):
    b = G(shape=("N", 3, "H", "W"))
    a = b.op("Relu", [b.conv(b.x, 3, 8)])
    b.output(b.op("GlobalAveragePool", [b.conv(a, 8, 4)]))
    m = b.model()
    with pytest.raises(onnxprune.OnnxPruneError, match="--input-shape"):
        onnxprune.prune(m, ratio=0.5)  # spatial dims have no default: the error says what to pass
    pruned, rep = _prune_and_check(m, shapes=["x:1x3x16x16"])
    dims = [d.dim_param or d.dim_value for d in pruned.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]  # still dynamic in the output
    x = np.random.default_rng(0).standard_normal((3, 3, 20, 12)).astype(np.float32)
    assert run_model(pruned, {"x": x})[0].shape == (3, 4, 1, 1)  # other sizes than the one analysed


def test_multiple_inputs_and_outputs():
    b = G(shape=(1, 3, 8, 8))
    b.inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8]))
    a = b.op("Relu", [b.conv(b.x, 3, 8)])
    c = b.op("Relu", [b.conv("y", 3, 8)])
    s = b.op("Add", [a, c])  # couples the two branches
    b.output(b.conv(s, 8, 2))
    b.output(b.conv(a, 8, 5))
    m = b.model()
    pruned, rep = _prune_and_check(m)
    assert any(g["prunable"] and g["removed"] for g in rep.groups)
    feeds = feeds_for(pruned)
    assert [o.shape for o in outputs(pruned, feeds)] == [(1, 2, 8, 8), (1, 5, 8, 8)]


def test_group_feeding_a_graph_output_stays_whole():
    b = G()
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="tapped")])
    b.output(a)  # an intermediate feature map that is also a model output (detection necks)
    b.output(b.conv(b.op("Relu", [b.conv(a, 8, 8, name="inner")]), 8, 3))
    pruned, rep = _prune_and_check(b.model())
    tapped = next(g for g in rep.groups if "tapped" in g["sources"])
    inner = next(g for g in rep.groups if "inner" in g["sources"])
    assert not tapped["prunable"] and "output" in tapped["reason"] and inner["removed"]
    assert outputs(pruned, feeds_for(pruned))[0].shape == (1, 8, 8, 8)


def _if_model():
    b = G(shape=(1, 4, 8, 8))
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="outer")])
    w = b.const(np.random.default_rng(1).standard_normal((8, 8, 1, 1)).astype(np.float32))
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("Conv", [a, w], ["t_out"])], "then", [], [then_out])
    else_g = helper.make_graph([helper.make_node("Relu", [a], ["e_out"])], "else", [], [else_out])
    cond = b.const(np.array(True))
    b.nodes.append(helper.make_node("If", [cond], ["if_out"], then_branch=then_g, else_branch=else_g, name="branch"))
    mid = b.op("Relu", [b.conv(b.x, 4, 6, name="free")])
    b.output(b.conv("if_out", 8, 3, k=1))
    b.output(b.conv(mid, 6, 2))
    m = b.model()
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info(m.graph.output[0].name, TensorProto.FLOAT, [1, 3, 8, 8]))
    return m


def test_subgraph_reads_freeze_their_groups_and_stay_untouched():
    m = _if_model()
    pruned, rep = _prune_and_check(m)
    outer = next(g for g in rep.groups if "outer" in g["sources"])
    free = next(g for g in rep.groups if "free" in g["sources"])
    assert not outer["prunable"] and "subgraph" in outer["reason"].lower()
    assert free["prunable"] and free["removed"]
    before = next(n for n in m.graph.node if n.op_type == "If")
    after = next(n for n in pruned.graph.node if n.op_type == "If")
    assert after.SerializeToString() == before.SerializeToString()
    feeds = feeds_for(m)
    assert np.allclose(outputs(pruned, feeds)[0], outputs(m, feeds)[0], atol=1e-5)


def test_non_float_input_is_carried_through():
    """An int64 side input (e.g. a class index for conditional heads) next to the image."""
    b = G(shape=(1, 3, 8, 8))
    b.inputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, [1]))
    a = b.op("Relu", [b.conv(b.x, 3, 8)])
    y = b.conv(a, 8, 6)
    b.output(b.op("Gather", [y, "idx"], axis=1))
    pruned, rep = _prune_and_check(b.model())
    assert any(g["removed"] for g in rep.groups)
    out = run_model(pruned, {"x": np.ones((1, 3, 8, 8), np.float32), "idx": np.array([2], np.int64)})[0]
    assert out.shape == (1, 1, 8, 8)


def test_fp16_model_prunes_and_verifies():
    b = G(shape=(1, 3, 8, 8))
    a = b.op("Relu", [b.conv(b.x, 3, 16)])
    b.output(b.conv(b.op("Relu", [b.conv(a, 16, 16)]), 16, 4))
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m16 = convert_float_to_float16(b.model(), keep_io_types=False)
    assert m16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    pruned, rep = _prune_and_check(m16)
    assert all(t.data_type == TensorProto.FLOAT16 for t in pruned.graph.initializer if t.dims)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float16)
    assert run_model(pruned, {"x": x})[0].dtype == np.float16
    assert rep.after.params < rep.before.params


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def test_exporter_shape_annotations_survive_the_rewrite_resized():
    """onnxruntime's fusions read the exporter's value_info (the recogniser's SkipLayerNormalization):
    it is kept, with each resized axis concrete where the exporter wrote the old size and unknown where
    it wrote a name, so no symbolic dim claims two axes equal after one changed."""
    b = G(shape=("N", 3, "H", "W"))
    a = b.conv(b.x, 3, 8, name="first")
    r = b.op("Relu", [a])
    c = b.conv(r, 8, 4)
    b.output(b.op("GlobalAveragePool", [c]))
    m = b.model()
    vi = helper.make_tensor_value_info
    m.graph.value_info.extend(
        [
            vi(a, TensorProto.FLOAT, ["N", 8, "H", "W"]),
            vi(r, TensorProto.FLOAT, ["N", "C", "H", "W"]),
            vi(c, TensorProto.FLOAT, ["N", 4, "H", "W"]),
        ]
    )
    pruned, rep = _prune_and_check(m, shapes=["x:1x3x16x16"])  # the full check rejects a stale annotation
    first = next(g for g in rep.groups if "first" in g["sources"])
    kept = 8 - len(first["removed"])
    assert 0 < kept < 8
    got = {v.name: _dims(v) for v in pruned.graph.value_info}
    assert got == {a: ["N", kept, "H", "W"], r: ["N", None, "H", "W"], c: ["N", 4, "H", "W"]}
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 20)).astype(np.float32)
    assert run_model(pruned, {"x": x})[0].shape == (2, 4, 1, 1)


@pytest.mark.parametrize("fmt", ["dynamic", "qdq"])
def test_a_quantized_model_says_its_integer_layers_are_not_pruned_and_still_counts_them(tmp_path, fmt):
    """A quantized export makes no groups (scores, rewrite and proof work on float weights, and a
    dynamically quantized activation's scale spans every channel): analyze and prune say so, and the
    MACs and parameters still count the quantized layers."""
    quant = pytest.importorskip("onnxruntime.quantization")
    from test_cli import run

    b = G(shape=(1, 4, 8, 8))
    b.output(b.conv(b.op("Relu", [b.conv(b.x, 4, 8)]), 8, 4))
    fp32, q8 = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    onnx.save(b.model(), fp32)
    if fmt == "dynamic":
        quant.quantize_dynamic(fp32, q8, weight_type=quant.QuantType.QUInt8)
    else:

        class Reader(quant.CalibrationDataReader):
            def __init__(self):
                self.feeds = iter([{"x": np.ones((1, 4, 8, 8), np.float32)}])

            def get_next(self):
                return next(self.feeds, None)

        quant.quantize_static(fp32, q8, Reader(), quant_format=quant.QuantFormat.QDQ)
    rep, ref = onnxprune.analyze(q8), onnxprune.analyze(fp32)
    assert not any(g.prunable for g in rep.groups) and len(rep.analysis.notes) == 1
    kind = "2 ConvInteger" if fmt == "dynamic" else "QuantizeLinear"
    assert kind in rep.analysis.notes[0] and rep.to_json()["notes"] == rep.analysis.notes
    assert rep.counts.macs == ref.counts.macs  # the 8-bit weights are parameters (with a few scales)
    assert ref.counts.params <= rep.counts.params <= 1.05 * ref.counts.params
    assert not ref.analysis.notes
    rc, _, err = run("prune", q8, "-o", str(tmp_path / "p.onnx"), "--ratio", "0.3")
    assert rc == 0 and "quantized layers are not pruned" in err and not os.path.exists(tmp_path / "p.onnx")
    rc, _, err = run("prune", q8, "-o", str(tmp_path / "p.onnx"), "--target-macs", "0.5")
    assert rc == 1 and "no group is prunable (quantized layers are not pruned" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "p.onnx")


def test_a_state_input_carrying_the_batch_on_another_axis_gets_the_same_batch_when_verifying():
    """Verification runs a dynamic batch of 2; a recurrent state (2, batch, C) beside the input (batch,
    ...) must get batch 2 on its second axis too, or the model cannot run (silero-vad's LSTM state)."""
    b = G(shape=("batch", 4, 8, 8))
    b.inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "batch", 8]))
    a = b.op("GlobalAveragePool", [b.op("Relu", [b.conv(b.x, 4, 8)])])
    flat = b.op("Reshape", [a, b.const(np.array([0, -1], np.int64))])
    state = b.op("Gather", ["s", b.const(np.array(0, np.int64))], axis=0)
    b.output(b.op("Concat", [b.conv(b.x, 4, 4), b.conv(b.x, 4, 4)], axis=1))
    b.output(b.op("Concat", [flat, state], axis=1))
    _prune_and_check(b.model(), shapes=["x:1x4x8x8", "s:2x1x8"])


def _crnn(op: str = "LSTM"):
    """A CRNN recogniser's neck: conv features (N, C, H, W) turned into a sequence (W, N, C*H) that a
    bidirectional recurrent layer reads."""
    b = G(shape=(1, 3, 4, 10))
    feats = b.conv(b.op("Relu", [b.conv(b.x, 3, 6)]), 6, 5, name="feats")
    seq = b.op("Reshape", [b.op("Transpose", [feats], perm=[3, 0, 1, 2]), b.const(np.array([10, 1, 20], np.int64))])
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    w = b.const((0.3 * b.rng.standard_normal((2, gates * 7, 20))).astype(np.float32))
    r = b.const((0.3 * b.rng.standard_normal((2, gates * 7, 7))).astype(np.float32))
    bias = b.const((0.3 * b.rng.standard_normal((2, 2 * gates * 7))).astype(np.float32))
    outs = b.op(op, [seq, w, r, bias], n_out=2, direction="bidirectional", hidden_size=7)
    b.output(outs[0])
    return b.model()


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_a_recurrent_layer_reading_conv_features_prunes_them_and_wrong_rewrites_are_refused(op, monkeypatch):
    from helpers import refuses_wrong_rewrites

    model = _crnn(op)
    rep = onnxprune.analyze(model)
    feats = next(g for g in rep.groups if "feats" in g.sources)
    assert feats.prunable, feats.reason
    lstm = next(n for n in model.graph.node if n.op_type == op)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    assert rep.counts.per_node[lstm.name] == 10 * 2 * gates * 7 * (20 + 7)  # steps x dirs x gates x (in + hidden)
    plan = onnxprune.PruningPlan({feats.id: [1, 3]})
    pruned, r = onnxprune.prune(model, plan=plan)
    assert r.verification["passed"]
    weight = next(n for n in pruned.graph.node if n.op_type == op).input[1]
    w = next(t for t in pruned.graph.initializer if t.name == weight)
    assert list(w.dims) == [2, gates * 7, 12]  # 3 of 5 channels x height 4
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 10)).astype(np.float32)
    assert outputs(pruned, {"x": x})[0].shape == outputs(model, {"x": x})[0].shape
    assert {"shift", "drop"} <= set(refuses_wrong_rewrites(monkeypatch, rep.graph, rep.analysis, plan))


def test_a_legacy_export_computing_the_sequence_shape_from_shape_folds_its_static_channel_count():
    """PyTorch 1.9 at opset 12 writes ``x.reshape(w, b, c * h)`` with a dynamic width as
    Concat(Unsqueeze(Gather(Shape)), Unsqueeze(Mul(Gather(Shape), Gather(Shape)))), Unsqueeze's axes an
    attribute: the static c * h must fold to a constant the rewrite can edit (evaluated at the model's
    opset, not the newest, where that Unsqueeze fails), or the features freeze (ddddocr's common.onnx)."""
    b = G(shape=(1, 3, 4, "W"), opset=12)
    feats = b.conv(b.op("Relu", [b.conv(b.x, 3, 6)]), 6, 5, name="feats")
    t = b.op("Transpose", [feats], perm=[3, 0, 1, 2])  # (W, N, C, H)
    shape = b.op("Shape", [t])

    def dim(k):
        return b.op("Gather", [shape, b.const(np.array(k, np.int64))], axis=0)

    pieces = [b.op("Unsqueeze", [v], axes=[0]) for v in (dim(0), dim(1), b.op("Mul", [dim(2), dim(3)]))]
    seq = b.op("Reshape", [t, b.op("Concat", pieces, axis=0)])
    w = b.const((0.3 * b.rng.standard_normal((2, 28, 20))).astype(np.float32))
    r = b.const((0.3 * b.rng.standard_normal((2, 28, 7))).astype(np.float32))
    b.output(b.op("LSTM", [seq, w, r], n_out=2, direction="bidirectional", hidden_size=7)[0])
    model = b.model()
    rep = onnxprune.analyze(model, ["x:1x3x4x10"])
    assert all(g.prunable for g in rep.groups), [g.reason for g in rep.groups]
    pruned, r = _prune_and_check(model, shapes=["x:1x3x4x10"])
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 13)).astype(np.float32)  # another width
    assert outputs(pruned, {"x": x})[0].shape == outputs(model, {"x": x})[0].shape
