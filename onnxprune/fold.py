"""Fold shape arithmetic on static dims into constants.

The legacy exporter computes ``x.view(n, groups, c // groups, h, w)`` and ``x.chunk(2, dim=1)`` from
``Shape(x)`` at run time, even though the channel count is static. Left alone, such a graph reads the
channel count at run time and every channel it reads must freeze. Folding the dims that are static in
the model itself (never the dynamic batch or spatial dims) turns them into constants the rewrite can
edit, as onnx-simplifier does; we do it here because onnxsim needs fixed input shapes and would also
fold the dims the deploy engineer left dynamic.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .protosize import skeleton

# Any default-domain op whose inputs are all small constants folds, except these.
NOT_FOLDABLE = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceInsert",
    "SplitToSequence",
    "ConcatFromSequence",
    "Optional",
    "OptionalGetElement",
    "Constant",
    # a quantized weight stays as the export has it: folded, the rewrite would write it back dequantized
    # (float32, 4x the bytes) and out of the QDQ pattern runtimes fuse into integer kernels
    "DequantizeLinear",
}
MAX_ELEMENTS = 4096


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:

    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    g = inferred.graph
    out = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return out


def fold_static_shapes(model: onnx.ModelProto, rounds: int = 16) -> int:
    """Fold in place until nothing changes (each round lets shape inference see through the previous
    round's constants); returns the number of nodes folded away."""
    total = 0
    for _ in range(rounds):
        n = _fold_round(model)
        total += n
        if not n:
            break
    return total


def _fold_round(model: onnx.ModelProto) -> int:
    try:
        shapes = _symbolic_shapes(model)
    except Exception:  # shape inference problems are reported by the loader, not here
        return 0
    g = model.graph
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    consts = {t.name: t for t in g.initializer}
    values: dict[str, np.ndarray] = {}
    outputs = {o.name for o in g.output}
    keep, folded = [], []
    for node in g.node:
        foldable = node.domain in ("", "ai.onnx") and node.op_type not in NOT_FOLDABLE
        val = _fold(node, shapes, consts, values, opsets) if foldable else None
        if val is not None and node.output[0] not in outputs and len(node.output) == 1:
            values[node.output[0]] = val
            folded.append(node.output[0])
            continue
        keep.append(node)
    if not folded:
        return 0
    used = {i for n in keep for i in n.input} | outputs
    for name in folded:
        if name in used:
            g.initializer.append(numpy_helper.from_array(values[name], name))
    del g.node[:]
    g.node.extend(keep)
    return len(folded)


def _value(name, consts, values):
    if name in values:
        return values[name]
    t = consts.get(name)
    if t is None:
        return None
    if int(np.prod(t.dims)) > MAX_ELEMENTS or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    arr = numpy_helper.to_array(t)
    values[name] = arr
    return arr


def _fold(node, shapes, consts, values, opsets):
    if node.op_type == "Shape":
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), None)
        sel = dims[start:end] if end is not None else dims[start:]
        if any(d is None for d in sel):
            values[("shape_of", node.output[0])] = sel  # for a Gather/Slice of its static dims
            return None
        return np.array(sel, dtype=np.int64)
    args = []
    for i in node.input:
        if not i:
            args.append(None)
            continue
        v = _value(i, consts, values)
        if v is None:
            return _partial_shape(node, shapes, consts, values)
        args.append(v)
    try:
        out = _evaluate(node, args, opsets)
    except Exception:
        return None
    out = np.asarray(out)
    return out if out.size <= MAX_ELEMENTS else None


def _evaluate(node, args, opsets):
    """``node``'s first output on constant ``args`` by onnx's reference evaluator at the model's opsets: a
    NodeProto alone is run at the newest opset, where a legacy export's Unsqueeze (axes an attribute
    before opset 13) fails, and the channel count it carries into a Reshape target stayed computed."""
    from onnx.reference import ReferenceEvaluator

    feeds = {i: np.asarray(a) for i, a in zip(node.input, args) if i}
    inputs = [
        helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for i, a in feeds.items()
    ]
    outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return ReferenceEvaluator(graph, opsets=opsets).run(None, feeds)[0]


def _partial_shape(node, shapes, consts, values):
    """Gather/Slice of Shape(x) picking only static dims of x, although other dims of x are dynamic."""
    src = values.get(("shape_of", node.input[0])) if node.input else None
    if src is None or node.op_type not in ("Gather", "Slice"):
        return None
    dims = np.array([-1 if d is None else d for d in src], dtype=np.int64)
    if node.op_type == "Gather":
        idx = _value(node.input[1], consts, values)
        if idx is None:
            return None
        picked = dims[np.asarray(idx, dtype=np.int64)]
    else:
        starts, ends = (_value(node.input[k], consts, values) for k in (1, 2))
        steps = _value(node.input[4], consts, values) if len(node.input) > 4 and node.input[4] else np.array([1])
        if starts is None or ends is None or steps is None:
            return None
        picked = dims[int(starts[0]) : int(max(min(ends[0], 2**62), -(2**62))) : int(steps[0])]
    return None if np.any(picked < 0) else picked.astype(np.int64)
