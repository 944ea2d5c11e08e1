"""Prove a rewrite exact: the pruned model must equal the original with the removed channels masked to
zero wherever they are consumed (the input of a Conv/Gemm/MatMul/ReduceSum). Any difference beyond float
reordering noise means the rewrite is wrong, and it is refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError, VerificationError
from .groups import Analysis
from .groups.rules._util import attr
from .load import Graph, elem_types, random_feeds, with_batch
from .plan import Keep, PruningPlan
from .runtime import is_in_memory_stub, make_session, run_model
from .torch_eval import TorchGraph

# float32 bound: a correct rewrite of a shallow model stays far below it, and the check ends there
RTOL32 = 1e-4
# float64 bound: correct rewrites measured 1e-15..1e-13 of the output scale on the real models (PP-OCRv5
# det/rec, YOLOX) where float32 reached 1e-4; a wrong channel moves the output by far more than 1e-9
RTOL64 = 1e-9
# onnxruntime's float32 result of the pruned model must be as close to its own float64 value as the
# reference's is to its own (measured ratio <= 1.6 on those models): a larger gap means onnxruntime and
# the float64 evaluator disagree about the rewritten graph, which the float64 comparison alone would miss
NOISE_FACTOR = 16.0
# intermediate tensors are compared relative to their own size; below this they count as zero
INTERMEDIATE_FLOOR = 1e-6


@dataclass
class VerifyResult:
    """``method`` says what decided: "float32" (onnxruntime, fixed bound) or "float64" (the float32
    difference exceeded its bound, so both models were re-evaluated in double precision)."""

    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    masked_points: int
    passed: bool
    method: str = "float32"
    float64_rel_diff: float | None = None
    float64_tolerance: float | None = None
    noise_floor: float | None = None  # float32 error of the masked reference against its float64 value
    pruned_float32_error: float | None = None
    reason: str = ""

    def to_json(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.__dict__.items()}

    def message(self) -> str:
        """Why the rewrite was refused, in one line."""
        base = (
            f"rewrite is not exact: max |diff| {self.max_abs_diff:.3e} exceeds tolerance "
            f"(relative {self.max_rel_diff:.3e} > {self.tolerance:.1e})"
        )
        if self.reason:
            return f"{base}; {self.reason}"
        if self.method == "float64":
            return (
                f"{base}, and in float64 the difference is {self.float64_rel_diff:.3e} "
                f"(bound {self.float64_tolerance:.0e}) with float32 error {self.pruned_float32_error:.2e} "
                f"against a noise floor of {self.noise_floor:.2e}"
            )
        return base


def masked_reference(graph: Graph, analysis: Analysis, plan: PruningPlan) -> tuple[onnx.ModelProto, int]:
    """The original model with removed channels zeroed (Where) in front of every consumption.

    Its large initializers stay the loaded graph's in-memory stubs, whose values are ``graph.consts``
    (``make_session(..., arrays=graph.consts)``): a full copy of the weights would double the peak
    memory of every prune."""
    keep = Keep(analysis, plan)
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    dtypes = elem_types(model)
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
            helper.make_node("Where", [mask_name, src, zero_name], [out_name], name=f"{node_name}.mask{k}.where")
        )
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


def _masked_layer_norm(
    g: onnx.GraphProto, node: onnx.NodeProto, mask: np.ndarray, axes: list[int], shape: tuple[int, ...], elem: int
) -> list[onnx.NodeProto]:
    """LayerNormalization whose mean and variance run over the kept channels only (what the pruned
    model computes), written with plain ops so it shares no code with the rewrite it checks."""

    dt = helper.tensor_dtype_to_np_dtype(elem)
    p = f"{node.name}.mln"
    full = np.broadcast_to(mask, (1,) + tuple(shape[1:])).astype(np.float64)
    cnt = np.sum(full, axis=tuple(axes), keepdims=True)
    eps = float(attr(node, "epsilon", 1e-5))
    inits = {
        f"{p}.m": mask,
        f"{p}.zero": np.zeros((), dtype=dt),
        f"{p}.n": cnt.astype(dt),
        f"{p}.axes": np.array(axes, dtype=np.int64),
        f"{p}.eps": np.array(eps, dtype=dt),
    }
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


def verify(
    graph: Graph,
    analysis: Analysis,
    plan: PruningPlan,
    pruned: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]] | None = None,
    rtol: float = RTOL32,
    seed: int = 0,
) -> VerifyResult:
    """Compare pruned vs masked original on seeded random inputs (batch 2 where the batch is dynamic).

    Not only the graph outputs are compared: every float tensor a rewritten node produces must equal the
    masked original's tensor at the kept positions. A wrong slice shows there at full size, while at the
    outputs of a random-weight or saturating network it can shrink below any bound (measured: an
    off-by-one weight slice moved mobilenet_v3's and efficientnet's outputs by 1e-11 and 1e-15).

    float32 rounding compounds with depth: on deep trained models (20+ pruned groups, LayerNorm, a
    18,385-way softmax) a correct rewrite can differ by more than any fixed float32 bound. So a float32
    difference above ``rtol`` is not a verdict: both models are evaluated again in float64, where a
    correct rewrite agrees to ~1e-13 and a wrong one does not."""
    ref, points = masked_reference(graph, analysis, plan)
    feeds = feeds if feeds is not None else [_random_feed(graph, seed)]
    checked = _checked_tensors(graph, analysis, plan, ref, pruned)
    names = [o.name for o in ref.graph.output] + [n for n in checked if n not in {o.name for o in ref.graph.output}]
    # without graph optimisations: the layout pass would add a reordered copy of every weight to both
    # sessions (prune's peak memory: 3.5 -> 2.3 GiB for 0.56 GiB of weights), and unfused kernels are
    # the plainer reference; both models run at the same level, which is all exactness needs
    ref_sess = make_session(ref, optimize=False, outputs=names, arrays=graph.consts)
    pruned_sess = make_session(pruned, optimize=False, outputs=names)
    worst_abs = worst_rel = 0.0
    runs = []
    for feed in feeds:
        want = dict(zip(names, run_model(ref_sess, feed, names)))
        got = dict(zip(names, run_model(pruned_sess, feed, names)))
        runs.append((feed, want, got))
        for name in names:
            w, o = checked.get(name, _whole)(np.asarray(want[name])), np.asarray(got[name])
            if w.shape != o.shape:
                if _unlabelled_intermediate(name, checked):
                    continue
                raise VerificationError(f"tensor '{name}' has shape {o.shape}, the masked original {w.shape}")
            failure = _structural_failure(w, o)
            if failure:
                return VerifyResult(worst_abs, worst_rel, rtol, points, False, reason=f"{failure} ('{name}')")
            if not np.issubdtype(w.dtype, np.floating):
                continue
            diff, scale = _diff(w, o, name in checked)
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
    eps = 5e-3 if _any_half(runs) else rtol
    if worst_rel <= eps:
        return VerifyResult(worst_abs, worst_rel, eps, points, True)
    result = VerifyResult(worst_abs, worst_rel, eps, points, False, "float64")
    return _float64_verdict(ref, pruned, runs, checked, names, result, graph.consts)


def _whole(a: np.ndarray) -> np.ndarray:
    return a


def _unlabelled_intermediate(name: str, checked: dict) -> bool:
    """A rewritten node's output that carries no channel labels but changed size (an Expand to a pruned
    shape): which positions survive is unknown, so it is not compared; its consumers are."""
    return checked.get(name) is _whole


def _checked_tensors(
    graph: Graph, analysis: Analysis, plan: PruningPlan, ref: onnx.ModelProto, pruned: onnx.ModelProto
) -> dict:
    """Float tensors produced by rewritten nodes, each with the selection of the masked original's
    positions the pruned tensor must equal (the kept channels along every labelled axis)."""
    keep = Keep(analysis, plan)
    rewritten = {act.user or act.node for act in analysis.actions}
    produced = {o for n in pruned.graph.node for o in n.output}
    types = elem_types(ref)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    out = {}
    for node in graph.model.graph.node:
        if node.name not in rewritten:
            continue
        for name in node.output:
            if name and name in produced and types.get(name) in floats:
                out[name] = _selector(keep, analysis.expected.get(name))
    return out


def _selector(keep: Keep, labels: np.ndarray | None):
    if labels is None:
        return _whole
    picks = [(ax, keep.along(labels, ax)) for ax in range(labels.ndim) if labels.shape[ax] > 1]

    def select(a: np.ndarray) -> np.ndarray:
        for ax, idx in picks:
            a = np.take(a, idx, axis=ax)
        return a

    return select


def _random_feed(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """A dynamic batch is run at 2, which also checks batch mixing."""
    return random_feeds(graph.model, with_batch(graph.model, dict(graph.input_shapes), 2), seed=seed)


def _structural_failure(want: np.ndarray, got: np.ndarray) -> str:
    """A difference no rounding explains: integer outputs that differ, inf/nan on one side only."""
    if not np.issubdtype(want.dtype, np.floating):
        return "" if np.array_equal(want, got) else "an integer output differs"
    wf, of = want.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(wf) & np.isfinite(of)
    same_special = ~finite & ((wf == of) | (np.isnan(wf) & np.isnan(of)))
    return "" if np.all(finite | same_special) else "inf/nan on one side only"


def _diff(want, got, own_scale: bool = False) -> tuple[float, float]:
    """Max |difference| over finite positions and the tensor's scale: max |value|, at least 1 for graph
    outputs (as before), at least 1e-6 for intermediate tensors, whose size is their own business."""
    wf, of = np.asarray(want, np.float64), np.asarray(got, np.float64)
    finite = np.isfinite(wf) & np.isfinite(of)
    if not finite.any():
        return 0.0, 1.0
    floor = INTERMEDIATE_FLOOR if own_scale else 1.0
    return float(np.max(np.abs(wf[finite] - of[finite]))), max(floor, float(np.max(np.abs(wf[finite]))))


def _any_half(runs) -> bool:
    return any(np.asarray(w).dtype == np.float16 for _, want, _ in runs for w in want.values())


def _float64_verdict(
    ref: onnx.ModelProto,
    pruned: onnx.ModelProto,
    runs,
    checked: dict,
    names: list[str],
    res: VerifyResult,
    consts: dict[str, np.ndarray],
) -> VerifyResult:
    """Decide an inconclusive float32 comparison in float64 (torch evaluation of both graphs)."""
    try:
        import torch

        ref64 = TorchGraph(ref, _initializers(ref, consts), float64=True)
        pruned64 = TorchGraph(pruned, _initializers(pruned), float64=True)
    except ImportError:
        res.reason = "the float64 check that decides such cases needs torch: pip install 'onnxprune[torch]'"
        return res
    except OnnxPruneError as e:
        res.reason = f"the float64 check that decides such cases cannot run: {e}"
        return res
    rel64 = noise = err = 0.0
    outputs = [o.name for o in ref.graph.output]
    with torch.no_grad():
        for feed, want, got in runs:
            r_out, r_kept = ref64.run(feed, keep=set(names))
            p_out, p_kept = pruned64.run(feed, keep=set(names))
            r64 = {**r_kept, **dict(zip(outputs, r_out))}
            p64 = {**p_kept, **dict(zip(outputs, p_out))}
            for name in names:
                if not np.issubdtype(np.asarray(want[name]).dtype, np.floating):
                    continue
                pick = checked.get(name, _whole)
                a, b = pick(r64[name].numpy()), p64[name].numpy()
                if a.shape != b.shape and _unlabelled_intermediate(name, checked):
                    continue
                own = name in checked
                d, scale = _diff(a, b, own)
                rel64 = max(rel64, d / scale)
                noise = max(noise, _diff(a, pick(np.asarray(want[name])), own)[0] / scale)
                err = max(err, _diff(b, got[name], own)[0] / scale)
    res.float64_rel_diff, res.float64_tolerance = rel64, RTOL64
    res.noise_floor, res.pruned_float32_error = noise, err
    res.passed = rel64 <= RTOL64 and err <= max(res.tolerance, NOISE_FACTOR * noise)
    return res


def _initializers(model: onnx.ModelProto, held: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every initializer's value; in-memory stubs take theirs from ``held``."""
    return {
        t.name: held[t.name] if held is not None and is_in_memory_stub(t) else numpy_helper.to_array(t)
        for t in model.graph.initializer
    }
