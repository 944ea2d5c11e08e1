"""``onnxprune prune``: score, allocate, rewrite, verify, write."""
from __future__ import annotations

import argparse
import logging
import os

from ..errors import OnnxPruneError

log = logging.getLogger(__name__)


def _criteria_help() -> str:
    from ..criteria import CRITERIA

    return "; ".join(f"{c.name}: {c.help}" for c in CRITERIA.values())


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def register(sub) -> None:
    from .common import add_data_args, add_model_args, add_selection_args

    p = sub.add_parser("prune", help="prune channels and write a smaller model that verifies exact",
                       description="Prune channels of an ONNX model. Every rewrite is verified against the original "
                                   "with the removed channels masked out, unless --no-verify.")
    add_model_args(p)
    add_selection_args(p)
    p.add_argument("-o", "--output", required=True, help="pruned model path (written atomically)")
    p.add_argument("--criterion", default="l1", help="channel importance: " + _criteria_help())
    p.add_argument("--ratio", type=_ratio, default=0.3, help="fraction of each prunable group's channels to remove")
    p.add_argument("--target-macs", type=float, default=None, metavar="F",
                   help="instead of --ratio: keep this fraction of the MACs (uniform ratio found by bisection)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept channels a multiple of N (e.g. 8 for tensor cores)")
    p.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a group")
    p.add_argument("--combine", default="sum", choices=["sum", "mean", "max"],
                   help="how the scores of a group's producers combine into one channel score (default: sum)")
    p.add_argument("--seed", type=int, default=0, help="seed for random scores and verification inputs")
    p.add_argument("--plan", metavar="FILE", help="replay a saved plan instead of scoring and allocating")
    p.add_argument("--save-plan", metavar="FILE", help="write the plan (which channels of which group) as JSON")
    p.add_argument("--report", action="append", default=[], metavar="FILE",
                   help="write the report: FILE.json for machines, FILE.md for people (per-group table, totals, "
                        "PNG plots beside it); repeatable")
    p.add_argument("--no-verify", action="store_true", help="skip the exactness check (not recommended)")
    p.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data (automatic over 2 GB)")
    p.add_argument("--nu", type=float, default=0.9, help="weak-layer penalty factor (criterion weak-layer)")
    p.add_argument("--samples", type=int, default=2000, help="ThiNet: reconstruction samples per consumer layer")
    p.add_argument("--no-rescale", action="store_true", help="ThiNet: skip the least-squares rescaling")
    add_data_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import prune
    from ..plan import PruningPlan
    from ..report_markdown import markdown, plots
    from ..save import check_output_path, save_json, save_model, save_text, size_on_disk
    from .common import data_spec

    check_output_path(args.output, [args.model])
    for r in args.report:
        if os.path.splitext(r)[1].lower() not in (".json", ".md"):
            raise OnnxPruneError(f"--report {r}: the name must end in .json or .md")
        check_output_path(r, [args.model, args.output])
    if args.round_to < 1 or args.min_channels < 1:
        raise OnnxPruneError("--round-to and --min-channels must be at least 1")
    plan = PruningPlan.load(args.plan) if args.plan else None
    model, report = prune(args.model, args.criterion, args.ratio, round_to=args.round_to,
                          min_channels=args.min_channels, exclude=args.exclude, input_shapes=args.input_shape,
                          plan=plan, verify_rewrite=not args.no_verify, combine=args.combine, seed=args.seed,
                          data=data_spec(args), nu=args.nu, samples=args.samples, rescale=not args.no_rescale,
                          target_macs=args.target_macs)
    if not any(g["prunable"] for g in report.groups):
        log.warning("no prunable groups: nothing to prune; the output is an unchanged copy")
    save_model(model, args.output, external=args.external_data or None)
    files = {"input_bytes": size_on_disk(args.model), "output_bytes": size_on_disk(args.output)}
    for r in args.report:
        if r.lower().endswith(".md"):
            pngs = plots(report, os.path.splitext(r)[0])
            save_text(markdown(report, args.model, args.output, files, pngs), r)
        else:
            save_json({**report.to_json(), "files": files}, r)
    if args.save_plan:
        save_json(report.plan, args.save_plan)
    print(report.summary())
    print(f"wrote {args.output}")
    return 0
