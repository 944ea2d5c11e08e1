"""Wall time of the CLI `onnxprune prune --ratio 0.5 --criterion l1` (verification included) at 224x224.

    python benchmarks/speed.py [--models resnet50,densenet121] [--repeat 3]

Each model is exported once (legacy exporter, random weights); the timing is the whole CLI process,
Python start-up and imports included, best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import replace_section

from onnxprune import zoo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,densenet121")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "speed.json"))
    ap.add_argument("--readme", help="rewrite the speed table between the markers of this file (docs/RESULTS.md)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="onnxprune-speed-")
    rows = []
    for name in args.models.split(","):
        src = zoo.export(name, os.path.join(work, f"{name}.onnx"), size=224)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "onnxprune",
                    "-q",
                    "prune",
                    src,
                    "-o",
                    os.path.join(work, "p.onnx"),
                    "--ratio",
                    "0.5",
                    "--criterion",
                    "l1",
                ],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "model": name,
                "input": "1x3x224x224",
                "best_s": round(min(times), 2),
                "all_s": [round(x, 2) for x in times],
            }
        )
        print(f"{name:14s} prune --ratio 0.5 --criterion l1 (verify on): best {min(times):.2f}s of {args.repeat}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    if args.readme:
        table = "\n".join(
            ["| model | best of runs | all runs |", "|---|---|---|"]
            + [f"| {r['model']} | {r['best_s']:.2f} s | {', '.join(f'{x:.2f}' for x in r['all_s'])} |" for r in rows]
        )
        replace_section(args.readme, "speed", table)


if __name__ == "__main__":
    main()
