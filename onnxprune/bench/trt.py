"""TensorRT backend, written against the TensorRT Python API (10.x and 11.x) and cuda-python.

An engine is built from the ONNX file the way ``trtexec --onnx --shapes`` does (one optimisation profile
pinned to the benchmark shapes, FP32 or FP16), cached on disk with TensorRT's timing cache, and timed
as GPU compute between two CUDA events after warm-up, which is what trtexec reports as "GPU Compute Time".
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from ..errors import OnnxPruneError
from ..load import external_files

log = logging.getLogger(__name__)
INSTALL = "pip install 'onnxprune[tensorrt]' on a machine with an NVIDIA GPU"


def _modules():
    try:
        import tensorrt as trt
    except ImportError:
        raise OnnxPruneError(f"backend trt: TensorRT is not installed ({INSTALL})") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise OnnxPruneError(f"backend trt: cuda-python is not installed ({INSTALL})") from None
    err, n = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or n < 1:
        raise OnnxPruneError("backend trt: no NVIDIA GPU is visible (cudaGetDeviceCount found none)")
    return trt, cudart


def available() -> str | None:
    """None when the backend can run here, else the one-line reason."""
    try:
        _modules()
    except OnnxPruneError as e:
        return str(e)
    return None


def _ck(ret, what: str):
    """cuda-python returns (error, value...) tuples; turn a non-zero error into a one-line message."""
    ret = ret if isinstance(ret, tuple) else (ret,)
    if int(ret[0]) != 0:
        raise OnnxPruneError(f"backend trt: CUDA call {what} failed ({ret[0]})")
    return ret[1] if len(ret) > 1 else None


def _gpu_name(cudart) -> str:
    prop = _ck(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    return prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)


def _weak_fp16(trt) -> bool:
    """TensorRT 10 takes FP16 as a builder flag; 11 removed it (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16")


def _model_digest(path: str) -> str:
    """Content hash of the ONNX file plus size/mtime of each external data file it names."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    for f in external_files(path):
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _fp16_model_bytes(path: str) -> bytes:
    """For TensorRT 11 (strongly typed): the model converted to FP16 with FP32 inputs/outputs.

    onnxruntime ships this converter (onnxruntime.transformers.float16), so no extra dependency.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(path), keep_io_types=True).SerializeToString()


def build_engine(path: str, shapes: dict[str, tuple[int, ...]], fp16: bool, cache_dir: str) -> bytes:
    trt, cudart = _modules()
    os.makedirs(cache_dir, exist_ok=True)
    gpu = _gpu_name(cudart)
    key = hashlib.sha256(
        repr((_model_digest(path), sorted(shapes.items()), fp16, trt.__version__, gpu)).encode()
    ).hexdigest()[:32]
    engine_path = os.path.join(cache_dir, f"{key}.engine")
    if os.path.exists(engine_path):
        log.info("reusing engine %s", engine_path)
        with open(engine_path, "rb") as f:
            return f.read()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if fp16 and not _weak_fp16(trt):
        ok = parser.parse(_fp16_model_bytes(path), path)
    else:
        ok = parser.parse_from_file(os.path.abspath(path))
    if not ok:
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OnnxPruneError(f"backend trt: TensorRT cannot parse {path}: {errs[:300]}")
    config = builder.create_builder_config()
    if fp16 and _weak_fp16(trt):
        config.set_flag(trt.BuilderFlag.FP16)
    timing_path = os.path.join(cache_dir, "timing.cache")
    blob = open(timing_path, "rb").read() if os.path.exists(timing_path) else b""
    config.set_timing_cache(config.create_timing_cache(blob), False)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        if any(d < 0 for d in inp.shape):
            if inp.name not in shapes:
                raise OnnxPruneError(f"backend trt: no shape for dynamic input '{inp.name}'")
            s = tuple(shapes[inp.name])
            profile.set_shape(inp.name, s, s, s)
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OnnxPruneError(f"backend trt: TensorRT failed to build an engine for {path} (see its log above)")
    engine = bytes(serialized)
    _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    _atomic_write(engine_path, engine)
    return engine


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def prepare(path: str, feeds: dict[str, np.ndarray], fp16: bool = False, cache_dir: str | None = None, **_):
    """A callable returning the GPU compute time (seconds, CUDA events) of one inference, and a closer."""
    trt, cudart = _modules()
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "onnxprune", "trt")
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(build_engine(path, shapes, fp16, cache_dir))
    if engine is None:
        raise OnnxPruneError(f"backend trt: cannot deserialize the engine built for {path}")
    context = engine.create_execution_context()
    stream = _ck(cudart.cudaStreamCreate(), "cudaStreamCreate")
    buffers = []
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, shapes[name])
    for name in names:
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        nbytes = max(int(np.prod(tuple(context.get_tensor_shape(name)))) * dtype.itemsize, 1)
        ptr = _ck(cudart.cudaMalloc(nbytes), "cudaMalloc")
        buffers.append(ptr)
        context.set_tensor_address(name, int(ptr))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            host = np.ascontiguousarray(feeds[name].astype(dtype))
            _ck(
                cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice),
                "cudaMemcpy",
            )
    start = _ck(cudart.cudaEventCreate(), "cudaEventCreate")
    end = _ck(cudart.cudaEventCreate(), "cudaEventCreate")

    def run_once() -> float:
        _ck(cudart.cudaEventRecord(start, stream), "cudaEventRecord")
        if not context.execute_async_v3(int(stream)):
            raise OnnxPruneError(f"backend trt: execution failed for {path}")
        _ck(cudart.cudaEventRecord(end, stream), "cudaEventRecord")
        _ck(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(_ck(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime")) / 1e3

    def close() -> None:
        for ptr in buffers:
            cudart.cudaFree(ptr)
        cudart.cudaEventDestroy(start)
        cudart.cudaEventDestroy(end)
        cudart.cudaStreamDestroy(stream)

    run_once.keep_alive = (runtime, engine, context)  # the context must not outlive its engine
    run_once()
    return run_once, close


def describe() -> str:
    trt, cudart = _modules()
    return f"TensorRT {trt.__version__} on {_gpu_name(cudart)}"
