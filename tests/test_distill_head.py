"""Distillation on what deployed models output: probabilities (softmax over classes or per time step,
sigmoid maps) are distilled through the logits in front of them, never as if they were logits."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import G
from helpers import feeds_for

import onnxprune
from onnxprune.recovery.finetune import distill_head, distill_loss

torch = pytest.importorskip("torch")


def _sequence_softmax_model():
    """Conv features -> [N, T, C] -> Softmax over C: a CTC head's shape."""
    b = G(shape=(2, 3, 8, 16))
    x = b.op("Relu", [b.conv(b.x, 3, 16, name="a")])
    x = b.op("Relu", [b.conv(x, 16, 16, name="b")])
    x = b.op("ReduceMean", [x], axes=[2], keepdims=0)  # N, 16, 16 (C, T)
    x = b.op("Transpose", [x], perm=[0, 2, 1])  # N, T, C
    logits = b.op("Mul", [b.matmul(x, 16, 12), b.const(np.float32(0.5))])  # peaked, not near-uniform
    b.output(b.op("Softmax", [logits], axis=-1))
    return b.model(), logits


def test_heads_are_the_logits_in_front_of_probabilities():
    model, logits = _sequence_softmax_model()
    assert distill_head(model) == distill_head(model).__class__(logits, "softmax", -1)
    b = G()
    pre = b.conv(b.x, 4, 1)
    b.output(b.op("Sigmoid", [pre]))
    assert (distill_head(b.model()).tensor, distill_head(b.model()).kind) == (pre, "sigmoid")
    b = G(opset=11)
    pre = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(b.x, 4, 5)])])
    b.output(b.op("Softmax", [pre]))
    h = distill_head(b.model())
    assert (h.tensor, h.kind, h.axis, h.flatten) == (pre, "softmax", 1, True)
    b = G()
    out = b.conv(b.x, 4, 2)
    b.output(out)
    assert distill_head(b.model()) == h.__class__(out, "regression")


def test_losses_are_divergences():
    rng = np.random.default_rng(0)
    t = torch.tensor(rng.standard_normal((4, 7, 12)))
    for kind in ("softmax", "sigmoid", "regression"):
        head = onnxprune.recovery.finetune.Head("x", kind, -1)
        assert float(distill_loss(torch, head, t, t, 4.0)) == pytest.approx(0.0, abs=1e-9)
        worse = float(distill_loss(torch, head, t + torch.tensor(rng.standard_normal(t.shape)), t, 4.0))
        assert worse > 0


def test_distillation_of_a_softmax_sequence_model_lowers_the_divergence():
    model, _ = _sequence_softmax_model()
    pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1)
    feeds = [feeds_for(model, seed=s) for s in range(8)]
    res = onnxprune.finetune(
        pruned, model, feeds, epochs=4, lr=1e-2, eval_data=feeds, progress=False, log=lambda s: None
    )
    kl = [e["held_out_kl"] for e in res.epochs]
    losses = [e["loss"] for e in res.epochs[1:]]
    assert all(x >= 0 for x in kl + losses) and kl[-1] < 0.7 * kl[0], kl
