"""Recovery: least-squares reconstruction, bias compensation, statistics recalibration, distillation,
and the prune -> reconstruct -> finetune -> quantize chain."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from graphs import G, redundant_source
from helpers import outputs

import onnxprune
from onnxprune.errors import OnnxPruneError

HERE = os.path.dirname(__file__)
SAMPLES = os.path.join(HERE, "..", "calib", "samples", "fmnist_256.npz")
CALIB = os.path.join(HERE, "..", "calib", "samples", "fmnist_train_256.npz")
# 2,048 sample positions per refitted layer instead of 8,192: the normal equations cost samples x K^2
# (K up to 4,608 on vgg11), and the recovery these tests assert is already there at 2,048
FAST = onnxprune.RecoveryOptions(samples=2048)


def _plan_removing(model, source_node: str, channels) -> onnxprune.PruningPlan:
    rep = onnxprune.analyze(model)
    gid = next(g.id for g in rep.groups if source_node in g.sources)
    return onnxprune.PruningPlan({gid: list(channels)})


def _linear_combination_model():
    """Conv A (1x1, 4 -> 6, no activation): channels 4 and 5 are linear combinations of channels 0-3, so a
    consumer can be rewritten exactly without them. Consumer B: 3x3 with padding."""
    b = G(shape=(2, 4, 8, 8), seed=1)
    rng = np.random.default_rng(5)
    a = redundant_source(b, rng)
    y = b.conv(a, 6, 5, k=3, name="B")
    b.output(y)
    return b.model()


def test_least_squares_recovers_a_consumer_exactly_when_removed_channels_are_combinations():
    m = _linear_combination_model()
    plan = _plan_removing(m, "A", [4, 5])
    feeds = {"x": np.random.default_rng(9).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    data = [{"x": np.random.default_rng(k).standard_normal((2, 4, 8, 8)).astype(np.float32)} for k in range(8)]
    plain, _ = onnxprune.prune(m, plan=plan)
    fitted, rep = onnxprune.prune(m, plan=plan, data=data, recovery=onnxprune.RecoveryOptions(ridge=0.0))
    assert rep.recovery["reconstructed"] == ["B"]
    ref = outputs(m, feeds)[0]
    assert np.abs(outputs(plain, feeds)[0] - ref).max() > 0.1  # without the refit the output is wrong
    np.testing.assert_allclose(outputs(fitted, feeds)[0], ref, rtol=1e-3, atol=1e-3)


def test_recover_on_a_saved_model_matches_prune_and_refuses_another_plan(tmp_path):
    m = _linear_combination_model()
    plan = _plan_removing(m, "A", [4, 5])
    data = [{"x": np.random.default_rng(k).standard_normal((2, 4, 8, 8)).astype(np.float32)} for k in range(4)]
    plain, rep = onnxprune.prune(m, plan=plan)
    path = str(tmp_path / "p.onnx")
    onnx.save(plain, path)
    before = open(path, "rb").read()
    fitted, info = onnxprune.recover(m, path, rep.plan, data, ridge=0.0)
    assert info["reconstructed"] == ["B"] and open(path, "rb").read() == before  # input untouched
    feeds = {"x": data[0]["x"]}
    np.testing.assert_allclose(outputs(fitted, feeds)[0], outputs(m, feeds)[0], rtol=1e-3, atol=1e-3)
    other = _plan_removing(m, "A", [1])
    with pytest.raises(OnnxPruneError, match="does not match"):
        onnxprune.recover(m, path, other, data)


def _constant_channel_model(k: int):
    """A -> Relu: channel 2 is the constant 0.7 (zero weights, bias 0.7); consumer B is k x k."""
    b = G(shape=(2, 3, 6, 6), seed=2)
    rng = np.random.default_rng(4)
    wa = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ba = rng.standard_normal(4).astype(np.float32)
    wa[2], ba[2] = 0.0, 0.7
    a = b.op("Relu", [b.op("Conv", [b.x, b.const(wa), b.const(ba)], pads=[1, 1, 1, 1], kernel_shape=[3, 3])])
    b.nodes[-2].name = "A"
    b.output(b.conv(a, 4, 5, k=k, name="B"))
    return b.model()


@pytest.mark.parametrize("k", [1, 3])
def test_bias_compensation_is_exact_for_constant_channels_and_1x1_consumers(k):
    m = _constant_channel_model(k)
    plan = _plan_removing(m, "A", [2])
    data = [{"x": np.random.default_rng(s).standard_normal((2, 3, 6, 6)).astype(np.float32)} for s in range(3)]
    comp, rep = onnxprune.prune(m, plan=plan, data=data, reconstruct=False, bias_compensation=True)
    assert rep.recovery["bias_compensated"] == ["B"]
    feeds = {"x": np.random.default_rng(11).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    diff = np.abs(outputs(comp, feeds)[0] - outputs(m, feeds)[0])
    plain, _ = onnxprune.prune(m, plan=plan)
    assert np.abs(outputs(plain, feeds)[0] - outputs(m, feeds)[0]).max() > 0.05
    if k == 1:
        assert diff.max() < 1e-5
    else:  # padding: exact inside, the border reads zeros instead of 0.7 (documented)
        assert diff[:, :, 1:-1, 1:-1].max() < 1e-5 and diff.max() > 1e-3


def _bn_case():
    """A -> B -> BN (kept) -> C, with A losing channels 0 and 3: the model and the plan."""
    b = G(shape=(4, 3, 8, 8), seed=3)
    a = b.op("Relu", [b.conv(b.x, 3, 6, name="A")])
    bn = b.bn(b.conv(a, 6, 5, name="B"), 5)
    b.nodes[-1].name = "BN"
    b.output(b.conv(b.op("Relu", [bn]), 5, 2, name="C"))
    m = b.model()
    return m, _plan_removing(m, "A", [0, 3])


def _assert_bn_statistics_are_those_of(pruned, feeds: list[dict]) -> None:
    from onnxprune.runtime import session_with_outputs

    node = next(n for n in pruned.graph.node if n.name == "BN")
    sess = session_with_outputs(pruned, [node.input[0]])
    x = np.concatenate([sess.run([node.input[0]], f)[0] for f in feeds]).astype(np.float64)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    np.testing.assert_allclose(inits[node.input[3]], x.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inits[node.input[4]], x.var((0, 2, 3)), rtol=1e-3, atol=1e-4)


def test_recalibration_recomputes_remaining_batchnorm_statistics():
    m, plan = _bn_case()
    data = [{"x": np.random.default_rng(s).standard_normal((4, 3, 8, 8)).astype(np.float32)} for s in range(4)]
    pruned, rep = onnxprune.prune(m, plan=plan, data=data, reconstruct=False, recalibrate=True)
    assert "BN" in rep.recovery["recalibrated"]
    _assert_bn_statistics_are_those_of(pruned, data)


@pytest.mark.parametrize(
    ("inputs", "chosen"),
    [(8, [0, 7]), (9, [0, 4, 7]), (None, list(range(8))), (0, list(range(8))), (64, list(range(8)))],
)
def test_recalibration_statistics_come_from_batches_spread_over_the_set(inputs, chosen):
    """``recal_inputs``: the remaining BatchNormalization takes the statistics of whole batches spread
    evenly over the set (first and last, then between), at least that many inputs; all of them when
    the set is no larger (or None, or 0). The report says how many inputs that was."""
    m, plan = _bn_case()
    # every batch a different offset: statistics over other batches would show in the mean
    data = [{"x": (np.random.default_rng(s).standard_normal((4, 3, 8, 8)) + s).astype(np.float32)} for s in range(8)]
    options = onnxprune.RecoveryOptions(reconstruct=False, recalibrate=True, recal_inputs=inputs)
    pruned, rep = onnxprune.prune(m, plan=plan, data=data, recovery=options)
    assert rep.recovery["timings_s"]["breakdown"]["statistics_inputs"] == 4 * len(chosen)
    _assert_bn_statistics_are_those_of(pruned, [data[k] for k in chosen])


@pytest.mark.parametrize("reconstruct", [False, True])
def test_recalibration_matches_folded_layer_statistics_to_the_original(trained_models, reconstruct):
    """resnet20 has every BN folded: after recalibration each affected layer's kept output channels have the
    original's per-channel mean and variance on the calibration data (upstream layers already corrected).
    With reconstruction in the same sweep the statistics hold for the final, refitted model too, and the
    same layers are refitted as without recalibration."""
    from onnxprune.recovery.passes import moments

    path = os.path.join(trained_models, "resnet20.onnx")
    data = onnxprune.DataSpec(CALIB, batch_size=64, limit=128)
    pruned, rep = onnxprune.prune(path, "l1", ratio=0.3, data=data, reconstruct=reconstruct, recalibrate=True)
    changed = rep.recovery["recalibrated"]
    assert len(changed) > 10
    if reconstruct:
        _, alone = onnxprune.prune(path, "l1", ratio=0.3, data=data)
        assert rep.recovery["reconstructed"] == alone.recovery["reconstructed"]
        assert set(rep.recovery["reconstructed"]) <= set(changed)
    graph = onnxprune.load(path)
    analysis = onnxprune.analyze(graph).analysis
    from onnxprune.data import batches
    from onnxprune.plan import Keep, PruningPlan

    keep = Keep(analysis, PruningPlan.from_json(rep.plan))
    outs = {n.name: n.output[0] for n in graph.model.graph.node if n.name in changed}
    b = batches(data, graph)
    orig = moments(graph.model, {o: 1 for o in outs.values()}, b, arrays=graph.consts)
    now = moments(pruned, {o: 1 for o in outs.values()}, b)
    for out in list(outs.values())[:8]:
        labels = analysis.expected.get(out)
        kept = keep.along(labels, 1) if labels is not None else np.arange(len(orig[out][0]))
        np.testing.assert_allclose(now[out][0], orig[out][0][kept], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(now[out][1], orig[out][1][kept], rtol=1e-3, atol=1e-3)


def test_refit_and_recalibration_in_one_sweep_keep_the_bias_the_refit_added():
    """Layers without a bias (paddle2onnx exports) get one from the refit; the re-standardisation that
    follows in the same sweep must scale that bias, not write a fresh one beside it: the recovered
    layer's kept outputs then have the original's mean and variance."""
    b = G(shape=(4, 3, 8, 8), seed=4)
    a = b.op("Relu", [b.conv(b.x, 3, 8, name="A", bias=False)])
    mid = b.conv(a, 8, 6, name="B", bias=False)
    b.output(b.conv(b.op("Relu", [mid]), 6, 2, name="C"))
    m = b.model()
    plan = _plan_removing(m, "A", [0, 2, 5])
    data = [{"x": np.random.default_rng(s).standard_normal((4, 3, 8, 8)).astype(np.float32) + 0.5} for s in range(6)]
    pruned, rep = onnxprune.prune(m, plan=plan, data=data, recalibrate=True)
    assert rep.recovery["reconstructed"] == ["B"] and "B" in rep.recovery["recalibrated"]
    node = next(n for n in pruned.graph.node if n.name == "B")
    assert len([t for t in pruned.graph.initializer if t.name.startswith("B.recovered_bias")]) == 1
    from onnxprune.runtime import session_with_outputs

    def stats(model):
        sess = session_with_outputs(model, [mid])
        y = np.concatenate([sess.run([mid], f)[0] for f in data]).astype(np.float64)
        return y.mean((0, 2, 3)), y.var((0, 2, 3))

    assert node.output[0] == mid
    for got, want in zip(stats(pruned), stats(m)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model", ["resnet20.onnx", "vgg11.onnx", "mbv2_dynamo.onnx"])
def test_reconstruction_verifies_runs_and_recovers_accuracy(shared_models, model):
    """Structure still checks (the rewrite's shape check runs again after recovery), the model runs in
    onnxruntime, and on real data the refit recovers accuracy that plain pruning loses."""
    path = os.path.join(shared_models, model)
    data = onnxprune.DataSpec(CALIB, batch_size=64)
    plain, _ = onnxprune.prune(path, "l1", target_macs=0.6)
    fitted, rep = onnxprune.prune(path, "l1", target_macs=0.6, data=data, recovery=FAST)
    assert rep.verification["passed"] and rep.recovery["reconstructed"]
    onnx.checker.check_model(fitted)
    acc_plain = onnxprune.evaluate(plain, SAMPLES)["top1"]
    acc_fit = onnxprune.evaluate(fitted, SAMPLES)["top1"]
    assert acc_fit >= acc_plain + 10, (acc_plain, acc_fit)


def test_iterative_pruning_runs_recovery_after_every_step(trained_models):
    path = os.path.join(trained_models, "resnet20.onnx")
    _, rep = onnxprune.prune(
        path, "l1", target_macs=0.6, steps=2, data=onnxprune.DataSpec(CALIB, batch_size=64), recovery=FAST
    )
    names = rep.recovery["reconstructed"]
    assert len(names) > len(set(names))  # the same layers were refitted in both steps


def test_distillation_lowers_held_out_kl(trained_models):
    path = os.path.join(trained_models, "resnet20.onnx")
    pruned, _ = onnxprune.prune(path, "l1", ratio=0.3)
    lines = []
    res = onnxprune.finetune(
        pruned,
        path,
        onnxprune.DataSpec(CALIB, batch_size=32),
        epochs=1,
        lr=1e-3,
        eval_data=onnxprune.DataSpec(SAMPLES, batch_size=128),
        progress=False,
        log=lines.append,
    )
    kl = [e["held_out_kl"] for e in res.epochs]
    assert kl[-1] < 0.7 * kl[0], kl
    assert len(lines) == 2 and lines[1].startswith("epoch 1: loss")
    # weights only: same nodes, same initializer names and shapes
    shapes = lambda m: {t.name: tuple(t.dims) for t in m.graph.initializer}  # noqa: E731
    assert shapes(res.model) == shapes(onnxprune.load(pruned).model)
    assert [n.op_type for n in res.model.graph.node] == [n.op_type for n in onnxprune.load(pruned).model.graph.node]


def test_chain_prune_reconstruct_finetune_quantize(trained_models, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    path = os.path.join(trained_models, "resnet20.onnx")
    calib = onnxprune.DataSpec(CALIB, batch_size=32)
    pruned, _ = onnxprune.prune(path, "l1", target_macs=0.6, data=calib, recovery=FAST)
    tuned = onnxprune.finetune(pruned, path, calib, epochs=1, progress=False, log=lambda s: None).model
    src, dst = str(tmp_path / "tuned.onnx"), str(tmp_path / "int8.onnx")
    onnx.save(tuned, src)
    x = np.load(CALIB)["input"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i : i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    q = onnx.load(dst)
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    acc_f = onnxprune.evaluate(src, SAMPLES)["top1"]
    acc_q = onnxprune.evaluate(dst, SAMPLES)["top1"]
    assert acc_q > 50 and abs(acc_q - acc_f) < 10, (acc_f, acc_q)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True)


def test_cli_recovery_flags_and_finetune(trained_models, tmp_path):
    path = os.path.join(trained_models, "resnet20.onnx")
    out = str(tmp_path / "p.onnx")
    r = _cli("prune", path, "-o", out, "--ratio", "0.3", "--reconstruct")
    assert r.returncode == 1 and "need calibration data" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(out)
    r = _cli(
        "prune",
        path,
        "-o",
        out,
        "--ratio",
        "0.3",
        "--calib",
        CALIB,
        "--bias-compensation",
        "--recalibrate",
        "--recon-samples",
        "2048",
        "--report",
        str(tmp_path / "r.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "recovery: bias compensated" in r.stdout
    import json

    rec = json.load(open(tmp_path / "r.json"))["recovery"]
    assert rec["bias_compensated"] and rec["reconstructed"] and rec["recalibrated"]
    tuned = str(tmp_path / "t.onnx")
    r = _cli(
        "finetune",
        out,
        "--teacher",
        path,
        "--calib",
        CALIB,
        "--limit",
        "64",
        "-o",
        tuned,
        "--eval",
        SAMPLES,
        "--json",
        str(tmp_path / "ft.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1: loss" in r.stdout and os.path.exists(tuned)
    assert len(json.load(open(tmp_path / "ft.json"))["epochs"]) == 2
    r = _cli("finetune", out, "--teacher", path, "--calib", CALIB, "-o", str(tmp_path / "x.onnx"), "--device", "cuda:7")
    if r.returncode != 0:
        assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "x.onnx")


def test_the_report_names_a_weighted_layer_that_lost_inputs_and_was_not_refitted():
    b = G(shape=(1, 4, 6, 6))
    a = b.conv(b.x, 4, 6, name="A")
    w = b.const(b.rng.standard_normal((6, 3, 2, 2)).astype(np.float32))
    b.output(b.op("ConvTranspose", [b.op("Relu", [a]), w], kernel_shape=[2, 2], strides=[2, 2]))
    b.nodes[-1].name = "up"
    m = b.model()
    data = [{"x": np.random.default_rng(k).standard_normal((1, 4, 6, 6)).astype(np.float32)} for k in range(4)]
    _, rep = onnxprune.prune(m, plan=_plan_removing(m, "A", [1, 2]), data=data)
    assert rep.recovery["reconstructed"] == [] and "least-squares" in rep.recovery["skipped"]["up"]
