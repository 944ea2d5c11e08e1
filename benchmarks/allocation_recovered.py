"""Which channels and where to cut, measured after recovery, on the Fashion-MNIST models, without
fine-tuning: reconstruction-aware selection (obs) against selection by a criterion then refit (l1, ThiNet),
and uniform against global and sensitivity-driven allocation.

    python benchmarks/allocation_recovered.py [--models resnet20,resnet56,vgg11,mbv2] [--targets 0.7,0.5,0.3] \
        [--exporter legacy|dynamo] [--out benchmarks/out/allocation_recovered.json] [--results docs/RESULTS.md]

For each model (../shared/models, ``--exporter``: the legacy TorchScript or the dynamo export) and MACs
target (fraction kept, --round-to 1): top-1 on the 10,000 test images after least-squares reconstruction on
the 512 calibration images, for
- l1, uniform plan;
- thinet, uniform plan;
- obs one-shot (each channel costed alone), uniform plan;
- obs (greedy, the default), uniform plan;
- obs, global plan (one ranking of the relative costs over every group, ``--global --target-macs F``);
- obs, sensitivity allocation: every group pruned alone at 0.25/0.5/0.75, reconstructed on the
  calibration images and measured on 1,000 validation images (training images outside the calibration
  set), then ``--sensitivity FILE --target-macs F``.
with the time of each prune (selection, allocation, rewrite, verification, reconstruction; the
sensitivity measurement, paid once per model, is added to its column).
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
sys.path.insert(0, os.path.join(HERE, "..", "calib"))
from _common import fmnist_files, machine, markdown_table, replace_section  # noqa: E402

import onnxprune  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")
RATIOS = (0.25, 0.5, 0.75)


def validation_set(out_dir: str, n: int = 1000) -> str:
    """Training images outside the calibration draw (calib/fashion_mnist.py: rng(0), 512 of them)."""
    import fashion_mnist

    path = os.path.join(out_dir, f"fmnist_val_{n}.npz")
    if not os.path.exists(path):
        x, y = fashion_mnist.load(SHARED, "train")
        calib = set(np.random.default_rng(0).choice(len(x), 512, replace=False).tolist())
        rest = np.array([i for i in range(len(x)) if i not in calib])
        idx = np.random.default_rng(7).choice(rest, n, replace=False)
        np.savez(path, input=x[idx], labels=y[idx])
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56,vgg11,mbv2")
    ap.add_argument("--targets", default="0.7,0.5,0.3", help="fractions of the MACs kept")
    ap.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo"])
    ap.add_argument("--out", default=os.path.join(HERE, "out", "allocation_recovered.json"))
    ap.add_argument("--results", help="rewrite this section of docs/RESULTS.md")
    args = ap.parse_args()
    test_path, calib_path = fmnist_files()
    calib = onnxprune.DataSpec(calib_path, batch_size=64)
    test = onnxprune.DataSpec(test_path, batch_size=500)
    val = onnxprune.DataSpec(validation_set(os.path.dirname(test_path)), batch_size=500)
    info = json.load(open(os.path.join(SHARED, "models", "models.json")))
    rows = json.load(open(args.out))["rows"] if os.path.exists(args.out) else []
    for name in args.models.split(","):
        path = os.path.join(SHARED, "models", info[name][f"{args.exporter}_export"].split()[0])
        t = time.perf_counter()
        sens = onnxprune.sensitivity(
            path, "obs", RATIOS, data=val, calib=calib, recovery=onnxprune.RecoveryOptions(reconstruct=True)
        )
        sens_s = round(time.perf_counter() - t, 1)
        print(f"{name}: sensitivity after reconstruction {sens_s} s", flush=True)
        for target in (float(x) for x in args.targets.split(",")):
            row = {
                "model": name,
                "exporter": args.exporter,
                "original_top1": info[name]["test_top1_percent"],
                "target_macs": target,
            }
            for label, crit, alloc, options in (
                ("l1 uniform", "l1", onnxprune.Allocation(target_macs=target, round_to=1), {}),
                ("thinet uniform", "thinet", onnxprune.Allocation(target_macs=target, round_to=1), {}),
                (
                    "obs one-shot uniform",
                    "obs",
                    onnxprune.Allocation(target_macs=target, round_to=1),
                    {"greedy": False},
                ),
                ("obs uniform", "obs", onnxprune.Allocation(target_macs=target, round_to=1), {}),
                (
                    "obs global",
                    "obs",
                    onnxprune.Allocation(target_macs=target, round_to=1, global_rank=True),
                    {},
                ),
                (
                    "obs sensitivity",
                    "obs",
                    onnxprune.Allocation(target_macs=target, round_to=1, sensitivity=sens),
                    {},
                ),
            ):
                t = time.perf_counter()
                pruned, rep = onnxprune.prune(path, crit, allocation=alloc, data=calib, **options)
                took = time.perf_counter() - t
                acc = onnxprune.evaluate(pruned, test)["top1"]
                row[label] = {
                    "top1": round(acc, 2),
                    "macs": round(rep.after.macs / rep.before.macs, 3),
                    "time_s": round(took, 1) + (sens_s if "sensitivity" in label else 0.0),
                }
                print(f"{name} {target} {label}: {acc:.2f} ({row[label]})", flush=True)
            key = (name, args.exporter, target)
            rows = [r for r in rows if (r["model"], r.get("exporter", "legacy"), r["target_macs"]) != key] + [row]
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"machine": machine(), "rows": rows}, f, indent=1)
    if args.results:
        replace_section(args.results, "allocation-recovered", table(json.load(open(args.out))))


def table(data: dict) -> str:
    cols = ["l1 uniform", "thinet uniform", "obs one-shot uniform", "obs uniform", "obs global", "obs sensitivity"]
    rows = []
    for r in data["rows"]:
        cells = [f"{r[c]['top1']:.2f} ({r[c]['macs']:.2f}, {r[c]['time_s']:.0f} s)" if c in r else "–" for c in cols]
        exporter = "" if r.get("exporter", "legacy") == "legacy" else f", {r['exporter']}"
        rows.append([f"{r['model']}{exporter} ({r['original_top1']:.2f})", f"{r['target_macs']:.2f}", *cells])
    note = (
        "Top-1 on the 10,000 test images after least-squares reconstruction on 512 calibration images, no "
        "fine-tuning; each cell: top-1 (MACs kept, seconds including the sensitivity measurement). Rows marked "
        "dynamo: the dynamo export of the same trained model. "
        f"Command: `python benchmarks/allocation_recovered.py`. Machine: {data['machine']}."
    )
    return markdown_table(["model (original top-1)", "MACs kept (target)", *cols], rows, "ll" + "r" * len(cols), [note])


if __name__ == "__main__":
    main()
