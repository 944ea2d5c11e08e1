"""Top-1 on the 10,000 Fashion-MNIST test images for every criterion, every shared model, at 20%, 35% and
50% fewer MACs, without fine-tuning.

    python benchmarks/criteria.py [--models resnet20,vgg11] [--readme docs/RESULTS.md]

Calibration: 512 seeded training images (calib/fashion_mnist.py builds them from ../shared). The MACs
target is met by bisection on the uniform per-group ratio (the same plan size for every criterion).
Time = scoring + allocation + rewrite (+ ThiNet's least squares), evaluation excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import fmnist_files, replace_section  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.criteria import CRITERIA, get_criterion  # noqa: E402
from onnxprune.errors import OnnxPruneError  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")
REDUCTIONS = (0.20, 0.35, 0.50)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56,vgg11,mbv2")
    ap.add_argument("--criteria", default=",".join(c for c in CRITERIA))
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "criteria.json"))
    ap.add_argument("--readme")
    ap.add_argument("--merge", action="store_true", help="keep the other rows already in --out (re-run a subset)")
    args = ap.parse_args()
    test, calib = fmnist_files()
    info = json.load(open(os.path.join(SHARED, "models", "models.json")))
    rows = []
    if args.merge and os.path.exists(args.out):
        done = {(m, c) for m in args.models.split(",") for c in args.criteria.split(",")}
        rows = [r for r in json.load(open(args.out)) if (r["model"], r["criterion"]) not in done]
    for name in args.models.split(","):
        path = os.path.join(SHARED, "models", info[name]["legacy_export"])
        report = onnxprune.analyze(path)
        base = onnxprune.evaluate(report.graph, onnxprune.DataSpec(test, batch_size=500))["top1"]
        print(f"{name}: original top-1 {base:.2f}% (models.json: {info[name]['test_top1_percent']})", flush=True)
        for crit in args.criteria.split(","):
            row = {"model": name, "criterion": crit, "original_top1": base}
            for red in REDUCTIONS:
                t = time.perf_counter()
                try:
                    takes = get_criterion(crit).parameters()
                    pruned, rep = onnxprune.prune(
                        report.graph,
                        criterion=crit,
                        target_macs=1 - red,
                        round_to=1,  # the figures in docs/RESULTS.md were measured with exact ratios
                        data=onnxprune.DataSpec(calib, batch_size=64),
                        reconstruct=False,
                        **({"samples": args.samples} if "samples" in takes else {}),
                    )  # the criterion alone; see recovery.py
                except OnnxPruneError as e:
                    row[f"top1@{red:.2f}"] = None
                    row["note"] = str(e)
                    continue
                row[f"time@{red:.2f}"] = round(time.perf_counter() - t, 2)
                row[f"macs@{red:.2f}"] = round(rep.after.macs / rep.before.macs, 3)
                acc = onnxprune.evaluate(pruned, onnxprune.DataSpec(test, batch_size=500))
                row[f"top1@{red:.2f}"] = round(acc["top1"], 2)
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    if args.readme:
        order = {c: k for k, c in enumerate(CRITERIA)}
        rows.sort(
            key=lambda r: (
                args.models.split(",").index(r["model"]) if r["model"] in args.models else 99,
                order.get(r["criterion"], 99),
            )
        )
        update_readme(rows, args.readme)


def table(rows) -> str:
    head = (
        "| model (original top-1) | criterion | "
        + " | ".join(f"−{int(r * 100)}% MACs" for r in REDUCTIONS)
        + " | time per prune |"
    )
    lines = [head, "|---|---|" + "---|" * len(REDUCTIONS) + "---|"]
    for r in rows:
        cells = []
        for red in REDUCTIONS:
            v = r.get(f"top1@{red:.2f}")
            cells.append("n/a" if v is None else f"{v:.2f}")
        times = [r[f"time@{red:.2f}"] for red in REDUCTIONS if f"time@{red:.2f}" in r]
        t = f"{sum(times) / len(times):.1f} s" if times else "–"
        lines.append(
            f"| {r['model']} ({r['original_top1']:.2f}) | {r['criterion']} | " + " | ".join(cells) + f" | {t} |"
        )
    notes = sorted({r["note"] for r in rows if "note" in r})
    return "\n".join(lines + [""] + [f"n/a: {n}" for n in notes])


def update_readme(rows, readme) -> None:
    replace_section(readme, "criteria", table(rows))


if __name__ == "__main__":
    main()
