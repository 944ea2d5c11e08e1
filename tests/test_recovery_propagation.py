"""One-propagation recovery equals the sequential refit it replaces (one full pass per wave), and the
frontier it keeps can live on disk without changing a thing."""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
import pytest
from graphs import G
from helpers import feeds_for, outputs
from onnx import numpy_helper
from test_cli import run

import onnxprune
from onnxprune.linear import Layer, from_mats, patches, set_weight, to_mats
from onnxprune.recovery import Recovery, load_batches, reconstruct
from onnxprune.recovery.passes import _row_bytes, stream, waves
from onnxprune.recovery.propagate import Propagation
from onnxprune.recovery.propagate import _Recomputed as _Rec
from onnxprune.recovery.reconstruct import TargetSampler, _out_channels, bias_vector, refittable, sample_targets

CALIB = os.path.join(os.path.dirname(__file__), "..", "calib", "samples", "fmnist_train_256.npz")


def sequential_refit(rec: Recovery, batches, samples: int, ridge: float, seed: int = 0) -> list[str]:
    """The refit as it was before propagation: one full pass of the pruned model per wave of layers."""
    layers = rec.layers([n for n in rec.changed_starts() if rec.lost_inputs(n) is not None])
    pos, targets = sample_targets(rec, layers, batches, samples, seed)
    by_name = {lay.node: lay for lay in layers}
    changed = []
    for wave in waves(rec.pruned, list(by_name)):
        wave_layers = [by_name[n] for n in wave]
        weights = {lay.node: numpy_helper.to_array(rec.inits[lay.weight]).astype(np.float64) for lay in wave_layers}
        acc: dict = {}

        def fit(b, arrs, rows=None, wave_layers=wave_layers, weights=weights, acc=acc):
            for lay in wave_layers:
                node = rec.nodes[lay.node]
                p = patches(
                    lay,
                    node,
                    np.asarray(arrs[node.input[0]], np.float64),
                    pos[lay.node][b],
                    weights[lay.node].shape[2:],
                )
                if lay.op_type != "MatMul":
                    p = np.concatenate([p, np.ones(p.shape[:2] + (1,))], axis=2)
                y = targets[lay.node][b].reshape(len(p), lay.groups, -1)
                pt = p.transpose(1, 2, 0)
                a, c = pt @ p.transpose(1, 0, 2), pt @ y.transpose(1, 0, 2)
                acc[lay.node] = (a, c) if lay.node not in acc else (acc[lay.node][0] + a, acc[lay.node][1] + c)

        stream(rec.pruned, sorted({rec.nodes[lay.node].input[0] for lay in wave_layers}), batches, {}, fit)
        for lay in wave_layers:
            w = weights[lay.node]
            m0 = to_mats(lay, w)
            if lay.op_type != "MatMul":
                m0 = np.concatenate(
                    [m0, bias_vector(lay, rec.inits, _out_channels(lay, w)).reshape(lay.groups, 1, -1)], 1
                )
            xtx, xty = acc[lay.node]
            k = xtx.shape[-1]
            lam = ridge * np.trace(xtx, axis1=1, axis2=2) / k + 1e-12
            m = np.linalg.solve(xtx + lam[:, None, None] * np.eye(k)[None], xty + lam[:, None, None] * m0)
            bias = None if lay.op_type == "MatMul" else m[:, -1].reshape(-1)
            set_weight(lay, rec.pruned, rec.inits, from_mats(lay, m if bias is None else m[:, :-1], w.shape), bias)
            changed.append(lay.node)
    return changed


