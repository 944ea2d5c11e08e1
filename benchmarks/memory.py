"""Large models: peak memory of `onnxprune analyze` and `onnxprune prune` against the model's size.

    python benchmarks/memory.py [--widths 4096,8192,11585] [--layers 9] [--calib 64] [--readme docs/RESULTS.md]

Generates a chain of 1x1 convolutions (ReLU between, width W, 9 layers: W=4096, 8192, 11585 are 0.56,
2.25 and 4.5 GiB of float32 weights, saved with external data), then runs each command in a fresh
process and reads its peak resident memory from the kernel (``wait4``'s ``ru_maxrss``). The prune run
includes the exactness check in onnxruntime, which holds the original, the masked original and the
pruned model; the last row adds least-squares reconstruction on ``--calib`` random inputs. The model is
generated in a child process too: a command forked from a process holding the generator's arrays starts
with those pages, and ``ru_maxrss`` counts them (before session 9 the analyze figures were that floor).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import machine, markdown_table, replace_section  # noqa: E402


def wide_model(path: str, width: int, layers: int) -> int:
    """Writes the model with external data; returns the bytes of weights."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((width, width, 1, 1), dtype=np.float32) * np.float32(1 / np.sqrt(width))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        del w
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        x = f"c{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    g = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, 2, 2])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width, 2, 2])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save_model(
        m,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=os.path.basename(path) + ".data",
        size_threshold=1024,
    )
    return layers * width * width * 4


def peak_rss(cmd: list[str]) -> tuple[int, float, float]:
    """(exit code, peak RSS in GiB, seconds) of one command in its own process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        print(err, file=sys.stderr)
    return rc, usage.ru_maxrss / 2**20, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="4096,8192")
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--calib", type=int, default=64, help="calibration inputs for the --reconstruct row (0: none)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "memory.json"))
    ap.add_argument("--readme")
    args = ap.parse_args()
    rows = []
    cli = [sys.executable, "-m", "onnxprune"]
    for width in (int(w) for w in args.widths.split(",")):
        tmp = tempfile.mkdtemp(prefix="onnxprune-mem-", dir=os.path.join(HERE, "out"))
        try:
            src = os.path.join(tmp, "wide.onnx")
            # in a child process: a command forked from this one would start with this process's pages
            # (the generator's arrays) and ``ru_maxrss`` would count them as the command's own
            subprocess.run([sys.executable, __file__, "--generate", src, str(width), str(args.layers)], check=True)
            size = args.layers * width * width * 4
            print(f"width {width}: {size / 2**30:.2f} GiB of weights", flush=True)
            row = {"width": width, "layers": args.layers, "model_gib": round(size / 2**30, 3)}
            rc, rss, sec = peak_rss([*cli, "analyze", src])
            row["analyze"] = {"exit": rc, "peak_rss_gib": round(rss, 2), "seconds": round(sec, 1)}
            out = os.path.join(tmp, "pruned.onnx")
            rc, rss, sec = peak_rss([*cli, "-q", "prune", src, "-o", out, "--ratio", "0.5"])
            row["prune"] = {
                "exit": rc,
                "peak_rss_gib": round(rss, 2),
                "seconds": round(sec, 1),
                "output_gib": round(
                    sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.startswith("pruned"))
                    / 2**30,
                    3,
                ),
            }
            if args.calib:
                calib = os.path.join(tmp, "calib.npz")
                rng = np.random.default_rng(1)
                np.savez(calib, x=rng.standard_normal((args.calib, width, 2, 2), dtype=np.float32))
                out = os.path.join(tmp, "recon.onnx")
                cmd = [*cli, "-q", "prune", src, "-o", out, "--ratio", "0.5", "--calib", calib, "--reconstruct"]
                rc, rss, sec = peak_rss(cmd)
                row["prune_reconstruct"] = {"exit": rc, "peak_rss_gib": round(rss, 2), "seconds": round(sec, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = {"machine": machine(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
    if args.readme:
        replace_section(args.readme, "memory", table(data))


def table(data: dict) -> str:
    columns = [
        "model (weights)",
        "analyze: peak RSS, time",
        "prune --ratio 0.5: peak RSS, time",
        "output",
        "prune + --calib --reconstruct: peak RSS, time",
    ]

    def cell(m: dict, size: float) -> str:
        return f"{m['peak_rss_gib']:.2f} GiB ({m['peak_rss_gib'] / size:.2f}×), {m['seconds']:.0f} s"

    rows = []
    for r in data["rows"]:
        a, p, size = r["analyze"], r["prune"], r["model_gib"]
        rec = cell(r["prune_reconstruct"], size) if "prune_reconstruct" in r else "–"
        model = f"{r['layers']}× Conv 1×1 {r['width']}→{r['width']} ({size:.2f} GiB)"
        rows.append([model, cell(a, size), cell(p, size), f"{p['output_gib']:.2f} GiB", rec])
    return markdown_table(columns, rows, "lrrrr", [f"Machine: {data['machine']}."])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        wide_model(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
