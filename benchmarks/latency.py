"""Measured speedup of pruned models next to their MACs ratio, on onnxruntime CPU (and TensorRT FP16
where TensorRT and an NVIDIA GPU are present), or on an NVIDIA GPU through torch (--backend torch-cuda).

    python benchmarks/latency.py [--models resnet50,vgg16_bn] [--iters 20] [--readme docs/RESULTS.md]
    python benchmarks/latency.py --backend torch-cuda --models resnet50,mobilenet_v2,vgg16_bn,efficientnet_b0,\
        ppocrv5-det --round-to 1,8,32,64 --batches 1,32 --out benchmarks/out/latency_gpu.json

With --backend torch-cuda every model runs in FP16 (autocast) eagerly and compiled (torch.compile with
CUDA graphs), timed with CUDA events. ``ppocrv5-det`` is the trained PP-OCRv5 detector from
../shared/real-models at 640x640.

Every torchvision model (random weights, legacy exporter, 224x224, dynamic batch) is pruned with l1 to
30% and 50% fewer MACs at --round-to 1, 8 and 16, then the original and its six pruned copies are timed
interleaved in one process (onnxprune bench) at batch 1 and batch 8 with 2 intra-op threads. Speedups
are ratios of medians measured side by side, with a paired bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import machine, replace_section  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import zoo  # noqa: E402
from onnxprune.bench import benchmark  # noqa: E402
from onnxprune.bench import trt as trt_backend  # noqa: E402
from onnxprune.save import save_model  # noqa: E402

MODELS = "resnet50,mobilenet_v2,vgg16_bn,efficientnet_b0,densenet121"
REDUCTIONS = (0.3, 0.5)
ROUND_TO = (1, 8, 16)
REAL = os.path.join(HERE, "..", "..", "shared", "real-models")
# trained models from ../shared/real-models: path and input at their usual size (batch filled in)
REAL_MODELS = {"ppocrv5-det": ("ppocrv5/det.onnx", "x", (3, 640, 640))}


def source(name: str, workdir: str) -> str:
    if name in REAL_MODELS:
        return os.path.join(REAL, REAL_MODELS[name][0])
    src = os.path.join(workdir, f"{name}.onnx")
    if not os.path.exists(src):
        zoo.export(name, src, size=224)
    return src


def shapes_for(name: str, batch: int) -> dict | None:
    if name not in REAL_MODELS:
        return None  # torchvision exports: the dynamic batch takes --batches
    _, inp, chw = REAL_MODELS[name]
    return {inp: (batch, *chw)}


def variants(name: str, workdir: str) -> tuple[str, list[dict]]:
    src = source(name, workdir)
    graph = onnxprune.load(src, [f"{k}:{'x'.join(map(str, v))}" for k, v in (shapes_for(name, 1) or {}).items()])
    out = []
    for red in REDUCTIONS:
        for r in ROUND_TO:
            path = os.path.join(workdir, f"{name}_m{int(red * 100)}_r{r}.onnx")
            t = time.perf_counter()
            try:
                model, rep = onnxprune.prune(graph, "l1", target_macs=1 - red, round_to=r)
            except onnxprune.OnnxPruneError as e:  # e.g. rounding makes the uniform target unreachable
                print(f"{name} -{int(red * 100)}% round-to {r}: {e}", flush=True)
                continue
            save_model(model, path)
            out.append(
                {
                    "reduction": red,
                    "round_to": r,
                    "path": path,
                    "prune_s": round(time.perf_counter() - t, 2),
                    "macs_ratio": rep.before.macs / rep.after.macs,
                    "exact": rep.verification["passed"],
                }
            )
    return src, out


def main() -> None:
    global ROUND_TO, REDUCTIONS
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--iters", type=int, default=20, help="interleaved rounds per batch size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "latency-models"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "latency.json"))
    ap.add_argument("--readme")
    ap.add_argument("--merge", action="store_true", help="keep the rows of other models already in --out")
    ap.add_argument("--backend", default="ort-cpu", choices=["ort-cpu", "torch-cuda"])
    ap.add_argument("--round-to", default=",".join(map(str, ROUND_TO)))
    ap.add_argument("--reductions", default=",".join(map(str, REDUCTIONS)))
    args = ap.parse_args()
    ROUND_TO = tuple(int(x) for x in args.round_to.split(","))
    REDUCTIONS = tuple(float(x) for x in args.reductions.split(","))
    os.makedirs(args.workdir, exist_ok=True)
    trt_reason = trt_backend.available()
    rows = []
    if args.merge and os.path.exists(args.out):
        rows = [r for r in json.load(open(args.out))["rows"] if r["model"] not in args.models.split(",")]
    for name in args.models.split(","):
        src, vs = variants(name, args.workdir)
        missing = [
            (red, r)
            for red in REDUCTIONS
            for r in ROUND_TO
            if not any(v["reduction"] == red and v["round_to"] == r for v in vs)
        ]
        for red, r in missing:
            rows.append({"model": name, "reduction": red, "round_to": r, "unreachable": True})
        for b in (int(x) for x in args.batches.split(",")):
            if args.backend == "torch-cuda":
                backends = [("torch-cuda", True, False), ("torch-cuda", True, True)]
            else:
                backends = [("ort-cpu", False, False)] + ([("trt", True, False)] if trt_reason is None else [])
            for backend, fp16, compiled in backends:
                shapes = shapes_for(name, b)
                rep = benchmark(
                    [src] + [v["path"] for v in vs],
                    backend,
                    batch=None if shapes else b,
                    input_shapes=shapes,
                    threads=args.threads,
                    warmup=args.warmup,
                    iters=args.iters,
                    fp16=fp16,
                    compile=compiled,
                    progress=True,
                )
                runtime = rep.runtime
                for v, m in zip(vs, rep.models[1:]):
                    key = f"{backend}{'-fp16' if fp16 else ''}{'-compiled' if compiled else ''}@b{b}"
                    v[key] = {
                        "speedup": round(m.speedup, 3),
                        "ci": [round(x, 3) for x in m.speedup_ci],
                        "median_ms": round(m.stats["median_ms"], 3),
                        "original_median_ms": round(rep.models[0].stats["median_ms"], 3),
                    }
                print(
                    f"{name} {backend} batch {b}: original {rep.models[0].stats['median_ms']:.1f} ms; "
                    + ", ".join(
                        f"-{int(v['reduction'] * 100)}%/r{v['round_to']}: {m.speedup:.2f}x "
                        f"(MACs {v['macs_ratio']:.2f}x)"
                        for v, m in zip(vs, rep.models[1:])
                    ),
                    flush=True,
                )
        for v in vs:
            rows.append({"model": name, **{k: x for k, x in v.items() if k != "path"}})
        with open(args.out, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "threads": args.threads,
                    "iters": args.iters,
                    "tensorrt": trt_reason or "available",
                    "runtime": runtime,
                    "rows": rows,
                },
                f,
                indent=1,
            )
    if args.readme:
        replace_section(args.readme, "latency", table(json.load(open(args.out))))


def table(data: dict) -> str:
    rows = data["rows"]
    keys = sorted({k for r in rows for k in r if "@b" in k}, key=lambda k: (not k.startswith("ort"), k))
    head = (
        "| model | MACs cut | round-to | MACs ratio | "
        + " | ".join(f"{k} speedup (95% CI)" for k in keys)
        + f" | speedup / MACs ratio ({keys[0] if keys else 'b1'}) |"
    )
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(keys) + "---:|"]
    for r in rows:
        if r.get("unreachable"):
            lines.append(
                f"| {r['model']} | {int(r['reduction'] * 100)}% | {r['round_to']} | target not reachable "
                f"with uniform allocation at this rounding |" + " |" * (len(keys) + 1)
            )
            continue
        cells = [f"{r[k]['speedup']:.2f} ({r[k]['ci'][0]:.2f}-{r[k]['ci'][1]:.2f})" if k in r else "–" for k in keys]
        b1 = next((r[k]["speedup"] for k in keys if k.endswith("@b1") and k in r), None)
        eff = f"{b1 / r['macs_ratio']:.2f}" if b1 else "–"
        lines.append(
            f"| {r['model']} | {int(r['reduction'] * 100)}% | {r['round_to']} | {r['macs_ratio']:.2f} | "
            + " | ".join(cells)
            + f" | {eff} |"
        )
    lines += [
        "",
        f"Machine: {data['machine']}; {data['threads']} intra-op threads, {data['iters']} interleaved "
        f"rounds after warm-up; {data.get('runtime', '')}. TensorRT: {data['tensorrt']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