def _setup(model, plan_ratio=0.4, data=CALIB):
    rep = onnxprune.analyze(model)
    pruned, r = onnxprune.prune(rep.graph, "l1", plan_ratio, round_to=1)
    plan = onnxprune.PruningPlan.from_json(r.plan)
    batches = load_batches(onnxprune.DataSpec(data, batch_size=64), rep.graph)
    return rep, plan, pruned, batches


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("budget", [None, 0])  # 0: every frontier tensor spilled to disk
def test_propagation_refit_equals_the_sequential_refit(trained_models, budget):
    rep, plan, pruned, batches = _setup(os.path.join(trained_models, "resnet20.onnx"))
    old = Recovery(rep.graph, rep.analysis, plan, copy.deepcopy(pruned))
    new = Recovery(rep.graph, rep.analysis, plan, copy.deepcopy(pruned))
    want = sequential_refit(old, batches, 2048, 1e-3)  # targets from the original's outputs
    # the 1x1 shortcut convolutions' targets come from their original inputs (``TargetSampler.maps``)
    assert len(TargetSampler(new, refittable(new), len(batches), 2048, 0).maps) == 2
    timings: dict = {}
    got = reconstruct(new, batches, 2048, 1e-3, budget=budget, timings=timings)
    assert sorted(got) == sorted(want) and len(got) > 10
    a, b = _weights(old.pruned), _weights(new.pruned)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=2e-3, atol=2e-4 * max(1.0, float(np.abs(a[name]).max())))
    feeds = feeds_for(old.pruned, ["input:8x1x28x28"])
    np.testing.assert_allclose(outputs(new.pruned, feeds)[0], outputs(old.pruned, feeds)[0], rtol=1e-3, atol=1e-3)
    assert set(timings) >= {"original_pass", "propagation", "solves"} and timings["segments"] == len(got) + 0


def test_frontier_holds_only_what_later_nodes_read_and_spills_past_the_budget():
    b = G(shape=(2, 4, 8, 8))
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="a")])
    c = b.conv(a, 8, 8, name="c")
    d = b.op("Add", [a, b.conv(c, 8, 8, name="d")])  # a stays live across c and d
    b.output(b.conv(d, 8, 2, name="head"))
    model = b.model()
    feeds = feeds_for(model)
    batches = [(feeds, None), ({"x": feeds["x"] * 2}, None)]
    with Propagation(model, batches, budget=0, recompute=False) as prop:  # every segment kept
        prop.run_until("d")
        assert set(prop.frontier) == {a, c}
        assert all(isinstance(p, str) for v in prop.frontier.values() for p in v)  # on disk
        got = prop.tensor(c)[1]
        spill = prop.spill_dir
        assert os.path.isdir(spill)
    assert not os.path.exists(spill)  # closed: nothing left behind
    full = onnxprune.runtime.session_with_outputs(model, [c]).run([c], batches[1][0])[0]
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)


def test_memory_budget_flag_spills_without_changing_the_result(trained_models, tmp_path):
    """--memory-budget 0 keeps every frontier tensor on disk: the refitted model is the same."""
    src = os.path.join(trained_models, "resnet20.onnx")
    outs = []
    for budget in ([], ["--memory-budget", "0"]):
        out = str(tmp_path / f"p{len(outs)}.onnx")
        rc, _, err = run("-q", "prune", src, "-o", out, "--ratio", "0.4", "--round-to", "1", "--calib", CALIB, *budget)
        assert rc == 0, err
        outs.append(onnx.load(out))
    a, b = _weights(outs[0]), _weights(outs[1])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rc, _, err = run("prune", src, "-o", str(tmp_path / "x.onnx"), "--calib", CALIB, "--memory-budget", "4Q")
    assert rc == 2 and "4G" in err and not (tmp_path / "x.onnx").exists()


