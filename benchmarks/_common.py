"""Shared by the benchmark scripts: README table sections and the machine line every table carries."""
from __future__ import annotations

import os
import platform


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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime

    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, Python {platform.python_version()}, " \
           f"onnxruntime {onnxruntime.__version__}"
