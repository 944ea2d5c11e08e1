"""onnxruntime CPU backend: one session per model, explicit threads, all graph optimisations on."""

from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np
import onnx

from ..errors import OnnxPruneError


def prepare(path: str, feeds: dict[str, np.ndarray], threads: int = 0, **_):
    """A callable that runs the model once on ``feeds`` and returns the wall time in seconds."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    # Worker threads of a session spin-wait after each run by default. Interleaved with other sessions,
    # those spinning workers steal the cores from the next model's run: measured here, resnet50 at 2
    # threads took 77 ms with spinning and 44 ms without, and the speedup of a pruned copy shrank and
    # turned bimodal. Spinning off measures each model as it would run alone.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:300]}") from None
    names = [o.name for o in sess.get_outputs()]

    def run_once() -> float:
        t = time.perf_counter()
        sess.run(names, feeds)
        return time.perf_counter() - t

    try:
        run_once()
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime failed to run {path}: {str(e).splitlines()[0][:300]}") from None
    return run_once, lambda: None


def available() -> str | None:
    """onnxruntime is a core dependency: always there."""
    return None


def describe() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider"


@functools.cache
def channel_block() -> int | None:
    """The channel block of onnxruntime's NCHWc convolution kernels on this CPU (8 with AVX2, 16 with
    AVX-512), or None where its layout transformer leaves convolutions alone.

    Why it matters: a convolution whose input channels are not a whole number of blocks stays out of the
    blocked layout (plain kernels, reorders around it), its output channels are padded up to a block,
    and a Concat of such tensors is reordered out and back in. Kept widths that are multiples of 8 but
    not of 16 cost the YOLOX character detector, at -30% MACs, 1.15x against 1.28x for multiples of 16
    on an AVX-512 machine (docs/RESULTS.md).
    Why a probe: onnxruntime does not expose MLAS's block size; it shows in the optimised graph, where a
    17-channel convolution's weight is padded up to whole blocks (24 for 8, 32 for 16)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((17, 16, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    optimised = optimised_graph(model)
    dims = {t.name: list(t.dims) for t in optimised.graph.initializer}
    for node in optimised.graph.node:
        if node.op_type == "Conv" and node.domain == "com.microsoft.nchwc" and node.input[1] in dims:
            padded = dims[node.input[1]][0]
            return padded - 16 if padded > 17 else None
    return None


def optimised_graph(model: onnx.ModelProto | str) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider runs for ``model`` (a ModelProto or a path) after all of its
    optimisations on this machine: its fusions and NCHWc layout nodes, which is what a pruned model's
    speed depends on beyond its MACs."""
    import onnxruntime as ort

    src = model if isinstance(model, str) else model.SerializeToString()
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.optimized_model_filepath = os.path.join(d, "optimised.onnx")
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)
