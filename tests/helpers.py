"""Shared test helpers: random plans and an independent exactness check."""
from __future__ import annotations

import numpy as np
import onnx

import onnxprune
from onnxprune.allocation import restore_emptied
from onnxprune.load import random_feeds
from onnxprune.runtime import run_model


def random_plan(report, seed: int, max_fraction: float = 0.9) -> onnxprune.PruningPlan:
    rng = np.random.default_rng(seed)
    plan = onnxprune.PruningPlan()
    for g in report.groups:
        if not g.prunable:
            continue
        n = int(rng.integers(0, max(1, int(g.channels * max_fraction)) + 1))
        n = min(n, g.channels - 1)
        if n:
            plan.remove[g.id] = sorted(int(c) for c in rng.choice(g.channels, n, replace=False))
    scores = {g.id: rng.random(g.channels) for g in report.groups}
    return restore_emptied(report.analysis, plan, scores)


def prune_with(model, plan, **kw):
    return onnxprune.prune(model, plan=plan, **kw)


def outputs(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    return run_model(model, feeds)


def feeds_for(model: onnx.ModelProto, shapes=None, seed: int = 1):
    g = onnxprune.load(model, shapes)
    return random_feeds(g.model, g.input_shapes, seed)


def weight_shapes(model: onnx.ModelProto) -> dict[str, list[tuple[int, ...]]]:
    """node name -> shapes of its initializer inputs."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {n.name: [inits[i] for i in n.input if i in inits] for n in model.graph.node}
