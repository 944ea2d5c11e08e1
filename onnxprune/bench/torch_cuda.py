"""torch CUDA backend: the ONNX graph evaluated by ``torch_eval`` on an NVIDIA GPU.

Where TensorRT cannot be installed this is the GPU evidence: the same convolutions through cuDNN (with
its autotuner on), FP32 or FP16 (autocast: convolutions and matmuls in half, reductions in float32),
channels-last memory where the model is convolutional, and optionally ``torch.compile`` with CUDA graphs,
which removes the per-op launch overhead of the interpreter (``--compile``). Each run is timed between
two CUDA events after warm-up, as trtexec reports "GPU Compute Time".
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import OnnxPruneError
from ..load import build_graph, read_model
from ..torch_eval import TorchGraph

INSTALL = "needs PyTorch with CUDA and an NVIDIA GPU (pip install 'onnxprune[torch]' there)"


def _torch():
    try:
        import torch
    except ImportError:
        raise OnnxPruneError(f"backend torch-cuda: torch is not installed ({INSTALL})") from None
    if not torch.cuda.is_available():
        raise OnnxPruneError(f"backend torch-cuda: no CUDA device is visible ({INSTALL})")
    return torch


def available() -> str | None:
    """None when the backend can run here, else the one-line reason."""
    try:
        _torch()
    except OnnxPruneError as e:
        return str(e)
    return None


def model_function(
    model: onnx.ModelProto, device: str, fp16: bool = False, channels_last: bool = True, compile: bool = False
):
    """``fn(*inputs) -> outputs`` over torch tensors on ``device``, and the input names in order.

    Split from ``prepare`` so its numerics can be checked against onnxruntime on any device."""
    import torch

    graph = build_graph(model, {})
    tg = TorchGraph(graph.model, graph.consts, device=device)
    if channels_last:
        for k, v in tg.consts.items():
            if v.dim() == 4 and v.is_floating_point():
                tg.consts[k] = v.contiguous(memory_format=torch.channels_last)
    names = [i.name for i in graph.model.graph.input if i.name not in graph.consts]

    def fn(*inputs):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=fp16):
            outs, _ = tg.run(dict(zip(names, inputs)))
        return outs

    if compile:
        fn = torch.compile(fn, mode="reduce-overhead", dynamic=False)
    return fn, names


def prepare(
    path: str,
    feeds: dict[str, np.ndarray],
    threads: int = 0,
    fp16: bool = False,
    compile: bool = False,
    channels_last: bool = True,
    **_,
):
    """A callable that runs the model once and returns its GPU time in seconds (CUDA events)."""
    torch = _torch()
    torch.backends.cudnn.benchmark = True  # cuDNN's autotuner picks the fastest kernel per shape
    fn, names = model_function(read_model(path), "cuda", fp16, channels_last, compile)
    inputs = []
    for n in names:
        t = torch.from_numpy(np.asarray(feeds[n])).to("cuda")
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        inputs.append(t)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    @torch.inference_mode()
    def run_once() -> float:
        start.record()
        fn(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    try:
        run_once()
    except OnnxPruneError:
        raise
    except Exception as e:
        raise OnnxPruneError(f"backend torch-cuda failed to run {path}: {str(e).splitlines()[0][:300]}") from None
    return run_once, torch.cuda.empty_cache


def describe() -> str:
    torch = _torch()
    return (
        f"torch {torch.__version__} CUDA {torch.version.cuda} cuDNN {torch.backends.cudnn.version()} on "
        f"{torch.cuda.get_device_name(0)}"
    )
