"""Apply a plan: slice every coupled parameter and recompute every channel-dependent constant.

The rules described the edits as ``Action`` data; here labels become kept indices. Afterwards the model
must pass the full ONNX checker and every labelled tensor must have exactly the shape the plan predicts.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from .errors import OnnxPruneError, VerificationError
from .groups import Analysis
from .groups.actions import Action
from .groups.rules.control import implicit_reads
from .load import Graph, infer_shapes
from .plan import Keep, PruningPlan, emptied
from .protosize import add_tensor, skeleton, with_initializers
from .runtime import is_in_memory_stub


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


class _Editor:
    def __init__(self, graph: Graph, model: onnx.ModelProto):
        self.graph = graph
        self.model = model
        self.nodes = {n.name: n for n in model.graph.node}
        self.new_inits: dict[str, np.ndarray] = {}
        self.edited: dict[tuple, int] = {}  # (node, input or attribute, entry) -> value written

    def private_copy(self, node: onnx.NodeProto, user: str) -> onnx.NodeProto:
        """A copy of shared shape-building ``node`` that only ``user`` reads (inserted right after it)."""
        name = f"{node.name}.for.{user}"
        if name not in self.nodes:
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = name
            del clone.output[:]
            clone.output.append(f"{node.output[0]}.for.{user}")
            nodes = self.model.graph.node
            at = next(i for i, n in enumerate(nodes) if n.name == node.name)
            nodes.insert(at + 1, clone)
            self.nodes[name] = nodes[at + 1]  # protobuf copied it in: edit the one in the graph
            target = self.nodes[user]
            for k, i in enumerate(target.input):
                if i == node.output[0]:
                    target.input[k] = clone.output[0]
        return self.nodes[name]

    def value(self, node: onnx.NodeProto, k: int) -> np.ndarray:
        name = node.input[k]
        return self.new_inits[name] if name in self.new_inits else self.graph.consts[name]

    def replace_input(self, node: onnx.NodeProto, k: int, arr: np.ndarray, tag: str) -> None:
        name = base = f"{node.name}.{tag}{k}.pruned"
        n = 1
        while name in self.graph.consts and name not in self.new_inits:  # a model pruned before
            n += 1
            name = f"{base}{n}"
        self.new_inits[name] = arr
        node.input[k] = name


def apply_plan(graph: Graph, analysis: Analysis, plan: PruningPlan) -> onnx.ModelProto:
    """Return a new, physically smaller model; ``graph.model`` is not modified."""
    plan.validate(analysis)
    bad = emptied(analysis, plan)
    if bad:
        raise OnnxPruneError(f"plan removes every channel of tensor '{bad[0][0]}' (axis {bad[0][1]})")
    keep = Keep(analysis, plan)
    # the graph without its weights: _finish copies in only the initializers the pruned model still
    # reads; copying them all first held every replaced weight twice at the peak
    model = onnx.ModelProto()
    model.CopyFrom(with_initializers(graph.model, []))
    ed = _Editor(graph, model)
    by_input: dict[tuple[str, int], list[Action]] = defaultdict(list)
    for act in analysis.actions:
        if act.kind == "slice_param":
            by_input[(act.node, act.input)].append(act)
        else:
            _apply_other(ed, keep, act)
    for (node_name, k), acts in by_input.items():
        node = ed.nodes[node_name]
        arr = ed.value(node, k)
        for act in acts:
            pa = act.axis if act.param_axis is None else act.param_axis
            idx = keep.along(act.lab, act.axis)
            if len(idx) != arr.shape[pa]:
                arr = np.take(arr, idx, axis=pa)
        if arr is not ed.value(node, k):
            ed.replace_input(node, k, np.ascontiguousarray(arr), "w")
    _finish(model, ed)
    _carry_value_info(graph, model)
    return model


def _carry_value_info(graph: Graph, model: onnx.ModelProto) -> None:
    """The original's shape annotations (``value_info``) on the pruned ``model``, each axis the rewrite
    resized set to its new size.

    Why keep them: onnxruntime's fusions read them. The PP-OCRv5 recogniser's SVTR neck fuses its last
    residual Add and LayerNorm into SkipLayerNormalization only when the Add's inputs are known to have
    equal shapes, which onnxruntime's own inference through the neck's Reshapes cannot show; without the
    exporter's annotations every pruned recogniser ran that block unfused. Other tools show them too.
    Why this way: only tensors whose old and new static shapes are both known keep an annotation, and an
    axis whose size changed keeps a concrete size only where the exporter wrote the old one; otherwise it
    becomes unknown, so no symbolic name goes on claiming that two axes are equal after one of them
    changed. Axes the rewrite left alone keep what the exporter wrote."""
    annotated = graph.model.graph.value_info
    if not annotated:
        return
    new = infer_shapes(model, graph.input_shapes, runtime=False)  # a run would cost more than the annotations are worth
    produced = {o for n in model.graph.node for o in n.output if o}
    for vi in annotated:
        before, after = graph.shapes.get(vi.name), new.get(vi.name)
        if vi.name not in produced or before is None or after is None or len(before) != len(after):
            continue
        tt = vi.type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(after):
            continue
        out = model.graph.value_info.add()
        out.CopyFrom(vi)
        if not tt.HasField("shape"):
            continue
        for ax, (old, size) in enumerate(zip(before, after)):
            if old != size:
                dim = out.type.tensor_type.shape.dim[ax]
                concrete = dim.HasField("dim_value") and dim.dim_value == old
                dim.Clear()
                if concrete:
                    dim.dim_value = size


def _apply_other(ed: _Editor, keep: Keep, act: Action) -> None:
    node = ed.nodes[act.node]
    if act.kind == "set_group":
        _set_attr(node, "group", keep.count(act.lab, act.axis))
    elif act.kind == "counts":
        if act.user:
            node = ed.private_copy(node, act.user)
        vals: list[int] | np.ndarray
        if act.attr:
            vals = [int(v) for v in next(helper.get_attribute_value(a) for a in node.attribute if a.name == act.attr)]
        else:
            vals = ed.value(node, act.input).copy()
        for k, (labels, axis) in act.entries.items():
            v = keep.count(labels, axis)
            prev = ed.edited.setdefault((node.name, act.attr or act.input, k), v)
            if prev != v:
                raise OnnxPruneError(
                    f"plan gives the shared shape constant of '{act.node}' two sizes ({prev} and "
                    f"{v}); keep the channels it sizes consistent"
                )
            vals[k] = v
        if act.attr:
            _set_attr(node, act.attr, [int(v) for v in vals])
        else:
            ed.replace_input(node, act.input, np.asarray(vals), "c")
    elif act.kind == "split_outputs":
        sizes = np.array([keep.count(lab, ax) for _, (lab, ax) in sorted(act.entries.items())], dtype=np.int64)
        _set_attr(node, "num_outputs", None)
        if ed.graph.opset >= 13:
            while len(node.input) < 2:
                node.input.append("")
            ed.replace_input(node, 1, sizes, "c")
        else:
            _set_attr(node, "split", [int(s) for s in sizes])
    elif act.kind == "slice_range":
        kept = keep.kept_along(act.lab, act.axis)
        new_start = int(kept[: act.start].sum())
        new_end = new_start + int(kept[act.start : act.end].sum())
        for k, v in ((1, new_start), (2, new_end)):
            vals = ed.value(node, k).copy()
            vals[act.entry] = v
            ed.replace_input(node, k, vals, "c")
    elif act.kind == "gather_idx":
        kept_idx = keep.along(act.lab, act.axis)
        dim = act.lab.shape[act.axis]
        new_pos = np.full(dim, -1, dtype=np.int64)
        new_pos[kept_idx] = np.arange(len(kept_idx))
        idx = ed.value(node, 1)
        remapped = new_pos[np.where(idx < 0, idx + dim, idx)]
        ed.replace_input(node, 1, _kept_block(remapped, act.node).astype(idx.dtype), "c")
    else:
        raise AssertionError(f"unknown action {act.kind}")


def _kept_block(remapped: np.ndarray, node: str) -> np.ndarray:
    """The index array without its removed entries, keeping its rank: along each axis of the indices, a
    slice goes when every entry in it reads a removed channel. Multi-dimensional constant indices
    (dynamo's as_strided lowering of a flatten) keep their shape that way; a removal pattern that is not
    a rectangular block cannot be written as a smaller index array and is refused."""
    if remapped.ndim == 0:
        return remapped
    alive = remapped >= 0
    keep = [np.any(alive, axis=tuple(a for a in range(alive.ndim) if a != ax)) for ax in range(alive.ndim)]
    block = remapped[np.ix_(*keep)]
    if np.any(block < 0):
        raise OnnxPruneError(f"Gather '{node}': removed channels do not form whole slices of its indices")
    return block


def _finish(model: onnx.ModelProto, ed: _Editor) -> None:
    """The initializers the edited graph reads (or declares as inputs): the original ones it still
    reads, in their order, then the new ones."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    used |= _subgraph_reads(g)
    used |= {i.name for i in g.input}
    for t in ed.graph.model.graph.initializer:
        if t.name in used and t.name not in ed.new_inits:
            if is_in_memory_stub(t):  # held as an array by the loaded graph: the pruned model is self-contained
                add_tensor(g.initializer, ed.graph.consts[t.name], t.name)
            else:
                g.initializer.append(t)  # protobuf copies it in
    for name, arr in ed.new_inits.items():
        if name in used:
            add_tensor(g.initializer, arr, name)
    del g.value_info[:]  # stale shapes: ``_carry_value_info`` writes them again, resized


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    return set().union(*(implicit_reads(n) for n in g.node))


def check_rewrite(
    graph: Graph, analysis: Analysis, plan: PruningPlan, model: onnx.ModelProto
) -> dict[str, tuple[int, ...]]:
    """Post-condition of the rewrite: valid ONNX, and every channel-carrying tensor has the planned shape.
    Returns the pruned model's shapes it checked, for the caller's counts: inferring them again cost a
    second onnxruntime run where onnx's inference stops (the PP-OCRv5 recogniser's Reshapes: 0.2 s)."""
    # on the weight-free copy: the rewrite makes every weight from a numpy array, so its payload matches
    # its shape by construction, and serialising the weights for the checker cost 0.7 s on vgg16_bn
    light = skeleton(model)
    try:
        onnx.checker.check_model(light)
    except Exception as e:
        raise VerificationError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0][:300]}") from None
    try:
        onnx.checker.check_model(light, full_check=True)
    except Exception as e:
        # The full check also runs strict shape inference, which for some function ops (e.g.
        # MeanVarianceNormalization in onnx 1.2x) fails on perfectly valid models. Only a failure the
        # original model does not have is the rewrite's fault.
        try:
            onnx.checker.check_model(skeleton(graph.model), full_check=True)
        except Exception:
            pass
        else:
            raise VerificationError(f"pruned model fails the ONNX checker: {str(e).splitlines()[0][:300]}") from None
    shapes = infer_shapes(model, graph.input_shapes)
    keep = Keep(analysis, plan)
    for name, labels in analysis.expected.items():
        old = graph.shapes.get(name)
        if old is None or name not in shapes:
            continue
        want = tuple(keep.count(labels, ax) if labels.shape[ax] > 1 else d for ax, d in enumerate(old))
        if shapes[name] != want:
            raise VerificationError(
                f"tensor '{name}' has shape {shapes[name]} after the rewrite, the plan implies {want}"
            )
    return shapes
