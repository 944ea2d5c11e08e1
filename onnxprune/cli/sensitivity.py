"""``onnxprune sensitivity``: prune one group at a time, measure the loss, write JSON, CSV and a plot."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from .. import sensitivity
from ..errors import OnnxPruneError
from ..recovery import RecoveryOptions
from ..save import check_output_path, save_json, save_text
from ..sensitivity_measure import plot, to_csv
from .common import add_data_args, add_model_args, add_selection_args, add_task_arg, data_spec


def register(sub) -> None:

    p = sub.add_parser(
        "sensitivity",
        help="prune one group at a time at several ratios and measure the loss",
        description="Sensitivity analysis (Li et al. 2017): for every prunable group and ratio, the "
        "model with only that group pruned is evaluated on --eval (or --calib). Writes "
        "OUT.json (for `prune --sensitivity`), OUT.csv and OUT.png.",
    )
    add_model_args(p)
    add_selection_args(p)
    add_data_args(p, "--calib", required=False)
    p.add_argument("--eval", metavar="DATA", help="evaluation data (default: --calib); labels give top-1")
    add_task_arg(p, "measure your own metric instead of top-1")
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--criterion", default="l1", help="which channels go at each ratio")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="least-squares reconstruction of each pruned copy on --calib before it is measured (as "
        "`prune --reconstruct` would recover it): measures what recovery cannot repair",
    )
    p.add_argument("--recalibrate", action="store_true", help="statistics recalibration of each pruned copy")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("-o", "--output", default="sensitivity", help="output stem (default: sensitivity)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        raise OnnxPruneError(f"--ratios must be comma-separated numbers, got {args.ratios}") from None
    stem = args.output[:-5] if args.output.endswith(".json") else args.output
    for ext in (".json", ".csv", ".png"):
        check_output_path(stem + ext, [args.model])
    if args.task is None and args.calib is None:
        raise OnnxPruneError("sensitivity needs --calib (evaluation data, or --eval) or --task")
    calib = data_spec(args) if args.calib is not None else None
    recovery = None
    if args.reconstruct or args.recalibrate:  # without --calib, run_sensitivity refuses them before measuring
        recovery = RecoveryOptions(reconstruct=args.reconstruct, recalibrate=args.recalibrate)
    ev = None
    if args.task is None:
        ev = replace(calib, source=args.eval) if args.eval else calib
    res = sensitivity(
        args.model,
        args.criterion,
        ratios,
        data=ev,
        calib=calib,
        exclude=args.exclude,
        input_shapes=args.input_shape,
        seed=args.seed,
        jobs=args.jobs,
        progress=not args.quiet,
        task=args.task,
        recovery=recovery,
    )
    save_json(res, stem + ".json")
    save_text(to_csv(res), stem + ".csv")
    wrote = [stem + ".json", stem + ".csv"] + ([stem + ".png"] if plot(res, stem + ".png") else [])
    m = res["metric"]
    print(
        f"baseline {m} {res['baseline'][m]:.2f}"
        + (f" on {res['samples']} samples" if res["samples"] else " (task)")
        + f"; {len(res['groups'])} groups x "
        f"{len(res['ratios'])} ratios"
    )
    for g in sorted(res["groups"], key=lambda g: -max(p["drop"] for p in g["points"]))[:10]:
        worst = max(g["points"], key=lambda p: p["drop"])
        print(f"  group {g['id']:3d} {g['sources'][0][:50]:50s} drop {worst['drop']:6.2f} at ratio {worst['ratio']}")
    print("wrote " + ", ".join(os.path.basename(w) for w in wrote))
    return 0
