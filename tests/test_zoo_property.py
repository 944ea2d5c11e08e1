"""Property test over torchvision architectures (random weights), both exporters.

For random plans: the pruned model passes the checker, runs in onnxruntime, equals the masked original
(prune() verifies and raises otherwise; we also assert the recorded result), keeps the input/output
interface including the dynamic batch, and has fewer MACs and params. Ratio 0 is the identical function.
The whole zoo (every classification architecture) runs in benchmarks/zoo.py.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from helpers import feeds_for, outputs, random_plan, refuses_wrong_rewrites
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune import zoo
from onnxprune.allocation.targets import counts_of

pytestmark = pytest.mark.slow

MODELS = [
    "resnet18",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "densenet121",
    "efficientnet_b0",
    "regnet_y_400mf",
    "googlenet",
    "mnasnet0_5",
    "convnext_tiny",
    "resnext50_32x4d",
]
CASES = [(m, e) for m in MODELS for e in ("legacy", "dynamo")]
_loaded: dict = {}


def exported(zoo_dir, name, exporter):
    key = (name, exporter)
    if key not in _loaded:
        path = os.path.join(zoo_dir, f"{name}_{exporter}.onnx")
        if not os.path.exists(path):
            zoo.export(name, path, dynamo=exporter == "dynamo")
        _loaded[key] = (path, onnxprune.analyze(path))
    return _loaded[key]


def coverage(report) -> float:
    considered = [g for g in report.groups if not g.reason.startswith("reaches graph output")]
    n = {s.node: s.n for s in report.analysis.sources}
    total = sum(n[s] for g in considered for s in g.sources)
    return sum(n[s] for g in considered if g.prunable for s in g.sources) / total


def interface(model: onnx.ModelProto):
    def sig(vis):
        return [
            (v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in vis
        ]

    inits = {t.name for t in model.graph.initializer}
    return sig([i for i in model.graph.input if i.name not in inits]), sig(model.graph.output)


# dynamo lowers ConvNeXt's final flatten to a Gather with batch-dependent indices (as_strided):
# the last stage's 768 channels freeze (91% coverage); the legacy export of the same model is at 100%.
KNOWN_BELOW_BAR = {("convnext_tiny", "dynamo")}


@pytest.mark.parametrize("name,exporter", CASES)
def test_coverage_and_identity(zoo_dir, name, exporter):
    path, rep = exported(zoo_dir, name, exporter)
    if (name, exporter) in KNOWN_BELOW_BAR:
        assert 0.85 <= coverage(rep) < 0.95  # fails when fixed: then drop it from KNOWN_BELOW_BAR
    else:
        assert coverage(rep) >= 0.95, [g.reason for g in rep.groups if not g.prunable]
    pruned, r = onnxprune.prune(rep.graph, ratio=0.0)
    original = onnx.load(path)
    feeds = feeds_for(original)
    for a, b in zip(outputs(original, feeds), outputs(pruned, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert r.after.macs == r.before.macs


@pytest.mark.parametrize("name,exporter", CASES)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_plans_are_exact(zoo_dir, name, exporter, seed):
    path, rep = exported(zoo_dir, name, exporter)
    plan = random_plan(rep, seed)
    assert plan.remove, "no prunable group"
    pruned, r = onnxprune.prune(rep.graph, plan=plan, seed=seed)
    assert r.verification["passed"] and r.verification["max_rel_diff"] <= r.verification["tolerance"]
    assert r.after.macs < r.before.macs and r.after.params < r.before.params
    # the allocation's shape-only count (used by every target search) equals counting the rewritten model
    fast = counts_of(rep.graph, rep.analysis, plan)
    assert (fast.macs, fast.params) == (r.after.macs, r.after.params)
    assert interface(pruned) == interface(onnx.load(path, load_external_data=False))
    # the dynamic batch survives: run the pruned model at batch 3
    feeds = feeds_for(onnx.load(path), [f"x:3x3x{zoo.input_size(name)}x{zoo.input_size(name)}"])
    assert outputs(pruned, feeds)[0].shape[0] == 3


@pytest.mark.parametrize("name", ["resnet18", "shufflenet_v2_x0_5"])
def test_uniform_ratio_removes_the_planned_share(zoo_dir, name):
    _, rep = exported(zoo_dir, name, "dynamo")
    pruned, r = onnxprune.prune(rep.graph, ratio=0.3, criterion="l1", round_to=1)
    for g in r.groups:
        if g["prunable"]:
            assert len(g["kept"]) == int(np.ceil(g["channels"] * 0.7 - 1e-9))
    assert r.after.macs < 0.7 * r.before.macs


@pytest.mark.parametrize("name,exporter", CASES)
def test_torch_evaluation_matches_onnxruntime(zoo_dir, name, exporter):
    """The Taylor criterion backpropagates through our torch evaluation of the graph: it must compute
    what onnxruntime computes on every model of the test zoo."""
    import torch

    from onnxprune.torch_eval import TorchGraph

    path, rep = exported(zoo_dir, name, exporter)
    g = rep.graph
    feeds = feeds_for(g)
    with torch.no_grad():
        got, _ = TorchGraph(g.model, g.consts).run(feeds)
    for a, b in zip(outputs(g, feeds), got):
        scale = max(1.0, float(np.abs(a).max()))
        assert float(np.abs(a - b.numpy()).max()) <= 1e-4 * scale


@pytest.mark.parametrize("name,exporter", CASES)
def test_wrong_rewrites_are_refused(zoo_dir, name, exporter, monkeypatch):
    """A shifted slice and a dropped channel in a weight (and a wrong Slice offset where the model has
    channel Slices) are refused on every zoo model, whichever of float32 or float64 decides."""
    _, rep = exported(zoo_dir, name, exporter)
    applied = refuses_wrong_rewrites(monkeypatch, rep.graph, rep.analysis, random_plan(rep, 0, max_fraction=0.5))
    assert {"shift", "drop"} <= set(applied)


def test_convnext_dynamo_static_export_prunes_and_verifies(zoo_dir):
    """dynamo at a static 1x3x224x224 lowers the final flatten to a Gather with [1, 768, 1, 1] constant
    indices; the rewrite must keep their shape (it once flattened them and broke the Transpose after)."""
    path = os.path.join(zoo_dir, "convnext_tiny_static.onnx")
    if not os.path.exists(path):
        zoo.export("convnext_tiny", path, dynamo=True, size=224, batch_dynamic=False, opset=18, batch=1)
    pruned, r = onnxprune.prune(path, ratio=0.3, criterion="l1")
    assert r.verification["passed"] and r.after.macs < 0.7 * r.before.macs
    gathers = [n for n in pruned.graph.node if n.op_type == "Gather"]
    inits = {t.name: t for t in pruned.graph.initializer}
    assert any(len(inits[n.input[1]].dims) == 4 for n in gathers if n.input[1] in inits)