def test_original_pass_run_a_few_rows_at_a_time_samples_what_whole_batches_sample(trained_models):
    """Past the batch budget the original runs a few rows of each batch at a time with every target
    read at once (one pass, not one per group of outputs); positions are drawn per whole batch, so the
    sampled targets are the same."""
    rep, plan, pruned, batches = _setup(os.path.join(trained_models, "resnet20.onnx"))
    rec = Recovery(rep.graph, rep.analysis, plan, pruned)
    layers = refittable(rec)
    whole = TargetSampler(rec, layers, len(batches), 2048, 0)
    stream(rec.original.model, whole.names, batches, rec.original.shapes, whole, arrays=rec.original.consts)
    parts = TargetSampler(rec, layers, len(batches), 2048, 0)
    calls = []

    def spy(b, arrs, rows):
        calls.append((b, rows, len(arrs)))
        parts(b, arrs, rows)

    per_row = sum(_row_bytes(rec.original.shapes[n]) for n in parts.names)
    stream(rec.original.model, parts.names, batches, rec.original.shapes, spy, 5 * per_row, rec.original.consts)
    assert {rows[1] - rows[0] for _, rows, _ in calls} >= {5} and {k for *_, k in calls} == {len(parts.names)}
    assert len(calls) == sum(-(-len(next(iter(f.values()))) // 5) for f, _ in batches)  # one pass
    for lay in layers:
        for pa, pb in zip(whole.pos[lay.node], parts.pos[lay.node], strict=True):
            np.testing.assert_array_equal(pa, pb)
        for ta, tb in zip(whole.targets[lay.node], parts.targets[lay.node], strict=True):
            np.testing.assert_allclose(tb, ta, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ta).max())))


def test_tensors_not_batch_major_are_split_by_name_not_by_rows():
    """A time-major (T, N, C) output cannot be taken apart by rows: the pass falls back to whole batches."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4, 3])
    z = onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [4, "n", 3])
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [
        onnx.helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        onnx.helper.make_node("MatMul", ["t", "w"], ["z"]),
    ]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", [x], [z], [w]), opset_imports=[onnx.helper.make_opsetid("", 17)]
    )
    batches = [({"x": np.random.default_rng(0).standard_normal((8, 4, 3)).astype(np.float32)}, None)]
    seen = []
    stream(
        model, ["z"], batches, {"z": (4, 1, 3)}, lambda b, arrs, rows: seen.append((rows, arrs["z"].shape)), budget=24
    )
    assert seen == [((0, 8, 8), (4, 8, 3))]


@pytest.mark.parametrize(
    ("k", "pads", "strides", "dilations", "groups"),
    [
        ((3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 1),
        ((3, 3), [0, 1, 2, 1], [2, 2], [1, 1], 2),  # asymmetric pads, stride 2, grouped
        ((5, 3), [2, 1, 2, 1], [1, 2], [2, 1], 1),  # dilated rows
        ((3, 3), [1, 1, 1, 1], [1, 1], [1, 1], 4),  # depthwise
    ],
)
def test_windows_of_a_padded_convolution_are_those_of_the_padded_input(k, pads, strides, dilations, groups):
    """``patches`` reads a padded k x k Conv's windows without padding the batch: every tap equals the
    one read from the explicitly zero-padded input, padding taps included, in ``to_mats``' K order."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 7, 6)).astype(np.float32)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, strides=strides, dilations=dilations)
    lay = Layer("c", "Conv", "w", None, groups)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dilations[0] * (k[0] - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilations[1] * (k[1] - 1) - 1) // strides[1] + 1
    pos = np.stack(np.unravel_index(np.arange(3 * oh * ow), (3, oh, ow)), 1)  # every output position
    got = patches(lay, node, x, pos, k, np.float64)
    for row, (n, i, j) in zip(got, pos):
        r0, c0 = i * strides[0], j * strides[1]
        win = xp[
            n,
            :,
            r0 : r0 + dilations[0] * (k[0] - 1) + 1 : dilations[0],
            c0 : c0 + dilations[1] * (k[1] - 1) + 1 : dilations[1],
        ]
        np.testing.assert_array_equal(row, win.reshape(groups, -1))


