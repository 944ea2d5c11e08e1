"""Load an ONNX model into a normalised, shape-annotated working copy.

Exporters disagree on how constants appear (initializers, ``Constant`` nodes, ``Identity`` of an
initializer that the legacy exporter uses to share deduplicated weights). Every later stage wants one
question answered -- "is this input a constant, and what is it?" -- so we normalise once here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError
from .fold import fold_static_shapes
from .protoread import read_without_payloads
from .protosize import skeleton
from .runtime import (
    IN_MEMORY_MIN_BYTES,
    in_memory_stub,
    is_in_memory_stub,
    make_session,
    materialise,
    run_model,
    session_with_outputs,
)

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 11, 23


@dataclass
class Graph:
    """A normalised model plus the lookups every stage needs; the ModelProto is the working copy, its
    large weights held once, as arrays in ``consts`` (``materialised()`` puts them back in)."""

    model: onnx.ModelProto
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    input_shapes: dict[str, tuple[int, ...]]
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return imp.version
        return 0

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    def materialised(self) -> onnx.ModelProto:
        """The working model with its weights in it (``model`` carries in-memory stubs for the large
        ones, whose values are ``consts``): what to save or hand to code that reads initializers."""
        return materialise(self.model, self.consts)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse trtexec/polygraphy-style ``name:1x3x224x224`` specs."""
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 for d in out[name]):
                raise ValueError
        except ValueError:
            raise OnnxPruneError(f"bad --input-shape '{spec}': expected NAME:DxDxD with positive integers") from None
    return out


