"""Verification: no false alarm on correct rewrites whose float32 difference exceeds the fixed bound, and
every deliberately wrong rewrite (shifted slice, dropped channel, wrong Slice/Concat offset) refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from graphs import G, compounding
from helpers import random_plan, refuses_wrong_rewrites

import onnxprune
from onnxprune.errors import VerificationError
from onnxprune.verify import RTOL32, RTOL64


@pytest.fixture(scope="module")
def deep():
    model = compounding()
    return model, onnxprune.analyze(model)


def _plan(rep, seed=0):
    plan = random_plan(rep, seed, max_fraction=0.5)
    assert plan.remove
    return plan


def test_compounding_float32_error_is_decided_in_float64(deep):
    model, rep = deep
    pruned, r = onnxprune.prune(model, ratio=0.5)
    v = r.verification
    assert v["max_rel_diff"] > RTOL32, "the case no longer compounds: it tests nothing"
    assert v["passed"] and v["method"] == "float64"
    assert v["float64_rel_diff"] <= RTOL64 and v["noise_floor"] > 0


def test_compounding_model_refuses_wrong_rewrites(deep, monkeypatch):
    model, rep = deep
    applied = refuses_wrong_rewrites(monkeypatch, rep.graph, rep.analysis, _plan(rep))
    assert {"shift", "drop"} <= set(applied)


def _concat_slice_model():
    b = G(shape=(1, 4, 8, 8))
    a, c = b.conv(b.x, 4, 6, name="a"), b.conv(b.x, 4, 5, name="c")
    cat = b.op("Concat", [a, c], axis=1)  # 11 channels: Slices at offsets 0 and 6 pick them apart
    s1 = b.op("Slice", [cat, b.ints([0]), b.ints([6]), b.ints([1])])
    s2 = b.op("Slice", [cat, b.ints([6]), b.ints([11]), b.ints([1])])
    b.output(b.op("Add", [b.conv(s1, 6, 3), b.conv(s2, 5, 3)]))
    return b.model()


@pytest.mark.parametrize("seed", range(3))
def test_wrong_offsets_shifts_and_drops_are_refused(monkeypatch, seed):
    model = _concat_slice_model()
    rep = onnxprune.analyze(model)
    plan = onnxprune.PruningPlan({g.id: [1 + seed % 3] for g in rep.groups if g.prunable})
    assert refuses_wrong_rewrites(monkeypatch, rep.graph, rep.analysis, plan) == ["shift", "drop", "offset"]


def test_inconclusive_without_torch_is_refused_with_the_reason(deep, monkeypatch):
    model, _ = deep
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(VerificationError, match="needs torch"):
        onnxprune.prune(model, ratio=0.5)


def test_float64_evaluation_matches_onnxruntime(deep):
    """The arbiter computes what onnxruntime computes (to float32 rounding) on the compounding model."""
    import torch
    from helpers import feeds_for, outputs

    from onnxprune.torch_eval import TorchGraph

    model, rep = deep
    feeds = feeds_for(model)
    with torch.no_grad():
        got, _ = TorchGraph(model, rep.graph.consts, float64=True).run(feeds)
    assert got[0].dtype == torch.float64
    np.testing.assert_allclose(outputs(model, feeds)[0], got[0].numpy(), atol=2e-3)


def test_wrong_slice_is_refused_where_the_outputs_cannot_show_it(monkeypatch):
    """The output is scaled by 1e-8 (as a saturating or random-weight network shrinks a channel's effect):
    a wrong slice moves it by far less than any output bound, so the rewritten layers' own outputs are
    compared too, against the masked original at the kept positions."""
    b = G(shape=(1, 4, 8, 8))
    h = b.op("Relu", [b.conv(b.x, 4, 8, name="a")])
    h = b.op("Relu", [b.conv(h, 8, 8, name="b")])
    b.output(b.op("Mul", [b.conv(h, 8, 3, name="head"), b.const(np.float32(1e-8))]))
    model = b.model()
    rep = onnxprune.analyze(model)
    plan = onnxprune.PruningPlan({g.id: [2, 5] for g in rep.groups if g.prunable})
    assert {"shift", "drop"} <= set(refuses_wrong_rewrites(monkeypatch, rep.graph, rep.analysis, plan))
    _, r = onnxprune.prune(model, plan=plan)  # and the correct rewrite still passes
    assert r.verification["passed"] and r.verification["method"] == "float32"
