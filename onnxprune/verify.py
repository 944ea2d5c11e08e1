"""Prove a rewrite exact: the pruned model must equal the original with the removed channels masked to
zero wherever they are consumed (the input of a Conv/Gemm/MatMul/ReduceSum). Any difference beyond float
reordering noise means the rewrite is wrong, and it is refused."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import VerificationError
from .groups import Analysis
from .load import Graph, random_feeds, skeleton
from .plan import PruningPlan
from .rewrite import Keep
from .runtime import run_model


@dataclass
class VerifyResult:
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    masked_points: int
    passed: bool

    def to_json(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.__dict__.items()}


def masked_reference(graph: Graph, analysis: Analysis, plan: PruningPlan) -> tuple[onnx.ModelProto, int]:
    """The original model with removed channels zeroed (Where) in front of every consumption."""
    keep = Keep(analysis, plan)
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    dtypes = _elem_types(model)
    inserts: dict[str, list[onnx.NodeProto]] = {}
    nodes = {n.name: n for n in g.node}
    count = 0
    for node_name, k, labels in analysis.terminals:
        m = keep.mask(labels)
        if m.all():
            continue
        node = nodes[node_name]
        src = node.input[k]
        elem = dtypes.get(src, onnx.TensorProto.FLOAT)
        mask_name, out_name = f"{node_name}.mask{k}", f"{node_name}.masked{k}"
        zero_name = f"{node_name}.zero{k}"
        np_dtype = helper.tensor_dtype_to_np_dtype(elem)
        g.initializer.append(numpy_helper.from_array(m, mask_name))
        g.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np_dtype), zero_name))
        # Where, not Mul: a removed channel holding inf/nan must vanish, as it does in the pruned model
        inserts.setdefault(node_name, []).append(
            helper.make_node("Where", [mask_name, src, zero_name], [out_name], name=f"{node_name}.mask{k}.where"))
        node.input[k] = out_name
        count += 1
    replaced = {}
    for node_name, labels, axes in analysis.stat_masks:
        m = keep.mask(labels)
        if m.all():
            continue
        node = nodes[node_name]
        elem = dtypes.get(node.input[0], onnx.TensorProto.FLOAT)
        replaced[node_name] = _masked_layer_norm(g, node, m, axes, graph.shapes[node.input[0]], elem)
        count += 1
    new_nodes = []
    for n in g.node:
        new_nodes.extend(inserts.get(n.name, []))
        new_nodes.extend(replaced.get(n.name, [n]))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return model, count


def _masked_layer_norm(g: onnx.GraphProto, node: onnx.NodeProto, mask: np.ndarray, axes: list[int],
                       shape: tuple[int, ...], elem: int) -> list[onnx.NodeProto]:
    """LayerNormalization whose mean and variance run over the kept channels only (what the pruned
    model computes), written with plain ops so it shares no code with the rewrite it checks."""
    from .groups.rules._util import attr

    dt = helper.tensor_dtype_to_np_dtype(elem)
    p = f"{node.name}.mln"
    full = np.broadcast_to(mask, (1,) + tuple(shape[1:])).astype(np.float64)
    cnt = np.sum(full, axis=tuple(axes), keepdims=True)
    eps = float(attr(node, "epsilon", 1e-5))
    inits = {f"{p}.m": mask, f"{p}.zero": np.zeros((), dtype=dt), f"{p}.n": cnt.astype(dt), f"{p}.axes": np.array(axes, dtype=np.int64),
             f"{p}.eps": np.array(eps, dtype=dt)}
    for name, arr in inits.items():
        g.initializer.append(numpy_helper.from_array(arr, name))
    x = node.input[0]
    mk = helper.make_node
    nodes = [
        mk("Where", [f"{p}.m", x, f"{p}.zero"], [f"{p}.xm"], name=f"{p}.0"),
        mk("ReduceSum", [f"{p}.xm", f"{p}.axes"], [f"{p}.s"], keepdims=1, name=f"{p}.1"),
        mk("Div", [f"{p}.s", f"{p}.n"], [f"{p}.mean"], name=f"{p}.2"),
        mk("Sub", [x, f"{p}.mean"], [f"{p}.d"], name=f"{p}.3"),
        mk("Where", [f"{p}.m", f"{p}.d", f"{p}.zero"], [f"{p}.dm"], name=f"{p}.4"),
        mk("Mul", [f"{p}.dm", f"{p}.dm"], [f"{p}.d2"], name=f"{p}.5"),
        mk("ReduceSum", [f"{p}.d2", f"{p}.axes"], [f"{p}.s2"], keepdims=1, name=f"{p}.6"),
        mk("Div", [f"{p}.s2", f"{p}.n"], [f"{p}.var"], name=f"{p}.7"),
        mk("Add", [f"{p}.var", f"{p}.eps"], [f"{p}.ve"], name=f"{p}.8"),
        mk("Sqrt", [f"{p}.ve"], [f"{p}.std"], name=f"{p}.9"),
        mk("Div", [f"{p}.d", f"{p}.std"], [f"{p}.y0"], name=f"{p}.10"),
    ]
    y = f"{p}.y0"
    if len(node.input) > 1 and node.input[1]:
        nodes.append(mk("Mul", [y, node.input[1]], [f"{p}.y1"], name=f"{p}.11"))
        y = f"{p}.y1"
    if len(node.input) > 2 and node.input[2]:
        nodes.append(mk("Add", [y, node.input[2]], [f"{p}.y2"], name=f"{p}.12"))
        y = f"{p}.y2"
    nodes.append(mk("Identity", [y], [node.output[0]], name=f"{p}.13"))
    return nodes


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def verify(graph: Graph, analysis: Analysis, plan: PruningPlan, pruned: onnx.ModelProto,
           feeds: list[dict[str, np.ndarray]] | None = None, rtol: float = 1e-4, seed: int = 0) -> VerifyResult:
    """Compare pruned vs masked original on seeded random inputs (batch 2 where the batch is dynamic)."""
    ref, points = masked_reference(graph, analysis, plan)
    if feeds is None:
        shapes = dict(graph.input_shapes)
        for inp in graph.model.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if inp.name in shapes and dims and not dims[0].HasField("dim_value"):
                shapes[inp.name] = (2,) + tuple(shapes[inp.name][1:])  # a batch of 2 also checks batch mixing
        feeds = [random_feeds(graph.model, shapes, seed=seed)]
    worst_abs = worst_rel = 0.0
    tol = 0.0
    passed = True
    for feed in feeds:
        want = run_model(ref, feed)
        got = run_model(pruned, feed)
        for w, o in zip(want, got):
            w = np.asarray(w)
            o = np.asarray(o)
            if w.shape != o.shape:
                raise VerificationError(f"output shape changed from {w.shape} to {o.shape}")
            if not np.issubdtype(w.dtype, np.floating):
                if not np.array_equal(w, o):
                    passed = False
                continue
            wf, of = w.astype(np.float64), o.astype(np.float64)
            finite = np.isfinite(wf) & np.isfinite(of)
            same_special = ~finite & ((wf == of) | (np.isnan(wf) & np.isnan(of)))
            if not np.all(finite | same_special):  # an inf/nan on one side only
                passed = False
                continue
            scale = max(1.0, float(np.max(np.abs(wf[finite]))) if finite.any() else 1.0)
            eps = rtol if w.dtype != np.float16 else 5e-3
            diff = float(np.max(np.abs(wf[finite] - of[finite]))) if finite.any() else 0.0
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / scale)
            tol = eps
            if not diff <= eps * scale:
                passed = False
    return VerifyResult(worst_abs, worst_rel, tol or rtol, points, passed)