def read_model(path_or_model: str | os.PathLike | onnx.ModelProto, external: bool = True) -> onnx.ModelProto:
    """Read a model file with one-line errors for every way it can be broken. ``external=False`` leaves
    external data in its file (checked to exist), for ``read_arrays`` to read into arrays."""
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = os.fspath(path_or_model)
    if not os.path.exists(path):
        raise OnnxPruneError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise OnnxPruneError(f"model path is a folder, not an ONNX file: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise OnnxPruneError(f"not a readable ONNX model: {path} ({type(e).__name__})") from None
    _check_read(model, path)
    if not external:
        return model
    try:
        onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as e:
        raise OnnxPruneError(f"could not read external data of {path}: {e}") from None
    return model


def _check_read(model: onnx.ModelProto, path: str) -> None:
    if not model.graph.node and not model.graph.output:
        raise OnnxPruneError(f"not an ONNX model (empty graph): {path}")
    base = os.path.dirname(os.path.abspath(path))
    for t in _external_tensors(model):
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None or not os.path.exists(os.path.join(base, loc)):
            raise OnnxPruneError(f"external data file '{loc}' for tensor '{t.name}' not found next to {path}")


def read_arrays(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model file as (ModelProto with in-memory stubs for its large weights, those weights as arrays).

    External data goes straight from its file into the arrays. Embedded weights are parsed by protobuf
    first; clearing them from the parsed message does not return its memory (upb keeps a message's
    allocations in one arena until the message itself is freed), so the stubbed model is copied into a
    fresh message and the parsed one dropped here: the weights are then held once (vgg16_bn, 0.55 GB:
    `analyze` 1.23 -> 0.83 GB peak RSS)."""
    path = os.fspath(path)
    fast = read_without_payloads(path) if os.path.isfile(path) else None
    if fast is not None:
        parsed, consts = fast
        _check_read(parsed, path)
    else:
        parsed, consts = read_model(path, external=False), {}
    consts.update(_arrays(parsed, base_dir=os.path.dirname(os.path.abspath(path))))
    model = onnx.ModelProto()
    model.CopyFrom(parsed)
    del parsed
    return model, consts


def external_files(path: str) -> list[str]:
    """Paths of the external data files a model file names (they travel with it)."""
    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    locs = {e.value for t in _external_tensors(model) for e in t.external_data if e.key == "location"}
    return [os.path.join(folder, loc) for loc in sorted(locs)]


def _external_tensors(model: onnx.ModelProto):
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL and not is_in_memory_stub(t):
            yield t
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL:
                yield a.t


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None  # sparse_value / strings: leave the node alone


def normalise(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Turn Constant nodes into initializers and bypass Identity-of-constant. ``copy=False`` edits
    ``model`` itself: for a model read from a file here, a copy would hold every weight twice."""
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    g = m.graph
    init_names = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    keep = []
    for node in g.node:
        ins = [alias.get(i, i) for i in node.input]
        del node.input[:]
        node.input.extend(ins)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            val = _constant_node_value(node)
            if val is not None:
                g.initializer.append(numpy_helper.from_array(val, node.output[0]))
                init_names.add(node.output[0])
                continue
        if node.op_type == "Identity" and node.input[0] in init_names and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    seen: set[str] = set()
    for k, node in enumerate(keep):
        _rename_in_subgraphs(node, alias)  # subgraphs may read outer-scope names
        if not node.name or node.name in seen:  # plans and reports name nodes: make names unique
            node.name = f"{node.name or node.op_type}__{k}"
        seen.add(node.name)
    del g.node[:]
    g.node.extend(keep)
    return m


def _rename_in_subgraphs(node: onnx.NodeProto, alias: dict[str, str]) -> None:
    if not alias:
        return
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in subs:
            for n in sg.node:
                ins = [alias.get(i, i) for i in n.input]
                del n.input[:]
                n.input.extend(ins)
                _rename_in_subgraphs(n, alias)


def _check_opset(model: onnx.ModelProto) -> None:
    ver = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    if ver is None:
        raise OnnxPruneError("model has no default-domain opset import")
    if not MIN_OPSET <= ver <= MAX_OPSET:
        raise OnnxPruneError(f"unsupported opset {ver}: onnxprune supports opsets {MIN_OPSET}-{MAX_OPSET}")


def resolve_input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every graph input: overrides first, a dynamic leading (batch) dim becomes 1."""
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    unknown = set(overrides) - {i.name for i in real}
    if unknown:
        raise OnnxPruneError(
            f"--input-shape names unknown input(s) {sorted(unknown)}; inputs are {[i.name for i in real]}"
        )
    shapes = {}
    for inp in real:
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            if inp.name in overrides:
                shapes[inp.name] = overrides[inp.name]
                continue
            raise OnnxPruneError(f"input '{inp.name}' has no shape; pass --input-shape {inp.name}:DxDx...")
        dims = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
        if inp.name in overrides:
            o = overrides[inp.name]
            if len(o) != len(dims) or any(d is not None and d != v for d, v in zip(dims, o)):
                raise OnnxPruneError(
                    f"--input-shape {inp.name}:{'x'.join(map(str, o))} does not fit the model's "
                    f"shape {['?' if d is None else d for d in dims]}"
                )
            shapes[inp.name] = o
            continue
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise OnnxPruneError(
                f"input '{inp.name}' has dynamic dims {['?' if d is None else d for d in dims]}; "
                f"pass --input-shape {inp.name}:" + "x".join("D" if d is None else str(d) for d in dims)
            )
        shapes[inp.name] = tuple(dims)
    return shapes


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor (inferred on a weight-free copy: cheap on any model size)."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in model.graph.initializer})
    return out


def infer_shapes(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]],
    consts: dict[str, np.ndarray] | None = None,
    runtime: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor for the given input shapes.

    onnx shape inference (with data propagation) covers almost everything; whatever it leaves unknown
    (custom-shaped ops, Shape arithmetic it cannot fold) we read off a single onnxruntime run
    (``runtime=False``: left out instead).
    """
    light = skeleton(model)
    for inp in light.graph.input:
        if inp.name in input_shapes:
            tt = inp.type.tensor_type
            tt.shape.Clear()
            for d in input_shapes[inp.name]:
                tt.shape.dim.add().dim_value = d
    del light.graph.value_info[:]
    for o in light.graph.output:  # declared output shapes can be wrong (onnxruntime ignores them): infer them
        o.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as e:
        raise OnnxPruneError(f"shape inference failed: {str(e).splitlines()[0][:300]}") from None
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
    for t in model.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing and runtime:
        shapes.update(_shapes_from_runtime(model, input_shapes, missing, consts))
    return shapes


def _check_runs(model: onnx.ModelProto, input_shapes, consts: dict[str, np.ndarray] | None = None) -> None:
    """The model must run in onnxruntime: the checker and onnx's shape inference let through graphs no
    runtime accepts (a Conv bias of the wrong length), and the channel rules assume a well-formed graph.

    A runtime without a custom-domain op is not the model's fault (its groups freeze; pruning then stops
    at verification); with integer inputs random values may be out of range, so a failed run only warns.
    """

    try:
        sess = make_session(model, optimize=False, arrays=consts)  # the arrays as loaded: no second copy
    except Exception as e:
        msg = " ".join(str(e).split())
        custom = any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
        if custom and any(
            k in msg
            for k in (
                "Could not find an implementation",
                "not a registered function/op",
                "No opset import for domain",
                "NOT_IMPLEMENTED",
            )
        ):
            return
        raise OnnxPruneError(f"invalid ONNX model: onnxruntime refuses it: {msg[:300]}") from None
    feeds = random_feeds(model, input_shapes, seed=0)
    try:
        sess.run(None, feeds)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        if any(not np.issubdtype(v.dtype, np.floating) for v in feeds.values()):
            log.warning("could not run the model on random inputs (%s); continuing", msg)
            return
        raise OnnxPruneError(f"invalid ONNX model: onnxruntime cannot run it: {msg}") from None


def _shapes_from_runtime(model, input_shapes, names, consts=None) -> dict[str, tuple[int, ...]]:

    try:
        sess = session_with_outputs(model, names, consts)
        outs = run_model(sess, random_feeds(model, input_shapes, seed=0), list(names))
    except OnnxPruneError:
        return {}  # the rules then freeze every tensor whose shape stays unknown, and say so
    return {n: tuple(v.shape) for n, v in zip(names, outs) if hasattr(v, "shape")}


def batch_axes(model: onnx.ModelProto, names) -> dict[str, list[int]]:
    """Per input in ``names``, the axes that carry the batch: every dynamic dim named as some input's
    dynamic first dim is, wherever it stands (a recurrent state (2, batch, 128) beside an input (batch,
    samples)), and a dynamic first dim without a name. None when every input's first dim is static."""
    inputs = [i for i in model.graph.input if i.name in names]
    dims = {i.name: list(i.type.tensor_type.shape.dim) for i in inputs}
    batch = {d[0].dim_param for d in dims.values() if d and not d[0].HasField("dim_value") and d[0].dim_param}
    return {
        name: [
            k
            for k, d in enumerate(ds)
            if not d.HasField("dim_value") and (d.dim_param in batch if d.dim_param else k == 0)
        ]
        for name, ds in dims.items()
    }


def with_batch(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], b: int) -> dict[str, tuple[int, ...]]:
    """``input_shapes`` with ``b`` on every batch axis (``batch_axes``); scalars and static dims unchanged."""
    axes = batch_axes(model, input_shapes)
    return {
        name: tuple(b if k in axes.get(name, ()) else v for k, v in enumerate(shape))
        for name, shape in input_shapes.items()
    }


def random_feeds(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs of the right dtype: floats ~N(0,1), ints small, bools random."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        if inp.name not in input_shapes:
            continue
        dt = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = input_shapes[inp.name]
        if np.issubdtype(dt, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(dt)
    return feeds


def build_graph(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    owned: bool = False,
    arrays: dict[str, np.ndarray] | None = None,
) -> Graph:
    """Normalise, check and shape-annotate a model: the single entry point of every pipeline.
    ``owned``: ``model`` is this call's to edit (read from a file for it), so it is normalised in place
    instead of copied; a caller's ModelProto is never modified. ``arrays``: the values of the model's
    in-memory stubs (``read_arrays``).

    Every large weight ends up held once, as an array in ``consts``; the working ModelProto carries an
    in-memory stub in its place (``runtime.in_memory_stub``), so sessions take the arrays as they are
    and ``materialise`` gives the self-contained model back."""
    _check_opset(model)
    _check_acyclic(model, {t.name for t in model.graph.initializer})  # before the checker: its message is vaguer
    consts = dict(arrays or {})
    if any(is_in_memory_stub(t) and t.name not in consts for t in model.graph.initializer):
        raise OnnxPruneError(
            "model holds in-memory weight stubs of a loaded graph: pass the Graph itself or graph.materialised()"
        )
    try:
        # on the weight-free copy: the checker serialises what it checks (0.9 s of vgg16_bn's 2.6 s load);
        # the weights' payloads are checked against their shapes where they become arrays (_arrays)
        onnx.checker.check_model(skeleton(model), full_check=False)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise OnnxPruneError(f"invalid ONNX model: {msg[0][:300] if msg else type(e).__name__}") from None
    norm = normalise(model, copy=not owned)
    del model  # owned: the same object; else the caller keeps it
    consts.update(_arrays(norm, skip=consts))  # Constant nodes normalise turned into initializers
    fold_static_shapes(norm)
    consts.update(_arrays(norm, skip=consts))  # the constants folding added
    shapes_in = resolve_input_shapes(norm, input_shapes or {})
    shapes = infer_shapes(norm, shapes_in, consts)
    g = Graph(model=norm, consts=consts, shapes=shapes, input_shapes=shapes_in)
    for node in norm.graph.node:
        for o in node.output:
            if o:
                g.producer[o] = node
        for k, i in enumerate(node.input):
            if i:
                g.consumers.setdefault(i, []).append((node, k))
    _check_finite(g)
    _check_runs(norm, shapes_in, consts)
    return g


def _arrays(model: onnx.ModelProto, skip=(), base_dir: str = "") -> dict[str, np.ndarray]:
    """Every initializer as an array, with a one-line error for a payload that does not match the
    tensor's shape and type (the checker runs on a copy without the large payloads). Each large one is
    replaced in ``model`` by an in-memory stub as soon as its array exists, so the peak holds one
    tensor twice, not the model; external data is read from its file (under ``base_dir``) directly."""
    out = {}
    for t in model.graph.initializer:
        if t.name in skip or is_in_memory_stub(t):
            continue
        try:
            arr = numpy_helper.to_array(t, base_dir)  # a view of its own bytes, not of the protobuf's
        except Exception as e:
            raise OnnxPruneError(
                f"invalid ONNX model: initializer '{t.name}' does not hold the data its shape {list(t.dims)} "
                f"declares ({' '.join(str(e).split())[:200]})"
            ) from None
        out[t.name] = arr
        if arr.nbytes >= IN_MEMORY_MIN_BYTES and t.data_type != onnx.TensorProto.STRING:
            t.CopyFrom(in_memory_stub(t))
        elif t.data_location == onnx.TensorProto.EXTERNAL:  # small: in the graph, where shape inference reads it
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


WEIGHT_OPS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
}


def _check_finite(g: Graph) -> None:
    """NaN in any constant, or Inf in a layer's parameters, makes every score and the exactness check
    meaningless (NaN != NaN); -inf stays legal elsewhere (attention masks)."""
    params = {i for n in g.model.graph.node if n.op_type in WEIGHT_OPS for i in n.input[1:]}
    for name, arr in g.consts.items():
        if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
            continue
        bad = int(np.count_nonzero(np.isnan(arr)))
        if name in params:
            bad += int(np.count_nonzero(np.isinf(arr)))
        if bad:
            raise OnnxPruneError(
                f"constant '{name}' has {bad} NaN/Inf value(s); fix the export (NaN weights "
                f"cannot be scored, pruned or verified)"
            )


def _check_acyclic(model: onnx.ModelProto, consts) -> None:
    known = set(consts) | {i.name for i in model.graph.input} | {""}
    for node in model.graph.node:
        for i in node.input:
            if i not in known:
                raise OnnxPruneError(
                    f"graph is not topologically sorted or has a dangling input: node "
                    f"'{node.name or node.op_type}' reads '{i}' before it is produced"
                )
        known.update(node.output)
