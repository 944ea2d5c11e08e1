"""Speed of the real models pruned with --round-to 8 against --round-to auto, side by side.

    python benchmarks/real/rounding.py [--models rec,det,cls,orientation,chardet] [--targets 0.7,0.5] \
        [--out benchmarks/out/real_rounding.json] [--results docs/RESULTS.md]

For each model (../shared/real-models, its package's input size) and MACs target: l1, uniform, no recovery
(speed does not depend on the kept weights), kept widths multiples of 8 and of ``--round-to auto`` (on
onnxruntime CPU the NCHWc channel block of this machine: 16 with AVX-512, 8 with AVX2). The original
and both pruned models are timed interleaved in one ``bench`` (onnxruntime CPU, 2 threads, batch 1),
so the two speedups share the machine's state; their ratio is the figure. Rows already in ``--out`` are
kept (delete the file to measure again). The optimised graphs'
layout reorders (ReorderInput/ReorderOutput nodes) are counted as well: widths that are not whole blocks
add them around Concats and convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import tasks  # noqa: E402
from _common import markdown_table, replace_section, save_rows  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune.bench import benchmark  # noqa: E402
from onnxprune.bench.ort_cpu import optimised_graph  # noqa: E402
from onnxprune.save import save_model  # noqa: E402


def reorders(path: str) -> int:
    """Layout reorders in onnxruntime's optimised graph of ``path`` (all optimisations, this machine)."""
    return sum(n.op_type.startswith("Reorder") for n in optimised_graph(path).graph.node)


def row(name: str, target: float, tmp: str, seconds: float) -> dict:
    path = os.path.join(tasks.REAL, tasks.MODELS[name][0])
    _, inp, shape = tasks.MODELS[name]
    shapes = [f"{inp}:{'x'.join(map(str, shape))}"]
    out: dict = {"model": name, "target_macs": target, "reorders": {"original": reorders(path)}}
    paths = [path]
    for label, round_to in (("8", 8), ("auto", 0)):
        alloc = onnxprune.Allocation(target_macs=target, round_to=round_to, bench_threads=2, bench_batch=1)
        model, rep = onnxprune.prune(path, "l1", allocation=alloc, input_shapes=shapes)
        p = os.path.join(tmp, f"{name}_{label}.onnx")
        save_model(model, p)
        paths.append(p)
        out[label] = {
            "round_to": rep.plan["meta"]["round_to"],
            "macs_kept": round(rep.after.macs / rep.before.macs, 3),
            "verified": rep.verification["passed"],
        }
        out["reorders"][label] = reorders(p)
    bench = benchmark(paths, "ort-cpu", input_shapes={inp: shape}, threads=2, warmup=10, iters=None, seconds=seconds)
    out["original_ms"] = round(bench.models[0].stats["median_ms"], 3)
    for label, m in zip(("8", "auto"), bench.models[1:]):
        out[label].update(speedup=round(m.speedup, 3), ci=[round(x, 3) for x in m.speedup_ci])
    return out


def table(data: dict) -> str:
    columns = [
        "model",
        "MACs target",
        "round-to 8: MACs kept, speedup (95% CI)",
        "round-to auto: multiple, MACs kept, speedup (95% CI)",
        "layout reorders (original / 8 / auto)",
    ]
    rows = []
    for r in data["rows"]:
        a, b, ro = r["8"], r["auto"], r["reorders"]
        rows.append(
            [
                r["model"],
                r["target_macs"],
                f"{a['macs_kept']:.3f}, **{a['speedup']:.2f}** ({a['ci'][0]:.2f}-{a['ci'][1]:.2f})",
                f"{b['round_to']}, {b['macs_kept']:.3f}, **{b['speedup']:.2f}** ({b['ci'][0]:.2f}-{b['ci'][1]:.2f})",
                f"{ro['original']} / {ro['8']} / {ro['auto']}",
            ]
        )
    return markdown_table(
        columns, rows, "lr", [f"Machine: {data['machine']}. Command: `python benchmarks/real/rounding.py`."]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="rec,det,cls,orientation,chardet")
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per bench (all three models)")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "out", "real_rounding.json"))
    ap.add_argument("--results", help="rewrite the real-rounding section of docs/RESULTS.md")
    args = ap.parse_args()
    rows = json.load(open(args.out))["rows"] if os.path.exists(args.out) else []  # measured rows are kept
    done = {(r["model"], r["target_macs"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for target in (float(t) for t in args.targets.split(",")):
                if (name, target) in done:
                    continue
                r = row(name, target, tmp, args.seconds)
                print(json.dumps(r), flush=True)
                rows.append(r)
                save_rows(args.out, rows)
    if args.results:
        replace_section(args.results, "real-rounding", table(json.load(open(args.out))))


if __name__ == "__main__":
    main()
