"""Thin onnxruntime wrapper so every stage creates sessions the same way (CPU, quiet, deterministic)."""
from __future__ import annotations

import numpy as np
import onnx

from .errors import OnnxPruneError


def make_session(model: onnx.ModelProto | bytes, optimize: bool | str = True, threads: int = 0):
    """``optimize``: True (all), False (none) or "extended" (everything but the layout transformers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimize == "extended":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from None


def run_model(model, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    sess = model if hasattr(model, "run") else make_session(model)
    try:
        return sess.run(outputs, feeds)
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime failed to run the model: {str(e).splitlines()[0][:300]}") from None


def session_with_outputs(model: onnx.ModelProto, names):
    """A session that also returns the intermediate tensors ``names`` (for activation statistics)."""
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    # onnxruntime 1.31's NCHWc layout transformer (ORT_ENABLE_ALL) drops a Conv output that is also a graph
    # output when a residual Add follows ("Failed to find node output ... producing output"), seen on
    # pruned resnet20; the layout pass only changes speed, so intermediate reads skip it
    return make_session(m, optimize="extended")