@pytest.mark.parametrize("block_bytes", [8 << 20, 1])
@pytest.mark.parametrize("shape,axis", [((8, 16, 40, 40), 1), ((6, 50, 12), -1), ((64, 12), 1), ((12,), 0)])
def test_channel_statistics_keep_float64_accuracy_for_nearly_constant_channels(shape, axis, block_bytes, monkeypatch):
    """Recalibration scales each channel by the ratio of two standard deviations: a channel whose spread
    is 0.3% of its mean loses its variance to cancellation if squares are summed in float32 (1e-2
    relative error measured), so the sums must stay float64-accurate."""
    from onnxprune.recovery import propagate
    from onnxprune.recovery.propagate import add_channel_sums, mean_var

    monkeypatch.setattr(propagate, "_BLOCK_BYTES", block_bytes)  # 1: one row per block
    rng = np.random.default_rng(0)
    x = (3 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    x[..., 1] += 0.5  # channels (or positions) whose mean differs from the first chunk's
    others = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if x.ndim == 1:  # one chunk per call: each value is one sample of its channel
        acc = add_channel_sums(add_channel_sums(None, x, axis), 2 * x, axis)
        want_mean, want_var = 1.5 * x.astype(np.float64), 0.25 * x.astype(np.float64) ** 2
    else:
        acc = add_channel_sums(add_channel_sums(None, x[: len(x) // 2], axis), x[len(x) // 2 :], axis)
        want_mean, want_var = x.astype(np.float64).mean(axis=others), x.astype(np.float64).var(axis=others)
    mean, var = mean_var(acc)
    np.testing.assert_allclose(var, want_var, rtol=1e-6)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9)


def test_a_layer_with_fewer_positions_than_the_sample_takes_each_once():
    """Drawn with replacement, a classifier's 64 rows would each appear ~16 times in a 1,024 sample,
    at random weights; taken once each, the normal equations are those of the data."""
    from onnxprune.linear import Layer, positions

    rng = np.random.default_rng(0)
    dense = Layer(node="g", op_type="Gemm", weight="w", bias=None, groups=1, trans_b=True)
    assert sorted(positions(dense, (64, 10), 1024, rng).tolist()) == list(range(64))
    assert len(np.unique(positions(dense, (4096, 10), 1024, rng))) < 1024  # larger: sampled
    conv = Layer(node="c", op_type="Conv", weight="w", bias=None, groups=1)
    p = positions(conv, (2, 8, 3, 4), 1024, rng)
    assert sorted(map(tuple, p.tolist())) == [(n, h, w) for n in range(2) for h in range(3) for w in range(4)]


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("intercept", [True, False])
def test_normal_equations_are_those_of_the_rows_with_a_column_of_ones(groups, intercept):
    """The products are taken group-major and the intercept's row and column as sums of the rows (no
    column of ones concatenated): over several flushes they equal X'X and X'Y in float64 with that
    column, per group."""
    from onnxprune.recovery.reconstruct import _add_products

    rng = np.random.default_rng(0)
    # rows as patches gives them: (rows, groups, K) channel-last, i.e. not group-major in memory
    chunks = [
        (
            rng.standard_normal((r, 9, groups)).astype(np.float32).transpose(0, 2, 1) + 2.0,
            rng.standard_normal((groups, r, 3)).astype(np.float32).transpose(1, 0, 2),
        )
        for r in (50, 70, 30)
    ]
    acc = _add_products(None, chunks[:2], intercept)
    acc = _add_products(acc, chunks[2:], intercept)
    x = np.concatenate([p for p, _ in chunks]).astype(np.float64)
    y = np.concatenate([t for _, t in chunks]).astype(np.float64)
    if intercept:
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
    xt = x.transpose(1, 2, 0)
    np.testing.assert_allclose(acc[0], xt @ x.transpose(1, 0, 2), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(acc[1], xt @ y.transpose(1, 0, 2), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("head", ["MatMul", "Gemm"])
def test_targets_from_the_original_inputs_give_the_refit_of_the_original_outputs(head, monkeypatch):
    """A head wider than its input (a recogniser's 18,385-way MatMul on (N, T, C) features, a Gemm
    with alpha, beta and a bias) keeps its original input rows instead of its outputs: the refitted
    weights are those fitted to the outputs themselves, with and without the original pass taken a few
    rows at a time."""
    import importlib

    from onnxprune.recovery import passes

    # by path: the package exports a function named reconstruct
    reconstruct_module = importlib.import_module("onnxprune.recovery.reconstruct")

    b = G(shape=("n", 6, 10))
    h = b.op("Relu", [b.matmul(b.x, 10, 12)])
    if head == "MatMul":
        b.output(b.matmul(h, 12, 40))
    else:
        flat = b.op("Reshape", [h, b.ints([-1, 72])])
        w = b.const(np.random.default_rng(3).standard_normal((72, 300)).astype(np.float32))
        c = b.const(np.random.default_rng(4).standard_normal(300).astype(np.float32))
        b.output(b.op("Gemm", [flat, w, c], alpha=0.5, beta=2.0))
    model = b.model()
    rep = onnxprune.analyze(model, {"x": (16, 6, 10)})
    pruned, r = onnxprune.prune(rep.graph, "l1", 0.5, round_to=1)
    plan = onnxprune.PruningPlan.from_json(r.plan)
    rng = np.random.default_rng(0)
    batches = [({"x": rng.standard_normal((16, 6, 10)).astype(np.float32)}, None) for _ in range(3)]
    sweep = importlib.import_module("onnxprune.recovery.sweep")
    results, chunks = [], []
    for via_inputs, rows in ((True, None), (True, 5), (False, None)):
        if not via_inputs:
            monkeypatch.setattr(reconstruct_module, "_input_map", lambda rec, lay, inits: None)
        rec = Recovery(rep.graph, rep.analysis, plan, copy.deepcopy(pruned))
        sampler = TargetSampler(rec, refittable(rec), len(batches), 4096, 0)
        assert bool(sampler.maps) == via_inputs
        if rows:  # the original pass a few rows at a time

            def few_rows(model, names, batches, shapes, fn, arrays=None, rows=rows):
                per_row = sum(passes._row_bytes(shapes[n]) for n in names)
                spy = lambda b, arrs, r: (chunks.append(r), fn(b, arrs, r))  # noqa: E731
                passes.stream(model, names, batches, shapes, spy, rows * per_row, arrays)

            monkeypatch.setattr(sweep, "stream", few_rows)
        assert reconstruct(rec, batches, 4096, 1e-3)
        monkeypatch.setattr(sweep, "stream", passes.stream)
        results.append(_weights(rec.pruned))
    assert chunks and {r[1] - r[0] for r in chunks} >= {5}
    for got in results[:2]:
        for name, want in results[2].items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("intercept", [True, False])
def test_the_ridge_from_fewer_rows_than_inputs_is_the_ridge_from_the_normal_equations(groups, intercept):
    """With fewer sampled rows than inputs the refit solves the R x R dual system: the same weights as
    the K x K normal equations, ridge included (the push-through identity)."""
    from onnxprune.recovery.reconstruct import _solve, _solve_rows

    rng = np.random.default_rng(0)
    k, o = 40, 5
    rows = [
        (rng.standard_normal((r, groups, k)).astype(np.float32), rng.standard_normal((r, groups, o)).astype(np.float32))
        for r in (12, 9)
    ]
    m0 = rng.standard_normal((groups, k + intercept, o))
    # the normal equations in float64 (``_add_products`` takes them in float32, which a ridge this
    # small on a singular X'X amplifies to ~1e-4)
    x = np.concatenate([p for p, _ in rows]).astype(np.float64).transpose(1, 0, 2)
    if intercept:
        x = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
    y = np.concatenate([t for _, t in rows]).astype(np.float64).transpose(1, 0, 2)
    xtx, xty = x.transpose(0, 2, 1) @ x, x.transpose(0, 2, 1) @ y
    want = _solve(xtx, xty, m0, 1e-3)
    got = _solve_rows(rows, intercept, m0, 1e-3, None)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert np.abs(got - m0).max() > 1e-2  # the data moved the weights: not the ridge alone
    mapping = rng.standard_normal((o, 7))  # targets given as rows of the original's inputs
    np.testing.assert_allclose(
        _solve_rows(rows, intercept, m0 @ mapping, 1e-3, mapping),
        _solve(xtx, xty @ mapping, m0 @ mapping, 1e-3),
        rtol=1e-6,
        atol=1e-8,
    )


def test_recovery_runs_blas_on_one_thread_except_for_calls_wide_enough_to_gain(trained_models, monkeypatch):
    """OpenBLAS's idle workers spin after a multi-threaded call and slow the next segment's run (blas.py):
    the small products and solves run on one thread, a call past WIDE_FLOPS on BLAS's own count."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from onnxprune.recovery import blas

    def blas_threads() -> int:
        return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")

    before = blas_threads()
    if before < 2:
        pytest.skip("numpy's BLAS runs on one thread here")
    rec_mod = __import__("onnxprune.recovery.reconstruct", fromlist=["_solve"])
    seen: list[tuple[str, int]] = []
    real_solve, real_products = rec_mod._solve, rec_mod._add_products

    def solve(*a, **k):
        seen.append(("solve", blas_threads()))
        return real_solve(*a, **k)

    def products(*a, **k):
        seen.append(("products", blas_threads()))
        return real_products(*a, **k)

    def threads_inside(flops: float) -> int:
        with blas.threads_for(flops):
            return blas_threads()

    monkeypatch.setattr(rec_mod, "_solve", solve)
    monkeypatch.setattr(rec_mod, "_add_products", products)
    rep, plan, pruned, batches = _setup(os.path.join(trained_models, "resnet20.onnx"))
    rec = Recovery(rep.graph, rep.analysis, plan, pruned)
    assert reconstruct(rec, batches[:2], 512, 1e-3)
    assert {k for k, _ in seen} == {"solve", "products"} and {n for _, n in seen} == {1}
    with blas.one_thread():
        assert (threads_inside(blas.WIDE_FLOPS), threads_inside(blas.WIDE_FLOPS / 2)) == (before, 1)
    assert blas_threads() == before  # restored on leaving
    with blas.one_thread(), blas.one_thread():  # nested: a wide call still gets the count from before
        assert threads_inside(blas.WIDE_FLOPS) == before
    with blas.threads_for(blas.WIDE_FLOPS), threadpool_limits(1, "blas"):
        assert threads_inside(blas.WIDE_FLOPS) == 1  # outside recovery the count is the caller's


def test_a_depthwise_refit_samples_rows_for_its_few_unknowns_and_a_dense_one_the_whole_sample():
    """Each channel of a depthwise layer is its own least squares of K + 1 = 10 unknowns: it takes
    ROWS_PER_INPUT rows per unknown, not --samples (sampling, windows and products scale with rows);
    an ungrouped layer, whose unknowns all share the rows, keeps the whole sample."""
    from onnxprune.recovery.reconstruct import MIN_ROWS, ROWS_PER_INPUT, layer_samples

    g = G(shape=(4, 4, 8, 8))
    y = g.op("Relu", [g.conv("x", 4, 8, k=1)])
    y = g.op("Relu", [g.conv(y, 8, 8, k=3, group=8, name="dw")])
    g.output(g.conv(y, 8, 4, k=1, name="project"))
    rep = onnxprune.analyze(g.model())
    pruned, r = onnxprune.prune(rep.graph, "l1", 0.5, round_to=1)
    rec = Recovery(rep.graph, rep.analysis, onnxprune.PruningPlan.from_json(r.plan), pruned)
    layers = {lay.node: lay for lay in refittable(rec)}
    assert {"dw", "project"} <= set(layers)
    want_dw = min(8192, max(MIN_ROWS, ROWS_PER_INPUT * 10))
    assert want_dw < 8192
    assert layer_samples(rec, layers["dw"], 8192) == want_dw
    assert layer_samples(rec, layers["project"], 8192) == 8192
    assert layer_samples(rec, layers["dw"], 500) == 500  # never more than asked
    sampler = TargetSampler(rec, list(layers.values()), 4, 8192, 0)
    assert (sampler.per_batch["dw"], sampler.per_batch["project"]) == (-(-want_dw // 4), 2048)


def _inverted_residuals(blocks: int = 2) -> onnx.ModelProto:
    """mobilenet_v2's block: a cheap 1x1 expansion and depthwise layer six times wider than the residual."""
    b = G(shape=(4, 4, 8, 8))
    x = b.x
    for i in range(blocks):
        e = b.op("Relu", [b.conv(x, 4, 24, k=1, name=f"e{i}")])
        d = b.op("Relu", [b.conv(e, 24, 24, k=3, group=24, name=f"d{i}")])
        x = b.op("Add", [x, b.conv(d, 24, 4, k=1, name=f"p{i}")])
    b.output(b.conv(x, 4, 2, name="head"))
    return b.model()


def test_a_wide_segment_of_cheap_layers_is_recomputed_where_read_instead_of_kept():
    model = _inverted_residuals()
    rng = np.random.default_rng(0)
    batches = [({"x": rng.standard_normal((4, 4, 8, 8)).astype(np.float32)}, None) for _ in range(3)]
    nodes = {n.name: n for n in model.graph.node}
    expanded, depthwise = (nodes[n].output[0] for n in ("e0", "d0"))
    relu_e = next(n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] == expanded)
    relu_d = next(n.output[0] for n in model.graph.node if n.op_type == "Relu" and n.input[0] == depthwise)
    sess = onnxprune.runtime.session_with_outputs(model, [relu_e, relu_d])
    want = [sess.run([relu_e, relu_d], f) for f, _ in batches]
    peaks = {}
    for recompute in (False, True):
        with Propagation(model, batches, recompute=recompute) as prop:
            prop.run_until("d0")
            assert prop.holds(relu_e) and (relu_e in prop.frontier) != recompute  # recomputed, not kept
            assert len(prop.tensor(relu_e)) == 3
            for got, w in zip(prop.tensor(relu_e), want):
                np.testing.assert_allclose(got, w[0], rtol=1e-5, atol=1e-5)
            prop.run_until("p0")  # two pending segments in a row: still recomputed from the input
            assert (relu_d in prop.frontier) != recompute and set(prop.frontier) >= {"x"}
            for got, w in zip(prop.tensor(relu_d), want):
                np.testing.assert_allclose(got, w[1], rtol=1e-5, atol=1e-5)
            prop.run_until("e1")  # the block's 4-channel output is narrower than its input: kept
            assert prop.pending_from is None and not prop.virtual and len(prop.frontier) == 1
            peaks[recompute] = prop.peak_in_memory
    assert peaks[True] < peaks[False] / 3


@pytest.mark.parametrize("recalibrate", [False, True])
def test_recovery_recomputing_the_wide_tensors_equals_recovery_keeping_them(recalibrate, monkeypatch):
    from onnxprune.recovery import propagate
    from onnxprune.recovery.sweep import recover_layers

    model = _inverted_residuals(3)
    rep = onnxprune.analyze(model)
    pruned, r = onnxprune.prune(rep.graph, "l1", 0.5, round_to=1)
    plan = onnxprune.PruningPlan.from_json(r.plan)
    rng = np.random.default_rng(1)
    batches = [({"x": rng.standard_normal((4, 4, 8, 8)).astype(np.float32)}, None) for _ in range(8)]
    weights, runs = [], []
    for max_pending in (0, propagate.MAX_PENDING):  # 0: every segment kept, as before recomputation
        monkeypatch.setattr(propagate, "MAX_PENDING", max_pending)
        made = []
        monkeypatch.setattr(propagate, "_Recomputed", lambda *a, made=made: made.append(a) or _Rec(*a))
        rec = Recovery(rep.graph, rep.analysis, plan, copy.deepcopy(pruned))
        done = recover_layers(rec, batches, recalibrate=recalibrate, statistics_inputs=None)
        assert done["reconstructed"] and (done.get("recalibrated") or not recalibrate)
        weights.append(_weights(rec.pruned))
        runs.append(len(made))
    assert runs[0] == 0 and runs[1] > 0  # the second recovery did read recomputed tensors
    a, b = weights
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a[name]).max())))


