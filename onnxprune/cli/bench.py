"""``onnxprune bench``: latency of models side by side on onnxruntime CPU or TensorRT."""

from __future__ import annotations

import argparse

from ..bench import BACKENDS, benchmark
from ..load import parse_input_shapes
from ..save import save_json


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency of models side by side (interleaved) on ort-cpu, trt or torch-cuda",
        description="Time models interleaved in one process; speedups are against the first "
        "model, with a paired bootstrap 95%% confidence interval.",
    )
    p.add_argument("models", nargs="+", help="ONNX models; the first is the reference for speedups")
    p.add_argument("--backend", default="ort-cpu", choices=list(BACKENDS))
    p.add_argument("--fp16", action="store_true", help="trt: FP16 engine; torch-cuda: FP16 autocast")
    p.add_argument(
        "--compile", action="store_true", help="torch-cuda: torch.compile with CUDA graphs (no launch overhead)"
    )
    p.add_argument("--threads", type=int, default=0, help="ort-cpu: intra-op threads (0 = onnxruntime's default)")
    p.add_argument("--batch", type=int, default=None, help="size of a dynamic leading dim (default 1)")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:1x3x224x224",
        help="concrete shape for an input with dynamic dims (repeatable)",
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=int, default=None, help="timed rounds (default 100)")
    g.add_argument("--seconds", type=float, default=None, help="time rounds for this long instead of --iters")
    p.add_argument(
        "--cache-dir", default=None, help="trt: engine and timing cache folder (default ~/.cache/onnxprune/trt)"
    )
    p.add_argument("--json", metavar="FILE", help="write the results (with every run's time) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    iters = args.iters if args.iters is not None or args.seconds is not None else 100
    rep = benchmark(
        args.models,
        args.backend,
        batch=args.batch,
        input_shapes=parse_input_shapes(args.input_shape),
        threads=args.threads,
        warmup=args.warmup,
        iters=iters,
        seconds=args.seconds,
        fp16=args.fp16,
        compile=args.compile,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    print(rep.table())
    if args.json:
        save_json(rep.to_json(with_runs=True), args.json)
    return 0
