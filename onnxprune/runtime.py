"""Thin onnxruntime wrapper so every stage creates sessions the same way (CPU, quiet, deterministic)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError
from .protosize import add_tensor, as_inputs, with_initializers


def make_session(
    model: onnx.ModelProto | bytes,
    optimize: bool | str = True,
    threads: int = 0,
    outputs=(),
    arrays: Mapping[str, np.ndarray] | None = None,
    shared_arena: bool = False,
):
    """``optimize``: True (all), False (none) or "extended" (everything but the layout transformers);
    ``outputs``: intermediate tensors the session also returns; ``arrays``: values of initializers
    already held as arrays (a loaded graph's ``consts``), used as they are instead of converted again
    (the model may then carry them as in-memory stubs, see ``IN_MEMORY``); ``shared_arena``: the session
    takes its working memory from one process-wide arena (``_register_shared_arena``), for the many
    short-lived sessions of recovery's propagation.

    Without optimisation (the run check, verification) the large weights become graph inputs fed on
    every run (``WeightsFed``): onnxruntime copies initializers it is given, even through
    ``add_external_initializers``, but reads a CPU input in place (measured: 0.56 GiB of weights, +0.57
    GiB of peak memory for the session as initializers, +0.01 as inputs). Nothing is lost: with no
    graph optimisation no rewrite needs them constant; only kernels' weight pre-packing, a speed-up."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # ORT prints failures to stderr itself; ours is the one-line message
    if threads:
        so.intra_op_num_threads = threads
    if shared_arena:
        _register_shared_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimize == "extended":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        if isinstance(model, bytes):
            return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        light, names, values = _without_weights(model, outputs, arrays or {})
        if names and not optimize:
            fed = set(names)
            stubs = [t for t in light.graph.initializer if t.name in fed]
            return WeightsFed(
                ort.InferenceSession(
                    as_inputs(light, stubs).SerializeToString(), so, providers=["CPUExecutionProvider"]
                ),
                dict(zip(names, values)),
            )
        if names:
            so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(a) for a in values])
        return ort.InferenceSession(light.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except OnnxPruneError:
        raise
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from None


_SHARED_ARENA: list[bool] = []


def _register_shared_arena() -> None:
    """Registers, once per process, a CPU arena allocator in onnxruntime's environment.

    Why: every session has its own arena, freed with it; recovery's propagation builds one session per
    segment (resnet50: 53 per propagation), each of which took fresh pages from the kernel for its
    working buffers (the NCHWc copies of its inputs and outputs). Sharing one arena, which keeps its
    memory between sessions, measured 7.5 -> 5.3 s for resnet50's 53 segments over 256 images (system
    time 8.6 -> 5.1 s). The arena grows to the largest working set asked of it (extended by what is
    asked, not to the next power of two); ``release_shared_arena`` hands its free pages back."""
    if _SHARED_ARENA:
        return
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
    except Exception as e:  # already registered by the host application: use it as it is
        if "already" not in str(e).lower():
            raise
    _SHARED_ARENA.append(True)


def release_shared_arena() -> None:
    """Hands the shared arena's free pages back to the system. onnxruntime keeps them otherwise until
    the process ends (measured on the recogniser's prune with reconstruction: 1.35 GB resident after
    recovery with the arena, 0.61 GB without). The shrink is a run option, so it takes one run of a
    one-node session on the shared arena."""
    if not _SHARED_ARENA:
        return
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "release", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    make_session(model, shared_arena=True).run(None, {"x": np.zeros(1, np.float32)}, opts)


class WeightsFed:
    """An onnxruntime session whose large weights are inputs, fed with every run (see ``make_session``);
    callers see the model's own inputs only."""

    def __init__(self, session, weights: dict[str, np.ndarray]):
        self.session, self.weights = session, weights

    def run(self, outputs, feeds, run_options=None):
        return self.session.run(outputs, {**feeds, **self.weights}, run_options)

    def get_inputs(self):
        return [i for i in self.session.get_inputs() if i.name not in self.weights]

    def get_outputs(self):
        return self.session.get_outputs()


IN_MEMORY_MIN_BYTES = 1 << 16
IN_MEMORY = "onnxprune-in-memory"  # external-data location of a stub whose values are held as an array


def in_memory_stub(t: onnx.TensorProto) -> onnx.TensorProto:
    """``t`` without its payload, marked as external data that the session takes from an array."""
    stub = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", IN_MEMORY  # replaced by the arrays, never read
    return stub


def is_in_memory_stub(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == IN_MEMORY for e in t.external_data
    )


def materialise(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose in-memory stubs hold their values again (for saving, or for a caller
    that wants a self-contained ModelProto); the model itself when it has none."""
    if not any(is_in_memory_stub(t) for t in model.graph.initializer):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)  # every field as it is; the stubs are small
    del out.graph.initializer[:]
    for t in model.graph.initializer:
        if is_in_memory_stub(t):
            add_tensor(out.graph.initializer, arrays[t.name], t.name)
        else:
            out.graph.initializer.append(t)
    return out


def _without_weights(
    model: onnx.ModelProto, outputs=(), arrays: Mapping[str, np.ndarray] | None = None
) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    """The model with every large initializer marked as external data (and ``outputs`` added to its
    outputs), and those initializers as arrays.

    onnxruntime takes the arrays through ``add_external_initializers``, so the weights are never
    serialised into a protobuf and parsed back: on vgg16_bn (528 MB) a session took 2.5 s from bytes and
    1.1 s this way, and no serialised copy of the whole model is held in memory. Models over protobuf's
    2 GB limit load the same way (what is serialised is the graph without its weights)."""
    g = model.graph
    arrays = arrays or {}
    small, big = [], []
    for t in g.initializer:
        if is_in_memory_stub(t):
            if t.name not in arrays:
                raise ValueError(f"initializer '{t.name}' is held in memory but no array was given for it")
            big.append(t)
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            small.append(t)
            continue
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        (big if int(np.prod(t.dims, dtype=np.int64)) * itemsize >= IN_MEMORY_MIN_BYTES else small).append(t)
    have = {o.name for o in g.output}
    extra = [helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(outputs) if n not in have]
    if not big and not extra:
        return model, [], []
    light = with_initializers(model, small + [in_memory_stub(t) for t in big], [*g.output, *extra])
    values = [np.ascontiguousarray(arrays[t.name]) if t.name in arrays else numpy_helper.to_array(t) for t in big]
    return light, [t.name for t in big], values


def run_model(model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    sess = model if hasattr(model, "run") else make_session(model)
    try:
        return sess.run(outputs, feeds)
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime failed to run the model: {str(e).splitlines()[0][:300]}") from None


def session_with_outputs(model: onnx.ModelProto, names, arrays: Mapping[str, np.ndarray] | None = None):
    """A session that also returns the intermediate tensors ``names`` (for activation statistics)."""
    return make_session(model, optimize=intermediate_optimization(), outputs=names, arrays=arrays)


#: runs of one session under way at the same time in recovery's propagation, each on its share of the
#: cores. Why: a segment is a few layers, so one run's fixed costs (feeding, the layout reorders at its
#: ends, waking the thread pool) weigh on every batch and leave cores idle; two runs at once, each on
#: half the cores, keep them busy. On 2 cores the propagation measured 3.6 -> 3.4 s on the PP-OCRv5
#: recogniser over 512 lines, 4.1/3.6 -> 3.4/3.4 s on resnet56 over 4,096 Fashion-MNIST images, 22.0 ->
#: 21.2 s on resnet50 over 512 images at 224x224. Not for the original pass, whose caller works on each
#: result: a run ahead keeps one more batch of outputs alive, and fresh pages cost more than the overlap
#: gained (the recogniser's original pass 4.8 -> 6.5-8.5 s: 37 outputs of up to 29 MB a batch).
CONCURRENT_BATCHES = 2


def threads_per_run(concurrent: int) -> int:
    """onnxruntime threads for each of ``concurrent`` runs at once (0: its default, all cores)."""
    if concurrent <= 1:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // concurrent)


def runs_in_order(sess, names, feeds: Iterable[dict], ahead: int) -> Iterator[list]:
    """``sess.run(names, f)`` for each ``f`` of ``feeds``, yielded in order, with up to ``ahead`` runs
    under way while the caller works on the last result (onnxruntime releases the GIL while it runs):
    at most ``ahead`` + 1 results alive at once."""
    if ahead <= 1:
        for f in feeds:
            yield sess.run(names, f)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(ahead) as pool:
        for f in feeds:
            pending.append(pool.submit(sess.run, names, f))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def intermediate_optimization() -> bool | str:
    """The optimisation level for sessions whose graph outputs include intermediate tensors.

    onnxruntime 1.31's NCHWc layout transformer (ORT_ENABLE_ALL) dropped a Conv output that is also a
    graph output when a residual Add follows ("Failed to find node output ... producing output"), seen on
    pruned resnet20; there such sessions skip the layout pass (it only changes speed). 1.32 passes the
    same tests with it, and the layout pass makes recovery's passes a third faster."""
    import onnxruntime as ort

    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    return True if (major, minor) >= (1, 32) else "extended"
