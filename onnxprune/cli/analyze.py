"""``onnxprune analyze``: show the channel-dependency groups and what is prunable."""

from __future__ import annotations

import argparse

from .. import analyze
from ..save import save_json
from .common import add_model_args, add_selection_args


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="list channel-dependency groups, prunable or frozen (with the reason)",
        description="Find channel-dependency groups and report which can be pruned.",
    )
    add_model_args(p)
    add_selection_args(p)
    p.add_argument("--json", metavar="FILE", help="write the analysis as JSON")
    p.add_argument("--limit", type=int, default=0, help="show at most this many groups in the table (0: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    report = analyze(args.model, args.input_shape, args.exclude)
    print(report.table(args.limit))
    if args.json:
        save_json(report.to_json(), args.json)
    return 0
