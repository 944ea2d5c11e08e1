"""The ``onnxprune`` command: one module per subcommand, one error contract for all.

Exit codes: 0 success, 1 bad input or failed verification (one line on stderr), 2 usage error,
3 internal error (a bug: re-run with --debug for the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import OnnxPruneError
from . import analyze, bench, demo, finetune, prune, sensitivity
from . import eval as eval_cmd


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (scripts grep stderr); the full usage stays behind --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="onnxprune", description="Structured channel pruning of ONNX models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks (for bug reports)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", required=True)
    analyze.register(sub)
    prune.register(sub)
    eval_cmd.register(sub)
    bench.register(sub)
    sensitivity.register(sub)
    finetune.register(sub)
    demo.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="onnxprune: warning: %(message)s"
    )
    try:
        return args.func(args)
    except OnnxPruneError as e:
        if args.debug:
            raise
        print(f"onnxprune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("onnxprune: interrupted; no output written", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxprune: error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line, traceback with --debug
        if args.debug:
            raise
        print(
            f"onnxprune: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(re-run with --debug and report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
