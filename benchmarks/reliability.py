"""The reliability table of docs/RESULTS.md: every bad input of tests/bad_inputs.py run through the CLI.

    python benchmarks/reliability.py [--readme docs/RESULTS.md]

Each case runs `onnxprune prune` in a fresh process in an empty folder; the table shows what the tool
answered (stderr, one line), the exit code, and whether the output folder stayed empty.
tests/test_cli.py asserts the same contract for every case, so the table cannot drift from the tests.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
from _common import replace_section  # noqa: E402
from bad_inputs import CASES, command  # noqa: E402


def rows() -> list[dict]:
    out = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = pathlib.Path(tmp)
            path, args, out_dir = command(case, tmp_path)
            p = subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, cwd=tmp)
            answer = " / ".join(ln for ln in p.stderr.strip().splitlines() if ln)
            out.append(
                {
                    "case": case,
                    "exit": p.returncode,
                    "answer": answer.replace(tmp, "…"),
                    "output_left": sorted(os.listdir(out_dir)),
                }
            )
            print(f"{case}: {p.returncode} {out[-1]['answer']}", flush=True)
    return out


def table(data: list[dict]) -> str:
    lines = ["| input | what onnxprune answered (stderr) | exit | output folder |", "|---|---|---:|---|"]
    for r in data:
        answer = r["answer"].replace("|", "\\|")
        lines.append(
            f"| {r['case']} | `{answer}` | {r['exit']} | "
            f"{'empty' if not r['output_left'] else ', '.join(r['output_left'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme")
    args = ap.parse_args()
    data = rows()
    if args.readme:
        replace_section(args.readme, "reliability", table(data))
    else:
        print(table(data))


if __name__ == "__main__":
    main()
