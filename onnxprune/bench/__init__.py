"""Latency of models side by side on the runtime that will serve them (onnxruntime CPU, TensorRT)."""

from .runner import BACKENDS, BenchReport, ModelTiming, bench_shapes, benchmark, channel_block
from .stats import speedup_ci, summarize

__all__ = [
    "BACKENDS",
    "BenchReport",
    "ModelTiming",
    "benchmark",
    "bench_shapes",
    "channel_block",
    "speedup_ci",
    "summarize",
]
