"""Shared by the benchmark scripts: docs/RESULTS.md table sections and the machine line every table carries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence

CALIB_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "calib", "out")


def fmnist_files(calib_size: int = 512) -> tuple[str, str]:
    """(test set, calibration set of ``calib_size`` training images) .npz paths, built from ../shared by
    calib/fashion_mnist.py when missing (sizes other than 512 in their own folder under calib/out)."""
    out = CALIB_OUT if calib_size == 512 else os.path.join(CALIB_OUT, f"fmnist_{calib_size}")
    test, calib = os.path.join(out, "fmnist_test.npz"), os.path.join(out, "fmnist_calib.npz")
    if not (os.path.exists(test) and os.path.exists(calib)):
        script = os.path.join(os.path.dirname(CALIB_OUT), "fashion_mnist.py")
        subprocess.run([sys.executable, script, "--calib", str(calib_size), "--out", out], check=True)
    return test, calib


def replace_section(readme: str, name: str, body: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``readme``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = open(readme).read()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(readme, "w") as f:
        f.write(head + start + "\n" + body + "\n" + end + tail)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], right: str = "", notes=()) -> str:
    """A markdown table of already formatted cells, then ``notes`` (lines after a blank one). ``right``: one
    letter per column, ``r`` for a right-aligned (numeric) column; the others align left.

    Why not tabulate (pandas' to_markdown): its GitHub format pads every cell to its column's width, so one
    wider figure rewrites every line of a section in docs/RESULTS.md and its diff shows nothing."""
    align = right.ljust(len(columns), "l")
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    notes = list(notes)
    return "\n".join(lines + ([""] + notes if notes else []))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
        # the same VM name has run on hosts with and without AVX-512 (AMD EPYC family 25, models 1 and 17):
        # onnxruntime's kernels and channel blocks differ, and its times by up to 3x
        cpu += " (AVX-512)" if "avx512f" in flags else " (AVX2)" if "avx2" in flags else ""
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


def save_rows(path: str, rows: list[dict], **extra) -> None:
    """The rows measured so far with the machine line, rewritten after every row (a long run that stops
    keeps what it measured)."""
    import json

    with open(path, "w") as f:
        json.dump({"machine": machine(), **extra, "rows": rows}, f, indent=1)
