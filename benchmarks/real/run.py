"""The real-model table: task metric after pruning, recovery and distillation, and CPU speed.

    python benchmarks/real/run.py [--models rec,det,cls,orientation,chardet] [--targets 0.7,0.5] \
        [--criteria l1] [--allocations uniform,sensitivity] [--distill rec,cls,orientation] \
        [--round-to 8|auto] [--out benchmarks/out/real.json] [--results docs/RESULTS.md [--section real-models]]

For each model (../shared/real-models, input size as its package runs it) and each MACs target (kept
fraction, --round-to 8 unless told; ``auto`` takes onnxruntime's NCHWc channel block on this machine,
16 with AVX-512): the task metric (benchmarks/real/tasks.py, the packages' own pre- and
post-processing, test data disjoint from calibration) of the original, after pruning alone, after
least-squares reconstruction on the calibration split, after reconstruction + statistics recalibration,
and after 1 epoch of distillation (unlabeled distillation split, Adam lr 1e-4, T=4) starting from the
no-training recovery (reconstruct, or reconstruct + recalibrate) that scores higher on the validation
split; onnxruntime CPU speedup of the pruned model against the original (2 threads, batch 1, 50
interleaved rounds, paired bootstrap 95% interval); the time of each step.

Allocations: ``uniform`` (one ratio for every group, searched to the target), ``global`` (one ranking of
the criterion's scores over every group, ``--global``) or ``sensitivity`` (each
group pruned alone at 0.25/0.5/0.75, reconstructed on the calibration split and measured on the model's
validation split ``NAME_val``; the target is then spent where the measured drop per MAC saved is lowest).
``sensitivity-latency`` spends a latency target instead (``--targets`` then are fractions of the latency
measured with onnxruntime, 2 threads, batch 1): widths are cut by measured drop per measured millisecond.
``sensitivity-weighed`` meets the MACs target like ``sensitivity`` but weighs each cut's measured drop
against the latency it saves by the per-group latency table (``--weigh-against latency``, 2 threads,
batch 1, cached in the output folder as NAME.latency.json).
The sensitivity file is kept in the output folder and reused; its time is reported once per model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import tasks  # noqa: E402
from _common import markdown_table, replace_section, save_rows  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.allocation.allocate import DEFAULT_ROUND_TO  # noqa: E402
from onnxprune.bench import benchmark  # noqa: E402
from onnxprune.evaluation import evaluate_task, primary  # noqa: E402
from onnxprune.save import save_model  # noqa: E402

DISTILL_LIMIT: int | None = None  # --distill-limit: fewer distillation inputs than the split holds


def shape_arg(name: str) -> list[str]:
    _, inp, shape = tasks.MODELS[name]
    return [f"{inp}:{'x'.join(map(str, shape))}"]


def metric(model, name: str) -> tuple[dict, float]:
    t = time.perf_counter()
    return evaluate_task(model, getattr(tasks, name)), round(time.perf_counter() - t, 1)


def speed(original: str, pruned, name: str, tmp: str) -> dict:
    path = os.path.join(tmp, f"{name}_pruned.onnx")
    save_model(pruned, path)
    _, inp, shape = tasks.MODELS[name]
    rep = benchmark([original, path], "ort-cpu", input_shapes={inp: shape}, threads=2, warmup=5, iters=50)
    m = rep.models[1]
    return {
        "speedup": round(m.speedup, 3),
        "ci": [round(x, 3) for x in m.speedup_ci],
        "original_ms": round(rep.models[0].stats["median_ms"], 2),
        "pruned_ms": round(m.stats["median_ms"], 2),
    }


SENS_RATIOS = (0.25, 0.5, 0.75)


def sensitivity(name: str, criterion: str, folder: str) -> tuple[dict, float]:
    """The reconstructed sensitivity of ``name`` on its validation split (cached: minutes per model)."""
    path = os.path.join(folder, f"sensitivity_{name}_{criterion}.json")
    if os.path.exists(path):
        res = json.load(open(path))
        return res, res.get("seconds", 0.0)
    t = time.perf_counter()
    res = onnxprune.sensitivity(
        os.path.join(tasks.REAL, tasks.MODELS[name][0]),
        criterion,
        SENS_RATIOS,
        calib=onnxprune.DataSpec(getattr(tasks, f"{name}_calib")),
        input_shapes=shape_arg(name),
        task=getattr(tasks, f"{name}_val"),
        recovery=onnxprune.RecoveryOptions(reconstruct=True),
    )
    res["seconds"] = round(time.perf_counter() - t, 1)
    with open(path, "w") as f:
        json.dump(res, f)
    return res, res["seconds"]


def row(
    name: str,
    target: float,
    criterion: str,
    allocation: str,
    distill: bool,
    tmp: str,
    folder: str,
    round_to: int = DEFAULT_ROUND_TO,
) -> dict:
    path = os.path.join(tasks.REAL, tasks.MODELS[name][0])
    shapes = shape_arg(name)
    calib = onnxprune.DataSpec(getattr(tasks, f"{name}_calib"))
    out = {"model": name, "target_macs": target, "criterion": criterion, "allocation": allocation}
    out["original"], _ = metric(path, name)
    timing = {"bench_threads": 2, "bench_batch": 1, "round_to": round_to}  # 0: auto, on onnxruntime CPU
    alloc = onnxprune.Allocation(target_macs=target, **timing)
    if allocation == "global":  # one ranking over every group (obs: its relative costs as they are)
        alloc = onnxprune.Allocation(target_macs=target, global_rank=True, **timing)
    elif allocation == "sensitivity":
        sens, out["sensitivity_s"] = sensitivity(name, criterion, folder)
        alloc = onnxprune.Allocation(target_macs=target, sensitivity=sens, **timing)
    elif allocation == "sensitivity-latency":  # the target is a fraction of the measured latency
        sens, out["sensitivity_s"] = sensitivity(name, criterion, folder)
        alloc = onnxprune.Allocation(target_latency=target, sensitivity=sens, **timing)
    elif allocation == "sensitivity-weighed":  # a MACs target, cuts chosen by measured drop per millisecond
        sens, out["sensitivity_s"] = sensitivity(name, criterion, folder)
        alloc = onnxprune.Allocation(
            target_macs=target,
            sensitivity=sens,
            weigh_against="latency",
            latency_cache=os.path.join(folder, f"{name}.latency.json"),
            **timing,
        )
    t = time.perf_counter()
    plain, rep = onnxprune.prune(path, criterion, allocation=alloc, input_shapes=shapes, data=calib, reconstruct=False)
    out["macs_kept"] = round(rep.after.macs / rep.before.macs, 3)
    out["round_to"] = rep.plan["meta"].get("round_to", round_to)
    out["verification"] = {k: rep.verification[k] for k in ("passed", "method", "max_rel_diff")}
    out["prune_s"] = round(time.perf_counter() - t, 1)
    out["pruned"], _ = metric(plain, name)
    plan = onnxprune.PruningPlan.from_json(rep.plan)
    start = []  # (validation metric, label, model) of each no-training recovery
    for label, kw in (("reconstruct", {}), ("reconstruct+recalibrate", {"recalibrate": True})):
        t = time.perf_counter()
        model, r = onnxprune.prune(path, criterion, plan=plan, input_shapes=shapes, data=calib, **kw)
        out[f"{label}_s"] = round(time.perf_counter() - t, 1)
        out[label], _ = metric(model, name)
        out[f"{label}_detail"] = {
            "timings_s": r.recovery.get("timings_s"),
            "skipped": r.recovery.get("skipped"),
            "layers": len(r.recovery.get("reconstructed", [])),
        }
        if distill:
            start.append((primary(metric(model, f"{name}_val")[0])[1], label, model))
    if distill:
        # from the no-training recovery that scores higher on the validation split (never on test data)
        _, out["distill_from"], best = max(start, key=lambda s: s[0])
        t = time.perf_counter()
        res = onnxprune.finetune(
            best,
            path,
            onnxprune.DataSpec(getattr(tasks, f"{name}_distill"), limit=DISTILL_LIMIT),
            epochs=1,
            input_shapes=shapes,
            lr=1e-4,
            progress=False,
            log=lambda s: None,
        )
        out["distill_s"] = round(time.perf_counter() - t, 1)
        out["distill_inputs"] = DISTILL_LIMIT or "split"
        out["distill_loss"] = [e.get("loss") for e in res.epochs]
        out["distill"], _ = metric(res.model, name)
    out["speed"] = speed(path, plain, name, tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="rec,det,cls,orientation,chardet")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--criteria", default="l1")
    ap.add_argument(
        "--allocations",
        default="uniform",
        help="uniform, global, sensitivity, sensitivity-latency, sensitivity-weighed (comma-separated; with "
        "sensitivity-latency the targets are fractions of the measured latency, 2 threads, batch 1)",
    )
    ap.add_argument("--distill", default="rec,cls,orientation", help="models to distil (CPU time)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "out", "real.json"))
    ap.add_argument("--results", "--readme", dest="results", help="rewrite this section of docs/RESULTS.md")
    ap.add_argument("--distill-limit", type=int, default=None, help="distil on the first N inputs of the split")
    ap.add_argument(
        "--round-to",
        default=str(DEFAULT_ROUND_TO),
        help="kept channels a multiple of N, or auto (onnxruntime's channel block on this machine)",
    )
    ap.add_argument("--section", default="real-models", help="the docs/RESULTS.md section --results rewrites")
    args = ap.parse_args()
    global DISTILL_LIMIT
    DISTILL_LIMIT = args.distill_limit
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = json.load(open(args.out))["rows"] if os.path.exists(args.out) else []
    round_to = 0 if args.round_to == "auto" else int(args.round_to)
    asked = args.round_to if round_to == 0 else round_to  # how a row records the rounding it was asked for
    done = {
        (r["model"], r["target_macs"], r["criterion"], r.get("allocation", "uniform"), r.get("asked_round_to", 8))
        for r in rows
    }
    folder = os.path.dirname(os.path.abspath(args.out))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for target in (float(x) for x in args.targets.split(",")):
                for crit in args.criteria.split(","):
                    for alloc in args.allocations.split(","):
                        if (name, target, crit, alloc, asked) in done:
                            continue
                        r = row(name, target, crit, alloc, name in args.distill.split(","), tmp, folder, round_to)
                        r["asked_round_to"] = asked
                        print(json.dumps(r), flush=True)
                        rows.append(r)
                        save_rows(args.out, rows)
    if args.results:
        replace_section(args.results, args.section, table(json.load(open(args.out))))


def _allocation(r: dict) -> str:
    a = r.get("allocation", "uniform")
    if a == "sensitivity-weighed":
        a = "sensitivity, weighed by latency"
    elif a == "sensitivity-latency":
        a = f"sensitivity, latency {r['target_macs']}"
    if r.get("asked_round_to") == "auto":
        a += f", round-to auto = {r['round_to']}"
    return a


def table(data: dict) -> str:
    columns = [
        "model",
        "metric",
        "MACs kept",
        "original",
        "pruned",
        "+ reconstruct",
        "+ recalibrate",
        "+ 1 epoch distil",
        "CPU speedup (95% CI)",
        "sensitivity / prune / reconstruct / distil (s)",
    ]
    rows = []
    for r in data["rows"]:
        name, orig = primary(r["original"])
        cells = [
            f"{r[k][name]:.1f}" if k in r else "–"
            for k in ("pruned", "reconstruct", "reconstruct+recalibrate", "distill")
        ]
        if r.get("distill_from") == "reconstruct+recalibrate":
            cells[-1] += "*"
        sp = r["speed"]
        rows.append(
            [
                f"{r['model']} ({r['criterion']}, {_allocation(r)})",
                name,
                f"{r['macs_kept']:.2f}",
                f"{orig:.1f}",
                *cells,
                f"{sp['speedup']:.2f} ({sp['ci'][0]:.2f}-{sp['ci'][1]:.2f})",
                f"{r.get('sensitivity_s', '–')} / {r['prune_s']:.0f} / {r['reconstruct_s']:.0f} / "
                f"{r.get('distill_s', '–')}",
            ]
        )
    note = (
        f"Machine: {data['machine']}. Command: `python benchmarks/real/run.py` (`--criteria obs --allocations "
        "sensitivity` for the sensitivity rows; the sensitivity time is paid once per model, not per row). "
        "Distillation starts from the reconstructed model, or from the recalibrated one where marked * (the "
        "one that scored higher on the validation split)."
    )
    return markdown_table(columns, rows, "llrrrrrr", [note])


if __name__ == "__main__":
    main()
