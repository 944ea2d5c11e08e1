"""Thin onnxruntime wrapper so every stage creates sessions the same way (CPU, quiet, deterministic)."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .errors import OnnxPruneError
from .protosize import too_large


def make_session(model: onnx.ModelProto | bytes, optimize: bool | str = True, threads: int = 0):
    """``optimize``: True (all), False (none) or "extended" (everything but the layout transformers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # ORT prints failures to stderr itself; ours is the one-line message
    if threads:
        so.intra_op_num_threads = threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimize == "extended":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        if not isinstance(model, bytes) and too_large(model):
            return _session_from_files(model, so)
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except OnnxPruneError:
        raise
    except Exception as e:
        raise OnnxPruneError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from None


def _session_from_files(model: onnx.ModelProto, so):
    """Over protobuf's 2 GB limit a model cannot be passed as bytes: write it with external data to a
    temporary folder, load from there, delete the folder (the session keeps its own copy)."""
    import shutil
    import tempfile

    import onnxruntime as ort

    tmp = tempfile.mkdtemp(prefix="onnxprune-ort-")
    try:
        path = os.path.join(tmp, "model.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(
            copy,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.data",
            size_threshold=1024,
        )
        del copy
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except OSError as e:
        raise OnnxPruneError(f"cannot write a temporary copy of the model for onnxruntime: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    return make_session(m, optimize=intermediate_optimization())


def intermediate_optimization() -> bool | str:
    """The optimisation level for sessions whose graph outputs include intermediate tensors.

    onnxruntime 1.31's NCHWc layout transformer (ORT_ENABLE_ALL) dropped a Conv output that is also a
    graph output when a residual Add follows ("Failed to find node output ... producing output"), seen on
    pruned resnet20; there such sessions skip the layout pass (it only changes speed). 1.32 passes the
    same tests with it, and the layout pass makes recovery's passes a third faster."""
    import onnxruntime as ort

    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    return True if (major, minor) >= (1, 32) else "extended"
