"""Acceptance over the torchvision zoo: analyze coverage and prune --ratio 0.3 exactness, both exporters.

    python benchmarks/zoo.py [--exporter legacy|dynamo|both] [--models a,b] [--out benchmarks/out/zoo.json]

Coverage excludes the channels of groups frozen only because they reach the graph output (the classifier).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import replace_section

import onnxprune
from onnxprune import zoo

SKIP_HUGE = {"vit_h_14", "regnet_y_128gf"}  # >2 GB protobuf exports: see benchmarks/memory.py


def coverage(report) -> float:
    out_groups = {g.id for g in report.groups if not g.prunable and g.reason.startswith("reaches graph output")}
    src = {s.node: s.n for s in report.analysis.sources}
    considered = [g for g in report.groups if g.id not in out_groups]
    total = sum(src[s] for g in considered for s in g.sources)
    ok = sum(src[s] for g in considered if g.prunable for s in g.sources)
    return ok / total if total else 1.0


def frozen_reasons(report) -> list[str]:
    reasons = {}
    for g in report.groups:
        if not g.prunable and not g.reason.startswith("reaches graph output"):
            reasons[g.reason] = reasons.get(g.reason, 0) + g.channels
    return [f"{n} ch: {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]]


def run_one(name: str, dynamo: bool, workdir: str) -> dict:
    row = {"model": name, "exporter": "dynamo" if dynamo else "legacy"}
    path = os.path.join(workdir, f"{name}_{row['exporter']}.onnx")
    t = time.perf_counter()
    try:
        if not os.path.exists(path):
            zoo.export(name, path, dynamo=dynamo)
        row["export_s"] = round(time.perf_counter() - t, 1)
        rep = onnxprune.analyze(path)
        row["coverage"] = round(coverage(rep), 4)
        row["frozen"] = frozen_reasons(rep)
        t = time.perf_counter()
        _, pr = onnxprune.prune(rep.graph, ratio=0.3)
        row["prune_s"] = round(time.perf_counter() - t, 2)
        row["exact"] = pr.verification["passed"]
        row["max_abs_diff"] = pr.verification["max_abs_diff"]
        row["macs_ratio"] = round(pr.after.macs / max(pr.before.macs, 1), 3)
    except Exception as e:  # record and go on: the table must show every model
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row["trace"] = traceback.format_exc()[-1500:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exporter", default="both", choices=["legacy", "dynamo", "both"])
    ap.add_argument("--models", default="")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxprune-zoo"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "zoo.json"))
    ap.add_argument("--readme", help="rewrite the zoo table between the markers of this file (docs/RESULTS.md)")
    ap.add_argument("--merge", action="store_true", help="keep the rows of other models already in --out")
    ap.add_argument("--from-json", help="only rebuild the docs/RESULTS.md table from an earlier run's JSON")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            update_readme(json.load(f), args.readme or "docs/RESULTS.md")
        return
    names = args.models.split(",") if args.models else [n for n in zoo.classification_models() if n not in SKIP_HUGE]
    exporters = {"legacy": [False], "dynamo": [True], "both": [False, True]}[args.exporter]
    os.makedirs(args.workdir, exist_ok=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    rows = []
    if args.merge and os.path.exists(args.out):
        rows = [r for r in json.load(open(args.out)) if r["model"] not in names]
    for name in names:
        for dyn in exporters:
            row = run_one(name, dyn, args.workdir)
            rows.append(row)
            status = row.get("error") or f"coverage {row['coverage']:.3f} exact {row['exact']} prune {row['prune_s']}s"
            print(f"{name:28s} {row['exporter']:7s} {status} {row.get('frozen', '')}", flush=True)
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
    ok = [r for r in rows if r.get("exact") and r.get("coverage", 0) >= 0.95]
    print(f"{len(ok)}/{len(rows)} exports: coverage >= 95% and exact at ratio 0.3")
    rows.sort(key=lambda r: (r["model"], r["exporter"] != "legacy"))
    if args.readme:
        update_readme(rows, args.readme)


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["exporter"]] = r

    def cell(r):
        if r is None:
            return "–"
        if "error" in r:
            return "export/analysis error: " + r["error"].split(":")[0]
        mark = "exact" if r["exact"] else "NOT EXACT"
        return f"{100 * r['coverage']:.1f}% · {mark} · {r['prune_s']:.2f}s"

    lines = ["| model | legacy exporter | dynamo exporter | below the 95% bar because |", "|---|---|---|---|"]
    for name in sorted(by):
        ex = by[name]
        why = "; ".join(
            sorted({f for r in ex.values() if r.get("coverage", 1) < 0.95 for f in r.get("frozen", [])[:1]})
        )
        lines.append(f"| {name} | {cell(ex.get('legacy'))} | {cell(ex.get('dynamo'))} | {why} |")
    ok = [r for r in rows if r.get("exact") and r.get("coverage", 0) >= 0.95]
    exact = [r for r in rows if r.get("exact")]
    lines.append("")
    lines.append(
        f"{len(ok)} of {len(rows)} exports reach 95% coverage and verify exact; "
        f"{len(exact)} of {len(rows)} verify exact at `--ratio 0.3`."
    )
    return "\n".join(lines)


def update_readme(rows, readme) -> None:
    replace_section(readme, "zoo", table(rows))


if __name__ == "__main__":
    main()
