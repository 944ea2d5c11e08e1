"""Per-operator channel rules on tiny graphs, including the hard patterns.

Every test prunes with a plan and relies on prune()'s built-in verification (pruned == masked original,
which raises otherwise) *and* checks the structure it expects: which groups exist, what is frozen, and
the shapes of the rewritten parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from graphs import G
from helpers import feeds_for, outputs, random_plan, weight_shapes

import onnxprune


def group_of(report, node_name):
    return next(g for g in report.groups if node_name in g.sources)


def check_random_plans(model, n=4, shapes=None):
    rep = onnxprune.analyze(model, shapes)
    for seed in range(n):
        plan = random_plan(rep, seed)
        pruned, r = onnxprune.prune(model, plan=plan, input_shapes=shapes)
        assert r.verification["passed"]
        if plan.remove:
            assert r.after.params < r.before.params
    return rep


def test_residual_add_couples_both_sides():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    c = b.conv(b.op("Relu", [a]), 8, 8, name="c")
    s = b.op("Add", [a, c])
    out = b.conv(s, 8, 3, name="head")
    b.output(out)
    m = b.model()
    rep = onnxprune.analyze(m)
    ga = group_of(rep, "a")
    assert set(ga.sources) == {"a", "c"} and ga.channels == 8 and ga.prunable
    plan = onnxprune.PruningPlan({ga.id: [1, 5, 6]})
    pruned, r = onnxprune.prune(m, plan=plan)
    ws = weight_shapes(pruned)
    assert ws["a"][0] == (5, 4, 3, 3) and ws["c"][0] == (5, 5, 3, 3) and ws["head"][0] == (3, 5, 3, 3)
    assert r.verification["passed"]


def test_ratio_zero_is_identity():
    b = G()
    y = b.conv(b.op("Relu", [b.conv(b.x, 4, 8)]), 8, 2)
    b.output(y)
    m = b.model()
    pruned, r = onnxprune.prune(m, ratio=0.0)
    f = feeds_for(m)
    np.testing.assert_array_equal(outputs(m, f)[0], outputs(pruned, f)[0])
    assert r.after.macs == r.before.macs


def test_channel_shuffle_is_a_permutation():
    b = G(shape=(1, 8, 6, 6))
    a = b.conv(b.x, 8, 8, name="a")
    c = b.conv(b.x, 8, 8, name="c")
    cat = b.op("Concat", [a, c], axis=1)  # 16 channels
    r1 = b.op("Reshape", [cat, b.ints([1, 2, 8, 6, 6])])
    t = b.op("Transpose", [r1], perm=[0, 2, 1, 3, 4])
    r2 = b.op("Reshape", [t, b.ints([1, 16, 6, 6])])
    h1, h2 = b.op("Split", [r2, b.ints([8, 8])], n_out=2, axis=1)
    y = b.op("Concat", [b.conv(h1, 8, 4, name="p"), b.conv(h2, 8, 4, name="q")], axis=1)
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    ga = group_of(rep, "a")
    # shuffle interleaves a and c: channel j of a travels with channel j of c
    assert set(ga.sources) == {"a", "c"} and ga.channels == 8 and ga.prunable


def test_concat_of_concats_and_split_then_concat():
    b = G()
    a, c, d = (b.conv(b.x, 4, n, name=nm) for n, nm in ((3, "a"), (5, "c"), (6, "d")))
    inner = b.op("Concat", [a, c], axis=1)
    outer = b.op("Concat", [inner, d], axis=1)  # 14
    s1, s2 = b.op("Split", [outer, b.ints([4, 10])], n_out=2, axis=1)
    back = b.op("Concat", [s2, s1], axis=1)  # reordered
    y = b.conv(back, 14, 2, name="head")
    b.output(y)
    m = b.model()
    rep = check_random_plans(m, n=6)
    for nm, n in (("a", 3), ("c", 5), ("d", 6)):
        g = group_of(rep, nm)
        assert g.sources == [nm] and g.channels == n and g.prunable
    plan = onnxprune.PruningPlan({group_of(rep, "a").id: [0, 2], group_of(rep, "d").id: [5]})
    pruned, _ = onnxprune.prune(m, plan=plan)
    assert weight_shapes(pruned)["head"][0] == (2, 11, 3, 3)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    sizes = next(t for t in pruned.graph.initializer if t.name == split.input[1])
    assert list(np.frombuffer(sizes.raw_data, dtype=np.int64)) == [2, 9]


def test_split_equal_num_outputs_becomes_explicit():
    b = G(opset=18)
    a = b.conv(b.x, 4, 8, name="a")
    s1, s2 = b.op("Split", [a], n_out=2, axis=1, num_outputs=2)
    y = b.op("Add", [b.conv(s1, 4, 2), b.conv(s2, 4, 2)])
    b.output(y)
    check_random_plans(b.model(), n=5)


def test_grouped_conv_couples_offsets_and_keeps_group():
    b = G(shape=(1, 8, 6, 6))
    a = b.conv(b.x, 8, 8, name="a")
    gc = b.conv(b.op("Relu", [a]), 8, 12, group=4, name="gconv")  # 2 in / 3 out per group
    y = b.conv(gc, 12, 2, name="head")
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    ga, gg = group_of(rep, "a"), group_of(rep, "gconv")
    assert ga.channels == 2 and all(len(x) == 4 for x in ga.atoms)  # offset j of each of 4 groups
    assert gg.channels == 3 and gg.prunable
    pruned, _ = onnxprune.prune(m, plan=onnxprune.PruningPlan({ga.id: [1], gg.id: [0]}))
    node = next(n for n in pruned.graph.node if n.name == "gconv")
    assert weight_shapes(pruned)["gconv"][0] == (8, 1, 3, 3)
    assert next(a.i for a in node.attribute if a.name == "group") == 4


def test_depthwise_passes_channels_through_and_updates_group():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    dw = b.conv(a, 8, 8, group=8, name="dw")
    y = b.conv(dw, 8, 3, name="head")
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    ga = group_of(rep, "a")
    assert ga.sources == ["a"] and ga.channels == 8
    pruned, _ = onnxprune.prune(m, plan=onnxprune.PruningPlan({ga.id: [0, 1, 2]}))
    node = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(a.i for a in node.attribute if a.name == "group") == 5


def test_flatten_into_gemm_slices_feature_blocks():
    b = G(shape=(1, 4, 3, 3))
    a = b.conv(b.op("Relu", [b.conv(b.x, 4, 6, name="a")]), 6, 6, name="a2")
    f = b.op("Flatten", [a], axis=1)  # 6 * 9 features
    y = b.gemm(b.op("Relu", [b.gemm(f, 54, 10)]), 10, 2)
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    g = group_of(rep, "a2")
    pruned, _ = onnxprune.prune(m, plan=onnxprune.PruningPlan({g.id: [1, 4]}))
    gemm = next(n for n in pruned.graph.node if n.op_type == "Gemm")
    assert weight_shapes(pruned)[gemm.name][0] == (10, 36)


def test_reshape_to_features_with_constant_target():
    b = G(shape=(1, 4, 2, 2))
    a = b.conv(b.x, 4, 6, name="a")
    r = b.op("Reshape", [a, b.ints([-1, 24])])
    y = b.gemm(r, 24, 3)
    b.output(y)
    check_random_plans(b.model())


def test_channels_last_layernorm_and_matmul():
    b = G(shape=(1, 4, 5, 5))
    a = b.conv(b.x, 4, 8, name="a")
    t = b.op("Transpose", [a], perm=[0, 2, 3, 1])  # NHWC
    ln = b.op(
        "LayerNormalization",
        [t, b.const(np.random.rand(8).astype(np.float32) + 0.5), b.const(np.random.rand(8).astype(np.float32))],
        axis=-1,
    )
    h = b.op("Relu", [b.matmul(ln, 8, 16)])
    o = b.matmul(h, 16, 8)
    back = b.op("Transpose", [o], perm=[0, 3, 1, 2])
    y = b.conv(b.op("Add", [a, back]), 8, 2, name="head")
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    ga = group_of(rep, "a")
    assert len(ga.sources) == 2 and ga.prunable and ga.notes  # conv a + second MatMul, with LN note
    hidden = next(g for g in rep.groups if g.channels == 16)
    assert hidden.prunable


def test_se_block_couples_excitation_with_trunk():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    p = b.op("GlobalAveragePool", [a])
    s1 = b.conv(p, 8, 2, k=1, name="squeeze")
    s2 = b.conv(b.op("Relu", [s1]), 2, 8, k=1, name="excite")
    y = b.conv(b.op("Mul", [a, b.op("Sigmoid", [s2])]), 8, 3, name="head")
    b.output(y)
    m = b.model()
    rep = check_random_plans(m)
    assert set(group_of(rep, "a").sources) == {"a", "excite"}
    assert group_of(rep, "squeeze").channels == 2


def test_decomposed_hardswish_and_per_channel_constants():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    hs = b.op(
        "Div",
        [
            b.op(
                "Mul",
                [
                    a,
                    b.op(
                        "Clip",
                        [b.op("Add", [a, b.const(np.float32(3))]), b.const(np.float32(0)), b.const(np.float32(6))],
                    ),
                ],
            ),
            b.const(np.float32(6)),
        ],
    )
    scaled = b.op("Mul", [hs, b.const(np.random.rand(1, 8, 1, 1).astype(np.float32))])
    pr = b.op("PRelu", [scaled, b.const(np.random.rand(8, 1, 1).astype(np.float32))])
    y = b.conv(pr, 8, 2, name="head")
    b.output(y)
    rep = check_random_plans(b.model())
    assert group_of(rep, "a").prunable


def test_slice_and_gather_on_channels():
    b = G()
    a = b.conv(b.x, 4, 10, name="a")
    sl = b.op("Slice", [a, b.ints([2]), b.ints([8]), b.ints([1])])
    ga = b.op("Gather", [sl, b.ints([5, 0, 3])], axis=1)
    y = b.op("Add", [b.conv(sl, 6, 2), b.conv(ga, 3, 2)])
    b.output(y)
    rep = check_random_plans(b.model(), n=6)
    assert group_of(rep, "a").prunable


def test_pooling_resize_pad_reduce():
    b = G()
    a = b.op("Relu", [b.conv(b.x, 4, 8, name="a")])
    p = b.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    r = b.op("Resize", [p, "", b.const(np.array([1, 1, 2, 2], dtype=np.float32))], mode="nearest")
    pd = b.op("Pad", [r, b.ints([0, 0, 1, 1, 0, 0, 1, 1])])
    m = b.op("ReduceMean", [pd], axes=[2, 3], keepdims=1)
    y = b.conv(m, 8, 2, k=1)
    s = b.op("ReduceSum", [a, b.ints([1])], keepdims=1)  # a sum over channels is exact under masking
    b.output(y)
    b.output(s)
    rep = check_random_plans(b.model())
    assert group_of(rep, "a").prunable


def test_reduce_mean_over_channels_freezes():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    m = b.op("ReduceMean", [a], axes=[1], keepdims=1)
    b.output(b.conv(m, 1, 2))
    rep = onnxprune.analyze(b.model())
    g = group_of(rep, "a")
    assert not g.prunable and "channel axis" in g.reason


def test_unknown_op_freezes_exactly_the_groups_that_reach_it():
    b = G(domains=["custom.ops"])
    a = b.conv(b.x, 4, 8, name="a")
    c = b.conv(b.x, 4, 8, name="c")
    d = b.conv(b.op("Relu", [c]), 8, 8, name="d")
    weird = b.op("Weird", [a], domain="custom.ops")
    y = b.op("Add", [b.conv(d, 8, 2, name="h1"), b.conv(b.op("Relu", [c]), 8, 2, name="h2")])
    b.output(y)
    b.output(weird, shape=[1, 8, 8, 8])
    m = b.model()
    rep = onnxprune.analyze(m)
    frozen = {s for g in rep.groups if not g.prunable for s in g.sources}
    assert group_of(rep, "a").reason.startswith("unsupported op custom.ops.Weird")
    assert frozen == {"a", "h1", "h2"}  # h1/h2 reach the graph output
    assert group_of(rep, "c").prunable and group_of(rep, "d").prunable


def test_shape_read_of_channel_dim_freezes():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    sh = b.op("Shape", [a])
    c1 = b.op("Gather", [sh, b.ints(1)], axis=0)
    n0 = b.op("Gather", [sh, b.ints(0)], axis=0)
    tgt = b.op(
        "Concat", [b.op("Unsqueeze", [n0, b.ints([0])]), b.op("Unsqueeze", [c1, b.ints([0])]), b.ints([-1])], axis=0
    )
    r = b.op("Reshape", [a, tgt])
    b.output(b.op("ReduceMax", [r], axes=[1], keepdims=0))
    rep = onnxprune.analyze(b.model())
    assert not group_of(rep, "a").prunable


def test_batch_only_shape_read_stays_prunable():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    n0 = b.op("Gather", [b.op("Shape", [a]), b.ints(0)], axis=0)
    tgt = b.op("Concat", [b.op("Unsqueeze", [n0, b.ints([0])]), b.ints([-1])], axis=0)
    y = b.gemm(b.op("Reshape", [a, tgt]), 8 * 64, 3)
    b.output(y)
    rep = check_random_plans(b.model())
    assert group_of(rep, "a").prunable


def test_graph_output_frozen_by_default():
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    b.output(a)
    rep = onnxprune.analyze(b.model())
    assert not group_of(rep, "a").prunable and "graph output" in group_of(rep, "a").reason


def test_shared_weights_used_by_two_convs():
    b = G()
    w = b.const(np.random.rand(8, 4, 3, 3).astype(np.float32))
    a = b.op("Conv", [b.x, w], pads=[1, 1, 1, 1])
    c = b.op("Conv", [b.x, w], pads=[1, 1, 1, 1])
    y = b.op("Add", [b.conv(a, 8, 2), b.conv(b.op("Sigmoid", [c]), 8, 2)])
    b.output(y)
    check_random_plans(b.model())


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
def test_opsets(opset):
    b = G(opset=opset)
    a = b.conv(b.x, 4, 8, name="a")
    if opset >= 13:
        s1, s2 = b.op("Split", [a, b.ints([3, 5])], n_out=2, axis=1)
    else:
        s1, s2 = b.op("Split", [a], n_out=2, axis=1, split=[3, 5])
    y = b.op("Concat", [s2, s1], axis=1)
    b.output(b.conv(y, 8, 2))
    check_random_plans(b.model())


def test_attention_head_dims_are_prunable():
    """Fused qkv projection -> heads -> softmax(q k^T) v -> projection: q and k lose the same head dims."""
    b = G(shape=(1, 4, 4, 4))
    c, heads, d = 8, 2, 4
    a = b.conv(b.x, 4, c, name="a")
    tokens = b.op("Transpose", [b.op("Reshape", [a, b.ints([1, c, 16])])], perm=[0, 2, 1])  # [1, 16, C]
    qkv = b.matmul(tokens, c, 3 * c)
    qkv = b.op("Reshape", [qkv, b.ints([1, 16, 3, heads, d])])
    qkv = b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # [3, 1, heads, 16, d]
    q, k, v = (b.op("Gather", [qkv, b.ints(i)], axis=0) for i in range(3))
    att = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])], axis=-1)
    o = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]), b.ints([1, 16, c])])
    y = b.op("ReduceSum", [b.matmul(o, c, 5), b.ints([1])], keepdims=0)
    b.output(y)
    m = b.model()
    rep = check_random_plans(m, n=6)
    qkv_group = next(g for g in rep.groups if g.channels == d)
    # head dim j of q, k and v in every head is one channel: a fused projection must stay [3, heads, d']
    assert qkv_group.prunable and all(len(x) == 3 * heads for x in qkv_group.atoms)
    pruned, _ = onnxprune.prune(m, plan=onnxprune.PruningPlan({qkv_group.id: [0, 2]}))
    shapes = sorted(tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 2)
    assert shapes == sorted([(c, 3 * heads * (d - 2)), (heads * (d - 2), 5)])


def test_expand_as_follows_the_pruned_shape():
    """F.normalize-style x / norm(x).expand_as(x): the Expand target is Shape(x), read at run time."""
    b = G()
    a = b.conv(b.x, 4, 8, name="a")
    norm = b.op("ReduceL2", [a], axes=[1], keepdims=1)  # sum-like over channels: exact under masking
    clamped = b.op("Clip", [norm, b.const(np.float32(1e-3))])
    expanded = b.op("Expand", [clamped, b.op("Shape", [a])])  # folded to a constant target: edited
    y = b.conv(b.op("Div", [a, expanded]), 8, 2, name="head")
    b.output(y)
    rep = check_random_plans(b.model())
    assert group_of(rep, "a").prunable


def test_shape_target_shared_by_reshapes_of_different_groups():
    """One Concat-built target (dynamic batch + constant channel count) reshapes two tensors from
    different groups: each Reshape gets its own copy of the target, so any plan works."""
    b = G(shape=("N", 4, 4, 4))
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [b.x]), b.ints(0)], axis=0), b.ints([0])])
    target = b.op("Concat", [n, b.ints([8]), b.ints([-1])], axis=0)
    a, c = b.conv(b.x, 4, 8, name="a"), b.conv(b.x, 4, 8, name="c")
    ra, rc = b.op("Reshape", [a, target]), b.op("Reshape", [c, target])
    sa, sc = (b.op("ReduceSum", [r, b.ints([2])], keepdims=0) for r in (ra, rc))
    b.output(b.op("Add", [b.gemm(sa, 8, 3), b.gemm(sc, 8, 3)]))
    m = b.model()
    rep = check_random_plans(m, n=6, shapes=["x:2x4x4x4"])
    assert group_of(rep, "a").prunable and group_of(rep, "c").prunable and group_of(rep, "a") is not group_of(rep, "c")
    plan = onnxprune.PruningPlan({group_of(rep, "a").id: [0, 1, 2], group_of(rep, "c").id: [5]})
    pruned, r = onnxprune.prune(m, plan=plan, input_shapes=["x:2x4x4x4"])
    assert r.verification["passed"]
