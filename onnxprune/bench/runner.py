"""Interleaved latency measurement: every model runs once per round, so machine noise hits them alike."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import OnnxPruneError
from ..load import random_feeds, resolve_input_shapes
from ..progress import bar as progress_bar
from . import ort_cpu, torch_cuda, trt
from .stats import speedup_ci, summarize

BACKENDS = {"ort-cpu": ort_cpu, "trt": trt, "torch-cuda": torch_cuda}


@dataclass
class ModelTiming:
    model: str
    input_shapes: dict
    stats: dict
    speedup: float | None = None  # median(first model) / median(this model)
    speedup_ci: tuple[float, float] | None = None
    seconds: list[float] = field(default_factory=list, repr=False)


@dataclass
class BenchReport:
    backend: str
    runtime: str
    machine: str
    settings: dict
    models: list[ModelTiming]

    def to_json(self, with_runs: bool = False) -> dict:
        out = asdict(self)
        for m in out["models"]:
            if not with_runs:
                m.pop("seconds")
        return out

    def table(self) -> str:
        rows = [("model", "median ms", "p90 ms", "p99 ms", "mean ms", "items/s", "speedup (95% CI)")]
        for m in self.models:
            s = m.stats
            sp = (
                "1.00 (reference)"
                if m.speedup_ci is None
                else f"{m.speedup:.2f} ({m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f})"
            )
            rows.append(
                (
                    os.path.basename(m.model),
                    f"{s['median_ms']:.3f}",
                    f"{s['p90_ms']:.3f}",
                    f"{s['p99_ms']:.3f}",
                    f"{s['mean_ms']:.3f}",
                    f"{s['throughput_per_s']:.1f}",
                    sp,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        st = self.settings
        lines.append(
            f"{self.runtime}; batch {st['batch']}, threads {st['threads'] or 'default'}, "
            f"{self.models[0].stats['runs']} interleaved runs each after {st['warmup']} warm-up; {self.machine}"
        )
        return "\n".join(lines)


def bench_shapes(path: str, batch: int | None, overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Benchmark shapes: overrides first, a dynamic leading dim becomes ``batch`` (default 1)."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise OnnxPruneError(
            f"cannot read {path}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        ) from None
    shapes = resolve_input_shapes(model, overrides)
    for inp in model.graph.input:
        if inp.name not in shapes or inp.name in overrides:
            continue
        dims = inp.type.tensor_type.shape.dim
        first_dynamic = bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)
        if batch is not None and first_dynamic:
            shapes[inp.name] = (batch,) + tuple(shapes[inp.name][1:])
        elif batch not in (None, shapes[inp.name][0] if shapes[inp.name] else None):
            raise OnnxPruneError(
                f"{os.path.basename(path)}: input '{inp.name}' has a fixed leading dim "
                f"{shapes[inp.name][0]}; --batch {batch} cannot apply"
            )
    return shapes


def channel_block(backend: str) -> int | None:
    """The channel multiple ``backend``'s kernels are built on, where the backend can tell without
    timing (onnxruntime CPU: its NCHWc block); None otherwise."""
    probe = getattr(BACKENDS.get(backend), "channel_block", None)
    return probe() if probe is not None else None


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}"


def benchmark(
    paths: list[str],
    backend: str = "ort-cpu",
    *,
    batch: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    threads: int = 0,
    warmup: int = 10,
    iters: int | None = 100,
    seconds: float | None = None,
    fp16: bool = False,
    compile: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> BenchReport:
    """Time ``paths`` interleaved on ``backend``; speedups are against ``paths[0]``.

    The starting model rotates every round so no model always runs right after another one's
    cache-warming or right after the Python loop's own overhead.
    """
    if backend not in BACKENDS:
        raise OnnxPruneError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if not paths:
        raise OnnxPruneError("no model to benchmark")
    if (
        (iters is None) == (seconds is None)
        or (iters is not None and iters < 2)
        or (seconds is not None and seconds <= 0)
    ):
        raise OnnxPruneError("give either --iters (at least 2) or --seconds (positive)")
    if warmup < 0 or threads < 0 or (batch is not None and batch < 1):
        raise OnnxPruneError("--warmup and --threads must be >= 0 and --batch >= 1")
    for p in paths:
        if not os.path.isfile(p):
            raise OnnxPruneError(f"model not found: {p}")
    mod = BACKENDS[backend]
    runtime = mod.describe()
    runners, closers, shapes_of = [], [], []
    try:
        for p in paths:
            shapes = bench_shapes(p, batch, input_shapes or {})
            feeds = random_feeds(onnx.load(p, load_external_data=False), shapes, seed)
            run_once, close = mod.prepare(p, feeds, threads=threads, fp16=fp16, compile=compile, cache_dir=cache_dir)
            runners.append(run_once)
            closers.append(close)
            shapes_of.append(shapes)
        for _ in range(warmup):
            for r in runners:
                r()
        times: list[list[float]] = [[] for _ in paths]
        bar = None
        if progress:
            bar = progress_bar(
                total=iters if iters is not None else seconds, unit="round" if iters else "s", desc=f"bench {backend}"
            )
        t0 = time.perf_counter()
        rnd = 0
        while True:
            n = len(runners)
            for k in range(n):
                i = (rnd + k) % n
                times[i].append(runners[i]())
            rnd += 1
            if bar is not None:
                bar.n = rnd if iters is not None else min(round(time.perf_counter() - t0, 1), seconds)
                bar.refresh()
            if (iters is not None and rnd >= iters) or (
                seconds is not None and time.perf_counter() - t0 >= seconds and rnd >= 2
            ):
                break
        if bar is not None:
            bar.close()
    finally:
        for c in closers:
            c()
    eff_batch = next(iter(shapes_of[0].values()))[0] if shapes_of[0] and next(iter(shapes_of[0].values())) else 1
    results = []
    base = np.asarray(times[0])
    for p, shp, t in zip(paths, shapes_of, times):
        arr = np.asarray(t)
        m = ModelTiming(p, {k: list(v) for k, v in shp.items()}, summarize(arr, eff_batch), seconds=arr.tolist())
        if results:
            point, lo, hi = speedup_ci(base, arr, seed=seed)
            m.speedup, m.speedup_ci = point, (lo, hi)
        else:
            m.speedup = 1.0
        results.append(m)
    settings = {
        "batch": eff_batch,
        "threads": threads,
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "fp16": fp16,
    }
    return BenchReport(backend, runtime, _machine(), settings, results)
