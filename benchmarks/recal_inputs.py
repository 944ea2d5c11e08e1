"""Recalibration's statistics on part of the calibration set against all of it: the task metric after
reconstruction + recalibration with each setting, side by side in one run.

    python benchmarks/recal_inputs.py [--models resnet20,resnet56,vgg11,mbv2,rec,rec-obs,cls,orientation,det,chardet] \
        [--inputs 256] [--out benchmarks/out/recal_inputs.json]

Fashion-MNIST models: l1 at -50% MACs, 512 calibration images, top-1 on the 10,000 test images. Real
models (benchmarks/real/tasks.py, their packages' pre/post-processing): -30% MACs, l1 with the default
allocation, or obs with the measured sensitivity plan (``rec-obs``, benchmarks/out/sensitivity_rec_obs.json),
calibration and test splits as in benchmarks/real/run.py. ``--recal-inputs 0`` (every input) against
``--inputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "real"))
from _common import fmnist_files, save_rows  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.data import open_data  # noqa: E402
from onnxprune.evaluation import evaluate_task, primary  # noqa: E402
from onnxprune.runtime import make_session  # noqa: E402

SHARED = os.path.join(HERE, "..", "..", "shared")
FMNIST = ("resnet20", "resnet56", "vgg11", "mbv2")


def fmnist_top1(name: str, inputs: int | None) -> float:
    test_path, calib_path = fmnist_files()
    path = os.path.join(SHARED, "models", f"{name}.onnx")
    calib = [f for f, _ in open_data(onnxprune.DataSpec(calib_path, batch_size=64), onnxprune.load(path))]
    opts = onnxprune.RecoveryOptions(recalibrate=True, recal_inputs=inputs)
    model, _ = onnxprune.prune(path, "l1", target_macs=0.5, data=calib, recovery=opts)
    sess = make_session(model)
    test = np.load(test_path)
    x = test[next(k for k in test.files if k != "labels")]
    pred = np.concatenate(
        [sess.run(None, {sess.get_inputs()[0].name: x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)]
    )
    return round(100 * float((pred == test["labels"]).mean()), 2)


def real_metric(name: str, inputs: int | None) -> float:
    import tasks

    model_name = "rec" if name == "rec-obs" else name
    path, inp, shape = tasks.MODELS[model_name]
    kw: dict = {}
    criterion = "l1"
    if name == "rec-obs":
        criterion = "obs"
        with open(os.path.join(HERE, "out", "sensitivity_rec_obs.json")) as f:
            kw["sensitivity"] = json.load(f)
    opts = onnxprune.RecoveryOptions(recalibrate=True, recal_inputs=inputs)
    model, _ = onnxprune.prune(
        os.path.join(tasks.REAL, path),
        criterion,
        target_macs=0.7,
        input_shapes={inp: shape},
        data=onnxprune.DataSpec(getattr(tasks, f"{model_name}_calib")),
        recovery=opts,
        **kw,
    )
    return round(float(primary(evaluate_task(model, getattr(tasks, model_name)))[1]), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56,vgg11,mbv2,rec,rec-obs,cls,orientation,det,chardet")
    ap.add_argument("--inputs", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "recal_inputs.json"))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        row: dict = {"model": name}
        for label, inputs in (("all", None), (str(args.inputs), args.inputs)):
            t = time.perf_counter()
            row[label] = fmnist_top1(name, inputs) if name in FMNIST else real_metric(name, inputs)
            row[f"{label}_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
        save_rows(args.out, rows, inputs=args.inputs)


if __name__ == "__main__":
    main()
