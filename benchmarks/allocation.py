"""Allocation strategies side by side.

    python benchmarks/allocation.py [--readme docs/RESULTS.md] [--skip-latency | --skip-accuracy]

1. Fashion-MNIST models (../shared/models, legacy exports): top-1 on the 10,000 test images at 50% of the
   MACs, same criterion (ThiNet with least squares, 500 samples per layer) for every allocation: uniform,
   global with per-group L2 normalisation,
   global with the weak-layer penalty, and sensitivity-driven (sensitivity measured on the 512
   calibration images, which are *training* images; then the largest --max-drop whose plan still keeps
   at least half the MACs, found by bisection on the drop budget). No fine-tuning.
2. torchvision resnet50 and mobilenet_v2 (random weights, 224x224, batch 1, 2 threads): latency reached
   by --target-latency 0.5 against --target-macs 0.5 (--round-to 1 and 16), measured side by side on
   onnxruntime CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import fmnist_files, machine, markdown_table, replace_section  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import zoo  # noqa: E402
from onnxprune.allocation.allocate import Allocation, allocate  # noqa: E402
from onnxprune.allocation.targets import counts_of  # noqa: E402
from onnxprune.bench import benchmark  # noqa: E402
from onnxprune.errors import OnnxPruneError  # noqa: E402
from onnxprune.save import save_model  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")
TARGET = 0.5
CRITERION = "thinet"  # the only criterion that keeps these models usable without fine-tuning (criteria table)
SAMPLES = 500


def sensitivity_plan(path, sens, scores, target):
    """The plan from the largest drop budget that still keeps >= target of the MACs (bisection)."""
    report = onnxprune.analyze(path)
    lo, hi, best = 0.0, 100.0, None
    for _ in range(12):
        mid = (lo + hi) / 2
        plan = allocate(report.graph, report.analysis, scores, Allocation(sensitivity=sens, max_drop=mid))
        frac = counts_of(report.graph, report.analysis, plan).macs / report.counts.macs
        if frac >= target:
            best, lo = (plan, mid), mid
        else:
            hi = mid
    return best


def accuracy_rows(models, test, train):
    info = json.load(open(os.path.join(SHARED, "models", "models.json")))
    rows = []
    for name in models:
        path = os.path.join(SHARED, "models", info[name]["legacy_export"])
        graph = onnxprune.load(path)
        base = onnxprune.evaluate(graph, onnxprune.DataSpec(test, batch_size=500))["top1"]
        row = {"model": name, "original_top1": round(base, 2)}
        variants = {
            "uniform": {},
            "global-l2": {"global_rank": True, "normalisation": "l2"},
            "global-weak-layer": {"global_rank": True, "normalisation": "weak-layer"},
        }
        calib = onnxprune.DataSpec(train, batch_size=64)
        for label, kw in variants.items():
            t = time.perf_counter()
            try:
                pruned, rep = onnxprune.prune(
                    path,
                    CRITERION,
                    target_macs=TARGET,
                    data=calib,
                    samples=SAMPLES,
                    reconstruct=False,
                    **{"round_to": 1, **kw},
                )
            except OnnxPruneError as e:
                row[label] = {"error": str(e)}
                continue
            acc = onnxprune.evaluate(pruned, onnxprune.DataSpec(test, batch_size=500))["top1"]
            row[label] = {
                "top1": round(acc, 2),
                "macs": round(rep.after.macs / rep.before.macs, 3),
                "time_s": round(time.perf_counter() - t, 1),
            }
        t = time.perf_counter()
        sens = onnxprune.sensitivity(
            path,
            CRITERION,
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            data=onnxprune.DataSpec(train, batch_size=256),
            calib=calib,
            samples=SAMPLES,
        )
        scores = onnxprune.score_groups(
            graph, onnxprune.analyze(graph).analysis, CRITERION, data=calib, samples=SAMPLES
        )
        best = sensitivity_plan(path, sens, scores, TARGET)
        if best:
            plan, drop = best
            plan.meta["criterion"] = CRITERION
            pruned, rep = onnxprune.prune(path, CRITERION, plan=plan, data=calib, samples=SAMPLES, reconstruct=False)
            acc = onnxprune.evaluate(pruned, onnxprune.DataSpec(test, batch_size=500))["top1"]
            row["sensitivity"] = {
                "top1": round(acc, 2),
                "macs": round(rep.after.macs / rep.before.macs, 3),
                "max_drop": round(drop, 2),
                "time_s": round(time.perf_counter() - t, 1),
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def latency_rows(models, workdir):
    rows = []
    for name in models:
        src = os.path.join(workdir, f"{name}.onnx")
        if not os.path.exists(src):
            zoo.export(name, src, size=224)
        paths, labels = [src], ["original"]
        cache = os.path.join(workdir, f"{name}.latency.json")
        p_meta = {}
        for label, kw in (
            ("target-macs 0.5, round-to 1", {"target_macs": TARGET}),
            ("target-macs 0.5, round-to 16", {"target_macs": TARGET, "round_to": 16}),
            ("target-latency 0.5, round-to 1", {"target_latency": TARGET, "bench_threads": 2, "latency_cache": cache}),
            (
                "target-latency 0.5, round-to 16",
                {"target_latency": TARGET, "bench_threads": 2, "round_to": 16, "latency_cache": cache},
            ),
        ):
            t = time.perf_counter()
            pruned, rep = onnxprune.prune(src, "l1", progress=True, **kw)
            out = os.path.join(workdir, f"{name}_{len(paths)}.onnx")
            save_model(pruned, out)
            paths.append(out)
            labels.append(label)
            if "measured_latency" in rep.plan["meta"]:
                p_meta[label] = rep.plan["meta"]["measured_latency"]
            print(
                f"{name} {label}: MACs {rep.after.macs / rep.before.macs:.3f}, "
                f"predicted latency {rep.plan['meta'].get('predicted_latency', '-')}, "
                f"measured while planning {rep.plan['meta'].get('measured_latency', '-')}, "
                f"{time.perf_counter() - t:.0f}s",
                flush=True,
            )
        b = benchmark(paths, "ort-cpu", threads=2, warmup=3, iters=30, progress=True)
        for label, m, p in zip(labels[1:], b.models[1:], paths[1:]):
            macs = onnxprune.analyze(p).counts.macs / onnxprune.analyze(src).counts.macs
            rows.append(
                {
                    "model": name,
                    "allocation": label,
                    "macs": round(macs, 3),
                    "latency": round(1 / m.speedup, 3),
                    "ci": [round(1 / x, 3) for x in m.speedup_ci[::-1]],
                    "original_ms": round(b.models[0].stats["median_ms"], 2),
                    **({"measured_while_planning": round(p_meta[label], 3)} if label in p_meta else {}),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,vgg11,mbv2")
    ap.add_argument("--latency-models", default="resnet50,mobilenet_v2")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true", help="keep the accuracy rows already in --out")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "allocation-models"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "allocation.json"))
    ap.add_argument("--readme")
    args = ap.parse_args()
    test, train = fmnist_files()
    os.makedirs(args.workdir, exist_ok=True)
    if args.skip_accuracy:
        with open(args.out) as f:
            data = {"machine": machine(), "accuracy": json.load(f)["accuracy"]}
    else:
        data = {"machine": machine(), "accuracy": accuracy_rows(args.models.split(","), test, train)}
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
    if not args.skip_latency:
        data["latency"] = latency_rows(args.latency_models.split(","), args.workdir)
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    if args.readme:
        replace_section(args.readme, "allocation", table(data))


def table(data: dict) -> str:
    cols = ["uniform", "global-l2", "global-weak-layer", "sensitivity"]
    rows = []
    for r in data["accuracy"]:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("–" if not v or "error" in v else f"{v['top1']:.2f} (MACs {v['macs']:.2f})")
        rows.append([f"{r['model']} ({r['original_top1']:.2f})", *cells])
    out = markdown_table(["model (original top-1)", *cols], rows, "l" + "r" * len(cols))
    if data.get("latency"):
        columns = ["model", "allocation", "MACs kept", "latency kept (95% CI)", "measured while planning", "original"]
        rows = []
        for r in data["latency"]:
            planning = f"{r['measured_while_planning']:.3f}" if "measured_while_planning" in r else "–"
            latency = f"{r['latency']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})"
            rows.append(
                [r["model"], r["allocation"], f"{r['macs']:.3f}", latency, planning, f"{r['original_ms']:.1f} ms"]
            )
        out += "\n\n" + markdown_table(columns, rows, "llrrrr")
    return out + f"\n\nMachine: {data['machine']}."


if __name__ == "__main__":
    main()