def test_a_segment_of_constants_alone_still_gives_every_batch_its_value():
    b = G(shape=(2, 4, 8, 8))
    a = b.conv(b.x, 4, 8, name="a")
    shift = b.op("Constant", [], value=numpy_helper.from_array(np.full((1, 8, 1, 1), 2.0, np.float32)))
    b.nodes[-1].name = "k"
    b.output(b.conv(b.op("Add", [a, shift]), 8, 2, name="head"))
    model = b.model()
    feeds = feeds_for(model)
    batches = [(feeds, None), ({"x": feeds["x"] * 2}, None)]
    with Propagation(model, batches) as prop:
        prop.run_until("k")
        prop.run_until(b.nodes[-2].name)  # the Constant alone, then the Add reading it
        assert [np.asarray(v).max() for v in prop.tensor(shift)] == [2.0, 2.0]


def test_the_original_pass_reads_the_statistics_tensors_on_the_statistics_batches_alone(monkeypatch):
    """With reconstruction and recalibration the refit's targets come from every batch and the
    statistics from a few spread over the set: the original is run on every batch for the targets and
    again on those few for the statistics, never reading a statistics tensor (each read costs every batch
    a copy out of onnxruntime's blocked layout) on the others. The result is that of the statistics
    taken apart on the same batches."""
    from onnxprune.recovery import sweep
    from onnxprune.recovery.passes import moments

    model = _inverted_residuals(3)
    rep = onnxprune.analyze(model)
    pruned, r = onnxprune.prune(rep.graph, "l1", 0.5, round_to=1)
    plan = onnxprune.PruningPlan.from_json(r.plan)
    rng = np.random.default_rng(2)
    # every batch a different offset: statistics from other batches would show in the means
    batches = [({"x": (rng.standard_normal((4, 4, 8, 8)) + k).astype(np.float32)}, None) for k in range(8)]
    calls: list[tuple[list[str], int]] = []
    real = sweep.stream

    def spy(model, names, passed, shapes, fn, **kw):
        calls.append((list(names), len(passed)))
        return real(model, names, passed, shapes, fn, **kw)

    monkeypatch.setattr(sweep, "stream", spy)
    seen: dict = {}
    monkeypatch.setattr(sweep, "restandardise", lambda rec, lay, prop, orig: seen.update(orig) or False)
    rec = Recovery(rep.graph, rep.analysis, plan, copy.deepcopy(pruned))
    sweep.recover_layers(rec, batches, recalibrate=True, statistics_inputs=8)
    chosen = sweep.spread(batches, 8)
    targets = TargetSampler(rec, refittable(rec), len(batches), 8192, 0).names  # what the refit reads
    assert chosen == [0, 7] and set(seen) - set(targets)
    for names, n in calls:
        assert n == len(batches) or n == len(chosen)
        assert n == len(chosen) or not set(names) - set(targets)
    want = moments(rep.graph.model, dict.fromkeys(seen, 1), [batches[k] for k in chosen])
    for name, (mean, var) in seen.items():
        np.testing.assert_allclose(mean, want[name][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, want[name][1], rtol=1e-5, atol=1e-5)
