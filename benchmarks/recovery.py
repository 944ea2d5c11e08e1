"""Recovery without retraining, and one epoch of distillation, on the Fashion-MNIST models.

    python benchmarks/recovery.py [--models resnet20,vgg11,mbv2,resnet56] [--criterion l1] [--readme docs/RESULTS.md]

For each model (../shared/models, legacy exports) at 30% and 50% MACs reduction (uniform plan found by
--target-macs, same plan for every row): top-1 on the 10,000 test images after pruning alone, after bias
compensation, after statistics recalibration, after least-squares reconstruction, after reconstruction +
recalibration, and after reconstruction + 1 epoch of distillation on 5,000 training images (Adam, --lr,
T=4, KL only, no labels). Recovery uses the 512 calibration images (training images, calib/fashion_mnist.py).
Times are the recovery step alone (the prune call's total minus the same plan without recovery is not
taken: each step's own timer from the report), distillation's is the epoch.
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
VARIANTS = {
    "pruned": dict(reconstruct=False),
    "bias-comp": dict(reconstruct=False, bias_compensation=True),
    "recalibrate": dict(reconstruct=False, recalibrate=True),
    "reconstruct": dict(reconstruct=True),
    "reconstruct+recalibrate": dict(reconstruct=True, recalibrate=True),
}


def distill_set(out_dir: str, n: int = 5000) -> str:
    """5,000 training images (seeded choice, disjoint from nothing in particular: these are training data)."""
    import fashion_mnist

    path = os.path.join(out_dir, f"fmnist_train_{n}.npz")
    if not os.path.exists(path):
        x, y = fashion_mnist.load(SHARED, "train")
        idx = np.random.default_rng(1).choice(len(x), n, replace=False)
        np.savez(path, input=x[idx], labels=y[idx])
    return path


def rows_for(name: str, path: str, target: float, criterion: str, calib, test, distill, lr: float) -> dict:
    row = {"model": name, "macs_cut": round(1 - target, 2)}
    plan = None
    for label, kw in VARIANTS.items():
        t = time.perf_counter()
        pruned, rep = onnxprune.prune(path, criterion, target_macs=target, round_to=1, plan=plan, data=calib, **kw)
        plan = plan or onnxprune.PruningPlan.from_json(rep.plan)
        acc = onnxprune.evaluate(pruned, test)["top1"]
        rec_time = sum(v for k, v in rep.timings.items() if k == "recovery")
        row[label] = {"top1": round(acc, 2), "time_s": round(rec_time, 2)}
        row.setdefault("macs", round(rep.after.macs / rep.before.macs, 3))
        print(
            f"{name} -{100 * (1 - target):.0f}% {label}: {acc:.2f} ({rec_time:.1f} s recovery, "
            f"{time.perf_counter() - t:.1f} s total)",
            flush=True,
        )
        if label == "reconstruct":
            base = pruned
    t = time.perf_counter()
    res = onnxprune.finetune(base, path, distill, epochs=1, lr=lr, progress=True, log=lambda s: None)
    took = time.perf_counter() - t
    acc = onnxprune.evaluate(res.model, test)["top1"]
    row["reconstruct+distill"] = {"top1": round(acc, 2), "time_s": round(took, 1)}
    print(f"{name} -{100 * (1 - target):.0f}% reconstruct+distill: {acc:.2f} ({took:.1f} s)", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,vgg11,mbv2,resnet56")
    ap.add_argument("--targets", default="0.7,0.5", help="fractions of the MACs kept")
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "recovery.json"))
    ap.add_argument("--merge", action="store_true", help="update rows of an existing --out")
    ap.add_argument("--readme")
    args = ap.parse_args()
    test_path, calib_path = fmnist_files()
    distill = onnxprune.DataSpec(distill_set(os.path.dirname(test_path)), batch_size=64)
    calib = onnxprune.DataSpec(calib_path, batch_size=64)
    test = onnxprune.DataSpec(test_path, batch_size=500)
    info = json.load(open(os.path.join(SHARED, "models", "models.json")))
    rows = []
    if args.merge and os.path.exists(args.out):
        rows = json.load(open(args.out))["rows"]
    for name in args.models.split(","):
        path = os.path.join(SHARED, "models", info[name]["legacy_export"])
        for target in (float(t) for t in args.targets.split(",")):
            row = rows_for(name, path, target, args.criterion, calib, test, distill, args.lr)
            row["original_top1"] = info[name]["test_top1_percent"]
            rows = [r for r in rows if (r["model"], r["macs_cut"]) != (row["model"], row["macs_cut"])] + [row]
            data = {"machine": machine(), "criterion": args.criterion, "lr": args.lr, "rows": rows}
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(data, f, indent=1)
    if args.readme:
        replace_section(args.readme, "recovery", table(data))


def table(data: dict) -> str:
    cols = ["pruned", "bias-comp", "recalibrate", "reconstruct", "reconstruct+recalibrate", "reconstruct+distill"]
    rows = []
    for r in data["rows"]:
        cells = [f"{r[c]['top1']:.2f} ({r[c]['time_s']:.1f} s)" if c in r else "–" for c in cols]
        rows.append(
            [f"{r['model']} ({r['original_top1']:.2f})", f"{100 * r['macs_cut']:.0f}% ({r['macs']:.3f})", *cells]
        )
    note = (
        f"Criterion {data['criterion']}, uniform plan by --target-macs; top-1 on the 10,000 test images; "
        f"times: the recovery step (distillation: one epoch on 5,000 training images, Adam lr "
        f"{data['lr']:g}). Machine: {data['machine']}."
    )
    return markdown_table(["model (original top-1)", "MACs cut (kept)", *cols], rows, "ll" + "r" * len(cols), [note])


if __name__ == "__main__":
    main()
