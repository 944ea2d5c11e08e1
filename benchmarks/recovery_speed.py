"""Recovery time against one forward pass of the original over the same calibration set.

    python benchmarks/recovery_speed.py [--models resnet20,resnet56,vgg11,mbv2,ppocrv5-rec,resnet50] \
        [--out benchmarks/out/recovery_speed.json] [--results docs/RESULTS.md]

For each model: l1 at -50% MACs (--round-to 8), least-squares reconstruction on the calibration set, and
separately reconstruction + statistics recalibration (one pass of the original for both; the
statistics on the default --recal-inputs, whole batches spread over the set). The figure is
the recovery time divided by one onnxruntime forward pass of the original (all optimisations, same
batches, same threads) measured in the same run; the report's breakdown (original pass, propagation,
solves) is recorded too.
Calibration sets: Fashion-MNIST models 512 and 4,096 training images (``--fmnist-calib``: a forward pass of
512 28x28 images takes 0.05-0.4 s, less than the per-layer solves, so the 4,096 rows show the cost that
grows with the data); PP-OCRv5 recogniser 512 rendered lines (benchmarks/real); resnet50 (torchvision,
random weights, 224x224) 1,024 random images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "real"))
from _common import fmnist_files, markdown_table, replace_section, save_rows  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import zoo  # noqa: E402
from onnxprune.data import open_data  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")
FMNIST = ("resnet20", "resnet56", "vgg11", "mbv2")


def setup(name: str, workdir: str, fmnist_calib: int = 512):
    """(model path, input shapes, calibration batches as a list of feed dicts)."""
    if name in FMNIST:
        _, calib = fmnist_files(fmnist_calib)
        path = os.path.join(SHARED, "models", f"{name}.onnx")
        graph = onnxprune.load(path)
        return path, None, [f for f, _ in open_data(onnxprune.DataSpec(calib, batch_size=64), graph)]
    if name == "ppocrv5-rec":
        import tasks

        return os.path.join(tasks.REAL, "ppocrv5", "rec.onnx"), ["x:1x3x48x320"], list(tasks.rec_calib())
    if name == "resnet50":
        path = os.path.join(workdir, "resnet50_224.onnx")
        if not os.path.exists(path):
            zoo.export("resnet50", path, size=224)
        rng = np.random.default_rng(0)
        return path, None, [{"x": rng.standard_normal((32, 3, 224, 224)).astype(np.float32)} for _ in range(32)]
    raise SystemExit(f"unknown model {name}")


def forward_seconds(path: str, shapes, batches) -> float:
    g = onnxprune.load(path, shapes)
    sess = make_session(g.model, arrays=g.consts)
    sess.run(None, batches[0])  # warm-up
    t = time.perf_counter()
    for feeds in batches:
        sess.run(None, feeds)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56,vgg11,mbv2,ppocrv5-rec,resnet50")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "recovery-speed"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "recovery_speed.json"))
    ap.add_argument(
        "--fmnist-calib",
        default="512,4096",
        help="calibration images for the Fashion-MNIST models, one row per size (training images, seeded draw)",
    )
    ap.add_argument("--results", "--readme", dest="results", help="rewrite this section of docs/RESULTS.md")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    sizes = [int(v) for v in args.fmnist_calib.split(",")]
    runs = [(name, size) for name in args.models.split(",") for size in (sizes if name in FMNIST else sizes[:1])]
    for name, size in runs:
        path, shapes, batches = setup(name, args.workdir, size)
        n = sum(len(next(iter(f.values()))) for f in batches)
        fwd = forward_seconds(path, shapes, batches)
        row = {"model": name, "samples": n, "forward_s": round(fwd, 3)}
        for label, kw in (("reconstruct", {}), ("reconstruct+recalibrate", {"recalibrate": True})):
            t = time.perf_counter()
            _, rep = onnxprune.prune(path, "l1", target_macs=0.5, input_shapes=shapes, data=batches, **kw)
            rec = rep.recovery["timings_s"]
            total = rep.timings.get("recovery", time.perf_counter() - t)
            row[label] = {
                "seconds": round(total, 2),
                "ratio": round(total / fwd, 2),
                "breakdown": rec.get("breakdown", {}),
                "steps_s": {k: v for k, v in rec.items() if k != "breakdown"},
                "layers": len(rep.recovery.get("reconstructed", [])),
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
        save_rows(args.out, rows)
    if args.results:
        replace_section(args.results, "recovery-speed", table(json.load(open(args.out))))


def table(data: dict) -> str:
    columns = [
        "model",
        "calibration samples",
        "one forward pass (s)",
        "reconstruct (s)",
        "ratio",
        "original pass / propagation / solves (s)",
        "+ recalibrate (s)",
        "ratio",
        "statistics on (inputs)",
    ]
    rows = []
    for r in data["rows"]:
        a, b = r["reconstruct"], r["reconstruct+recalibrate"]
        bd = a["breakdown"]
        rows.append(
            [
                r["model"],
                r["samples"],
                f"{r['forward_s']:.2f}",
                f"{a['seconds']:.1f}",
                f"{a['ratio']:.1f}x",
                f"{bd.get('original_pass', 0):.1f} / {bd.get('propagation', 0):.1f} / {bd.get('solves', 0):.1f}",
                f"{b['seconds']:.1f}",
                f"{b['ratio']:.1f}x",
                b["breakdown"].get("statistics_inputs", r["samples"]),
            ]
        )
    note = f"Machine: {data['machine']}. Command: `python benchmarks/recovery_speed.py`."
    return markdown_table(columns, rows, "lrrrrlrrr", [note])


if __name__ == "__main__":
    main()
