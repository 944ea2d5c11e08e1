"""The windows a Conv reads, wherever they are read by hand (the torch interpreter, the refit's patches,
ThiNet's samples): padded by ``auto_pad`` (SAME_UPPER / SAME_LOWER, as paddle2onnx writes the PP-HGNetV2
stem of PP-OCRv6 models) and 1-D (audio and text models), as onnxruntime reads them."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import G, redundant_source
from helpers import outputs

import onnxprune
from onnxprune.linear import Layer, outputs_at, patches, positions, to_mats
from onnxprune.pads import explicit_pads

CASES = [
    # (kernel, stride, dilation, spatial): an even kernel is where UPPER and LOWER differ
    (2, 1, 1, 7),
    (2, 2, 1, 7),
    (3, 2, 1, 8),
    (5, 1, 1, 9),
    (4, 3, 1, 10),
]


def _same_conv(mode: str, k: int, s: int, d: int, size: int):
    b = G(shape=(2, 3, size, size + 1), seed=3)
    w = b.const(b.rng.standard_normal((5, 3, k, k)).astype(np.float32))
    bias = b.const(b.rng.standard_normal(5).astype(np.float32))
    b.output(b.op("Conv", [b.x, w, bias], kernel_shape=[k, k], strides=[s, s], dilations=[d, d], auto_pad=mode))
    return b.model()


def test_explicit_pads_put_the_odd_pad_where_the_mode_says():
    assert explicit_pads(b"SAME_UPPER", None, (7,), (2,)) == [0, 1]
    assert explicit_pads(b"SAME_LOWER", None, (7,), (2,)) == [1, 0]
    assert explicit_pads("SAME_UPPER", None, (8, 8), (3, 3), (2, 2)) == [0, 0, 1, 1]
    assert explicit_pads(b"VALID", [1, 1, 1, 1], (8, 8), (3, 3)) == [0, 0, 0, 0]
    assert explicit_pads(b"NOTSET", [1, 2, 3, 4], (8, 8), (3, 3)) == [1, 2, 3, 4]
    assert explicit_pads(None, None, (8,), (3,)) == [0, 0]


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k,s,d,size", CASES)
def test_torch_evaluation_pads_a_same_conv_as_onnxruntime(mode, k, s, d, size):
    torch = pytest.importorskip("torch")
    from onnxprune.torch_eval import TorchGraph

    m = _same_conv(mode, k, s, d, size)
    g = onnxprune.load(m)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size + 1)).astype(np.float32)
    want = outputs(m, {"x": x})[0]
    with torch.no_grad():
        got, _ = TorchGraph(g.model, g.consts).run({"x": x})
    assert got[0].shape == want.shape
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k,s,size", [(2, 1, 7), (3, 2, 8), (2, 2, 9)])
def test_torch_evaluation_pads_a_same_pool_as_onnxruntime(op, mode, k, s, size):
    torch = pytest.importorskip("torch")
    from onnxprune.torch_eval import TorchGraph

    b = G(shape=(1, 3, size, size))
    b.output(b.op(op, [b.x], kernel_shape=[k, k], strides=[s, s], auto_pad=mode))
    m = b.model()
    x = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32) - 2  # pads must not win a max
    want = outputs(m, {"x": x})[0]
    with torch.no_grad():
        got, _ = TorchGraph(m, {}).run({"x": x})
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k,s,d,size", CASES)
def test_refit_windows_are_the_ones_a_same_conv_reads(mode, k, s, d, size):
    """The refit's rows times the weights give onnxruntime's outputs at the sampled positions: a window
    shifted by one pad (SAME_UPPER read as SAME_LOWER) would not."""
    m = _same_conv(mode, k, s, d, size)
    node = m.graph.node[0]
    g = onnxprune.load(m)
    w, bias = g.consts[node.input[1]].astype(np.float64), g.consts[node.input[2]].astype(np.float64)
    x = np.random.default_rng(2).standard_normal((2, 3, size, size + 1)).astype(np.float32)
    y = outputs(m, {"x": x})[0]
    n, _, h, wd = y.shape
    pos = np.stack(np.unravel_index(np.arange(n * h * wd), (n, h, wd)), 1)  # every output position
    lay = Layer(node=node.name, op_type="Conv", weight=node.input[1], bias=node.input[2], groups=1)
    rows = patches(lay, node, x, pos, (k, k))[:, 0, :]
    got = rows @ to_mats(lay, w)[0] + bias
    np.testing.assert_allclose(got, y[pos[:, 0], :, pos[:, 1], pos[:, 2]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_a_same_padded_consumer_is_refitted_exactly(mode):
    """Conv A's channels 4 and 5 are combinations of 0-3: once they are removed, the 2x2 SAME-padded
    consumer B can be refitted to the original's outputs exactly, and is (it used to be left out)."""
    b = G(shape=(2, 4, 9, 9), seed=1)
    rng = np.random.default_rng(5)
    a = redundant_source(b, rng)
    wb = b.const(rng.standard_normal((5, 6, 2, 2)).astype(np.float32))
    bias = b.const(rng.standard_normal(5).astype(np.float32))
    b.output(b.op("Conv", [a, wb, bias], kernel_shape=[2, 2], auto_pad=mode))
    b.nodes[-1].name = "B"
    m = b.model()
    rep = onnxprune.analyze(m)
    gid = next(grp.id for grp in rep.groups if "A" in grp.sources)
    plan = onnxprune.PruningPlan({gid: [4, 5]})
    data = [{"x": np.random.default_rng(k).standard_normal((2, 4, 9, 9)).astype(np.float32)} for k in range(8)]
    plain, _ = onnxprune.prune(m, plan=plan)
    fitted, rep = onnxprune.prune(m, plan=plan, data=data, recovery=onnxprune.RecoveryOptions(ridge=0.0))
    assert rep.recovery["reconstructed"] == ["B"]
    feeds = {"x": np.random.default_rng(9).standard_normal((2, 4, 9, 9)).astype(np.float32)}
    ref = outputs(m, feeds)[0]
    assert np.abs(outputs(plain, feeds)[0] - ref).max() > 0.1
    np.testing.assert_allclose(outputs(fitted, feeds)[0], ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_thinet_samples_a_same_conv_at_the_windows_it_reads(mode):
    """ThiNet's per-channel contributions at a sampled output add up to onnxruntime's output there."""
    from onnxprune.criteria.thinet import _conv_samples

    m = _same_conv(mode, 2, 1, 1, 7)
    node = m.graph.node[0]
    g = onnxprune.load(m)
    w, bias = g.consts[node.input[1]], g.consts[node.input[2]]
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 8)).astype(np.float32)
    y = outputs(m, {"x": x})[0]
    contrib = _conv_samples(node, x, w, y.shape, 64, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the draws _conv_samples made, in its order
    n, o = rng.integers(0, 2, 64), rng.integers(0, 5, 64)
    h, v = rng.integers(0, y.shape[2], 64), rng.integers(0, y.shape[3], 64)
    np.testing.assert_allclose(contrib.sum(1) + bias[o], y[n, o, h, v], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s,d,pads", [(3, 1, 1, [1, 1]), (5, 2, 1, [2, 1]), (3, 1, 2, [0, 0]), (1, 2, 1, [0, 0])])
def test_refit_windows_of_a_1d_conv_are_the_ones_it_reads(k, s, d, pads):
    b = G(shape=(2, 3, 17), seed=3)
    w = b.const(b.rng.standard_normal((5, 3, k)).astype(np.float32))
    bias = b.const(b.rng.standard_normal(5).astype(np.float32))
    b.output(b.op("Conv", [b.x, w, bias], kernel_shape=[k], strides=[s], dilations=[d], pads=pads))
    m = b.model()
    node = m.graph.node[0]
    g = onnxprune.load(m)
    x = np.random.default_rng(2).standard_normal((2, 3, 17)).astype(np.float32)
    y = outputs(m, {"x": x})[0]
    lay = Layer(node=node.name, op_type="Conv", weight=node.input[1], bias=node.input[2], groups=1)
    pos = positions(lay, y.shape, 10_000, np.random.default_rng(0))  # every output position, height 0
    assert len(pos) == y.shape[0] * y.shape[2] and not pos[:, 1].any()
    rows = patches(lay, node, x, pos, (k,))[:, 0, :]
    got = rows @ to_mats(lay, g.consts[node.input[1]].astype(np.float64))[0] + g.consts[node.input[2]]
    np.testing.assert_allclose(got, outputs_at(lay, y, pos), rtol=1e-4, atol=1e-4)


def test_a_1d_consumer_is_refitted_exactly():
    """As the 2-D case in test_recovery.py: channels 4 and 5 of A are combinations of 0-3, so the 1-D
    consumer B (kernel 3, padded) can be refitted to the original's outputs exactly."""
    b = G(shape=(2, 4, 30), seed=1)
    rng = np.random.default_rng(5)
    a = redundant_source(b, rng, kernel=(1,))
    wb, bias = b.const(rng.standard_normal((5, 6, 3)).astype(np.float32)), b.const(np.zeros(5, np.float32))
    b.output(b.op("Conv", [a, wb, bias], kernel_shape=[3], pads=[1, 1]))
    b.nodes[-1].name = "B"
    m = b.model()
    gid = next(grp.id for grp in onnxprune.analyze(m).groups if "A" in grp.sources)
    plan = onnxprune.PruningPlan({gid: [4, 5]})
    data = [{"x": np.random.default_rng(k).standard_normal((2, 4, 30)).astype(np.float32)} for k in range(8)]
    fitted, rep = onnxprune.prune(m, plan=plan, data=data, recovery=onnxprune.RecoveryOptions(ridge=0.0))
    assert rep.recovery["reconstructed"] == ["B"]
    feeds = {"x": np.random.default_rng(9).standard_normal((2, 4, 30)).astype(np.float32)}
    np.testing.assert_allclose(outputs(fitted, feeds)[0], outputs(m, feeds)[0], rtol=1e-3, atol=1e-3)


def test_thinet_samples_a_1d_conv_at_the_windows_it_reads():
    from onnxprune.criteria.thinet import _conv_samples

    b = G(shape=(2, 3, 17), seed=3)
    w = b.const(b.rng.standard_normal((5, 3, 3)).astype(np.float32))
    bias = b.const(b.rng.standard_normal(5).astype(np.float32))
    b.output(b.op("Conv", [b.x, w, bias], kernel_shape=[3], strides=[2], pads=[1, 0]))
    m = b.model()
    node = m.graph.node[0]
    g = onnxprune.load(m)
    x = np.random.default_rng(4).standard_normal((2, 3, 17)).astype(np.float32)
    y = outputs(m, {"x": x})[0]
    contrib = _conv_samples(node, x, g.consts[node.input[1]], y.shape, 64, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the draws _conv_samples made, in its order
    n, o = rng.integers(0, 2, 64), rng.integers(0, 5, 64)
    rng.integers(0, 1, 64)  # the height: 0
    v = rng.integers(0, y.shape[2], 64)
    np.testing.assert_allclose(contrib.sum(1) + g.consts[node.input[2]][o], y[n, o, v], rtol=1e-4, atol=1e-4)


def _time_major_model(op):
    b = G(shape=(2, 4, 3, 9), seed=1)
    rng = np.random.default_rng(5)
    a = redundant_source(b, rng)
    seq = b.op("Reshape", [b.op("Transpose", [a], perm=[3, 0, 1, 2]), b.const(np.array([9, 2, 18], np.int64))])
    gates = {"LSTM": 4, "GRU": 3}[op]
    w = b.const((0.3 * rng.standard_normal((2, gates * 5, 18))).astype(np.float32))
    r = b.const((0.3 * rng.standard_normal((2, gates * 5, 5))).astype(np.float32))
    b.output(b.op(op, [seq, w, r], n_out=2, direction="bidirectional", hidden_size=5)[0])
    b.nodes[-1].name = "R"
    return b.model()


def test_a_time_major_input_is_sampled_over_every_step_of_every_sequence():
    """The LSTM input (sequence, batch, features) has 9 x 2 rows per batch of 2 images: sampled as if
    its first axis were the batch, 2 rows a batch (the first steps) were all the refit saw."""
    from onnxprune.recovery import Recovery
    from onnxprune.recovery.reconstruct import refittable, sample_targets

    m = _time_major_model("LSTM")
    rep = onnxprune.analyze(m)
    gid = next(grp.id for grp in rep.groups if "A" in grp.sources)
    plan = onnxprune.PruningPlan({gid: [4, 5]})
    pruned, _ = onnxprune.prune(m, plan=plan)
    batches = [
        ({"x": np.random.default_rng(k).standard_normal((2, 4, 3, 9)).astype(np.float32)}, None) for k in range(3)
    ]
    rec = Recovery(rep.graph, rep.analysis, plan, pruned)
    layers = refittable(rec)
    assert [lay.node for lay in layers] == ["R"]
    pos, targets = sample_targets(rec, layers, batches, samples=8192, seed=0)
    assert [sorted(p.tolist()) for p in pos["R"]] == [list(range(18))] * 3
    assert all(t.shape == (18, 19) for t in targets["R"])  # original rows with a column of ones (the map)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_a_recurrent_layer_is_refitted_exactly_from_its_input_product(op):
    """A CRNN neck: conv A's channels 4 and 5 are combinations of 0-3 and the recurrent layer reads them
    as features. Its gates' input product X W^T + Wb is linear, so once they are removed it can be
    refitted to the original's product exactly, and the whole recurrence then follows."""
    m = _time_major_model(op)
    gid = next(grp.id for grp in onnxprune.analyze(m).groups if "A" in grp.sources)
    plan = onnxprune.PruningPlan({gid: [4, 5]})
    data = [{"x": np.random.default_rng(k).standard_normal((2, 4, 3, 9)).astype(np.float32)} for k in range(8)]
    plain, _ = onnxprune.prune(m, plan=plan)
    fitted, rep = onnxprune.prune(
        m, plan=plan, data=data, recalibrate=True, recovery=onnxprune.RecoveryOptions(ridge=0.0)
    )
    assert rep.recovery["reconstructed"] == ["R"] and "recalibration" in rep.recovery["skipped"]["R"]
    feeds = {"x": np.random.default_rng(9).standard_normal((2, 4, 3, 9)).astype(np.float32)}
    ref = outputs(m, feeds)[0]
    assert np.abs(outputs(plain, feeds)[0] - ref).max() > 0.05
    np.testing.assert_allclose(outputs(fitted, feeds)[0], ref, rtol=1e-3, atol=1e-3)
    assert len(fitted.graph.node[-1].input) >= 4 and fitted.graph.node[-1].input[3]  # the refit's bias
