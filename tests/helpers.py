"""Shared test helpers: random plans and an independent exactness check."""

from __future__ import annotations

import numpy as np
import onnx

import onnxprune
from onnxprune.allocation import restore_emptied
from onnxprune.load import random_feeds
from onnxprune.runtime import make_session, run_model


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


def outputs(model, feeds) -> list[np.ndarray]:
    """A ModelProto's or a loaded Graph's outputs (a Graph's large weights are its arrays)."""
    if hasattr(model, "consts"):
        return run_model(make_session(model.model, arrays=model.consts), feeds)
    return run_model(model, feeds)


def feeds_for(model: onnx.ModelProto, shapes=None, seed: int = 1):
    g = onnxprune.load(model, shapes)
    return random_feeds(g.model, g.input_shapes, seed)


def weight_shapes(model: onnx.ModelProto) -> dict[str, list[tuple[int, ...]]]:
    """node name -> shapes of its initializer inputs."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {n.name: [inits[i] for i in n.input if i in inits] for n in model.graph.node}


# --- deliberately wrong rewrites: each must be refused by verification -------------------------------
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _corrupt_indices(monkeypatch, graph, analysis, plan, how: str) -> bool:
    """Make the rewriter slice one weight wrongly: ``shift`` takes the neighbour of a kept channel (an
    off-by-one), ``drop`` keeps a removed channel in place of a kept one. Returns False where no weight of
    the plan can be corrupted that way."""
    from onnxprune.plan import Keep

    nodes = {n.name: n.op_type for n in graph.model.graph.node}
    keep = Keep(analysis, plan)
    for act in analysis.actions:
        if act.kind != "slice_param" or nodes.get(act.node) not in WEIGHTED or act.input != 1:
            continue
        idx = keep.along(act.labels, act.axis)
        dim = act.labels.shape[act.axis]
        gone = sorted(set(range(dim)) - set(idx.tolist()))
        if not gone:
            continue
        j, new = (
            next(((j, i + 1) for j, i in enumerate(idx) if i + 1 in gone), (None, None))
            if how == "shift"
            else (len(idx) - 1, gone[-1])
        )
        if j is None:
            continue

        def along(self, labels, axis, _j=j, _new=new, _target=act.labels, _axis=act.axis, _orig=Keep.along):
            out = _orig(self, labels, axis)
            if labels is _target and axis == _axis:
                out = np.sort(np.concatenate([np.delete(out, _j), [_new]]))
            return out

        monkeypatch.setattr(Keep, "along", along)
        return True
    return False


def wrong_slice_offset(pruned: onnx.ModelProto) -> bool:
    """Move one channel-axis Slice of the rewritten model by one position, same length (a wrong Concat /
    Split offset). Returns False where the model has no such Slice."""
    from onnx import numpy_helper

    inits = {t.name: t for t in pruned.graph.initializer}
    for node in pruned.graph.node:
        if node.op_type != "Slice" or not node.input[1].endswith(".pruned"):
            continue  # only Slices whose bounds the rewrite recomputed
        starts, ends = (numpy_helper.to_array(inits[node.input[k]]).copy() for k in (1, 2))
        delta = -1 if starts.min() > 0 else 1
        for k, arr in ((1, starts + delta), (2, ends + delta)):
            inits[node.input[k]].CopyFrom(numpy_helper.from_array(arr.astype(starts.dtype), node.input[k]))
        return True
    return False


def refuses_wrong_rewrites(monkeypatch, graph, analysis, plan) -> list[str]:
    """The corruptions that applied to this model and plan; asserts verification refused each."""
    from onnxprune.rewrite import apply_plan, check_rewrite
    from onnxprune.verify import verify

    applied = []
    for how in ("shift", "drop"):
        with monkeypatch.context() as m:
            if not _corrupt_indices(m, graph, analysis, plan, how):
                continue
            pruned = apply_plan(graph, analysis, plan)
        check_rewrite(graph, analysis, plan, pruned)  # shapes are right: only the values are wrong
        res = verify(graph, analysis, plan, pruned)
        assert not res.passed, (how, res)
        applied.append(how)
    pruned = apply_plan(graph, analysis, plan)
    if wrong_slice_offset(pruned):
        res = verify(graph, analysis, plan, pruned)
        assert not res.passed, ("offset", res)
        applied.append("offset")
    return applied
