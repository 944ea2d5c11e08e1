"""``onnxprune prune``: score, allocate, rewrite, verify, write."""

from __future__ import annotations

import argparse
import logging
import os

from .. import prune
from ..allocation.allocate import DEFAULT_ROUND_TO, Allocation
from ..allocation.sensitivity import load_sensitivity
from ..bench import BACKENDS, benchmark
from ..criteria import CRITERIA, CriterionOptions, get_criterion
from ..errors import OnnxPruneError
from ..evaluation import evaluate_task, primary
from ..load import parse_input_shapes, read_model
from ..options import PruneOptions
from ..plan import PruningPlan
from ..recovery import STATISTICS_INPUTS, RecoveryOptions
from ..report_markdown import markdown, plots
from ..save import check_output_path, save_json, save_model, save_text, size_on_disk
from .common import add_data_args, add_model_args, add_selection_args, add_task_arg, data_spec

log = logging.getLogger(__name__)


def _criteria_help() -> str:

    return "; ".join(f"{c.name}: {c.help}" for c in CRITERIA.values())


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _bytes(text: str) -> int:
    """A size in bytes: 4G, 512M, 64K or a plain number."""
    scale, number = 1, text
    if text[-1:].isalpha():
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1].upper(), 0)
        number = text[:-1]
    try:
        v = float(number) * scale
    except ValueError:
        v = -1.0
    if scale == 0 or v < 0:
        raise argparse.ArgumentTypeError(f"a size such as 4G, 512M or 1000000, got {text}")
    return int(v)


def _round_to(text: str) -> int:
    if text == "auto":
        return 0
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a positive integer or 'auto', got {text}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return v


def register(sub) -> None:

    p = sub.add_parser(
        "prune",
        help="prune channels and write a smaller model that verifies exact",
        description="Prune channels of an ONNX model. Every rewrite is verified against the original "
        "with the removed channels masked out, unless --no-verify.",
    )
    add_model_args(p)
    add_selection_args(p)
    p.add_argument("-o", "--output", required=True, help="pruned model path (written atomically)")
    p.add_argument("--criterion", default="l1", help="channel importance: " + _criteria_help())
    p.add_argument("--ratio", type=_ratio, default=0.3, help="fraction of each prunable group's channels to remove")
    a = p.add_argument_group("allocation (how many channels each group loses)")
    a.add_argument(
        "--target-macs",
        type=float,
        default=None,
        metavar="F",
        help="instead of --ratio: keep this fraction of the MACs (search over the ratio or global threshold)",
    )
    a.add_argument(
        "--target-params",
        type=float,
        default=None,
        metavar="F",
        help="instead of --ratio: keep this fraction of the parameters",
    )
    a.add_argument(
        "--global",
        dest="global_rank",
        action="store_true",
        help="rank channels across groups after --normalise; --ratio is then the fraction of all prunable "
        "channels removed",
    )
    a.add_argument(
        "--normalise",
        default="auto",
        choices=["auto", "none", "l2", "max", "weak-layer"],
        help="per-group score normalisation for --global and --target-latency (default auto: l2 as in "
        "Molchanov et al., none for obs, whose scores are already comparable across groups)",
    )
    a.add_argument("--max-ratio", type=float, default=0.9, help="--global: never remove more of a group (default 0.9)")
    a.add_argument(
        "--strategy",
        default="independent",
        choices=["independent", "greedy"],
        help="l1/l2 (PFEC): greedy leaves out kernels reading channels already removed upstream",
    )
    a.add_argument(
        "--sensitivity",
        metavar="FILE",
        help="sensitivity JSON from `onnxprune sensitivity`: with --max-drop each group gets the largest "
        "ratio whose measured drop stays under it; with --target-macs/--target-params/--target-latency the "
        "target is spent where the measured drop per MAC (parameter, measured millisecond) saved is lowest",
    )
    a.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="D",
        help="with --sensitivity: allowed drop per group (top-1 points, or agreement points without labels)",
    )
    a.add_argument(
        "--steps",
        type=int,
        default=1,
        metavar="K",
        help="prune iteratively in K steps, re-scoring the partly pruned model between steps",
    )
    a.add_argument(
        "--target-latency",
        type=float,
        default=None,
        metavar="F",
        help="keep this fraction of the latency measured on --backend (per-group latency table, cached "
        "as MODEL.latency.json)",
    )
    a.add_argument(
        "--weigh-against",
        default="target",
        choices=["target", "latency"],
        help="with --sensitivity and --target-macs/--target-params: weigh each cut's measured drop against "
        "what it saves of the target (default) or of the latency measured on --backend (per-group latency "
        "table, cached as MODEL.latency.json); the target is met either way, with the cuts that make the "
        "model fastest for their loss",
    )
    a.add_argument(
        "--backend",
        default="ort-cpu",
        choices=list(BACKENDS),
        help="runtime for --target-latency, --weigh-against latency and --round-to auto",
    )
    a.add_argument("--bench-threads", type=int, default=0, help="ort-cpu threads for latency measurements")
    a.add_argument(
        "--bench-fp16", action="store_true", help="latency measurements in FP16 (trt, torch-cuda: tensor cores)"
    )
    a.add_argument(
        "--bench-batch", type=int, default=None, help="batch for latency measurements (default: the analysis shape)"
    )
    a.add_argument(
        "--round-to",
        type=_round_to,
        default=DEFAULT_ROUND_TO,
        metavar="N|auto",
        help=f"kept channels a multiple of N (default {DEFAULT_ROUND_TO}: onnxruntime's CPU convolutions work on "
        "blocks of 8 channels (NCHWc; 16 on AVX-512 machines) and tensor cores on multiples of 8, so other widths "
        "can run slower than the original: mobilenet_v2 and efficientnet_b0 at -30%% MACs ran at 0.60x and 0.63x "
        "with --round-to 1); 1 for exact ratios; auto: the multiple --backend works on, its channel block where "
        "it tells (ort-cpu), else read off a measured latency staircase",
    )
    p.add_argument("--min-channels", type=int, default=1, help="never keep fewer channels in a group")
    p.add_argument(
        "--combine",
        default="sum",
        choices=["sum", "mean", "max"],
        help="how the scores of a group's producers combine into one channel score (default: sum)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random scores and verification inputs")
    p.add_argument("--plan", metavar="FILE", help="replay a saved plan instead of scoring and allocating")
    p.add_argument("--save-plan", metavar="FILE", help="write the plan (which channels of which group) as JSON")
    p.add_argument(
        "--report",
        action="append",
        default=[],
        metavar="FILE",
        help="write the report: FILE.json for machines, FILE.md for people (per-group table, totals, "
        "PNG plots beside it); repeatable",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the exactness check (not recommended)")
    p.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data (automatic over 2 GB)")
    p.add_argument(
        "--copy-unprunable",
        action="store_true",
        help="when the model has no prunable groups, still write OUTPUT (an unchanged copy)",
    )
    p.add_argument("--nu", type=float, default=0.9, help="weak-layer penalty factor (criterion weak-layer)")
    p.add_argument("--samples", type=int, default=2000, help="ThiNet: reconstruction samples per consumer layer")
    p.add_argument("--no-rescale", action="store_true", help="ThiNet: skip the least-squares rescaling")
    p.add_argument(
        "--one-shot",
        action="store_true",
        help="obs: cost each channel alone on the original weights, without the greedy OBS update between removals",
    )
    r = p.add_argument_group("recovery without retraining (needs --calib)")
    r.add_argument(
        "--reconstruct",
        dest="reconstruct",
        action="store_true",
        default=None,
        help="least-squares refit of the kept weights and bias of every layer that lost inputs, layer by "
        "layer against the original's outputs (default: on when --calib is given)",
    )
    r.add_argument("--no-reconstruct", dest="reconstruct", action="store_false")
    r.add_argument(
        "--bias-compensation",
        action="store_true",
        help="fold the mean contribution of removed channels into the consumer's bias (exact for "
        "constant channels and consumers without zero padding)",
    )
    r.add_argument(
        "--recalibrate",
        action="store_true",
        help="recompute remaining BatchNorm statistics; where BN was folded, match each affected layer's "
        "per-channel output mean and variance to the original's",
    )
    r.add_argument(
        "--recon-samples",
        type=int,
        default=8192,
        metavar="N",
        help=(
            "sample positions per refitted layer (default 8192; a depthwise layer takes 256 per unknown of "
            "one channel where that is fewer)"
        ),
    )
    r.add_argument(
        "--ridge",
        type=float,
        default=1e-3,
        help="ridge strength towards the plain pruned weights, relative to the data scale (default 1e-3)",
    )
    r.add_argument(
        "--recal-inputs",
        type=int,
        default=STATISTICS_INPUTS,
        metavar="N",
        help=f"--recalibrate: take the statistics on at least N calibration inputs, whole batches spread "
        f"evenly over the set (default {STATISTICS_INPUTS}; 0: every input)",
    )
    r.add_argument(
        "--memory-budget",
        type=_bytes,
        default=None,
        metavar="SIZE",
        help="activations recovery keeps in memory before spilling to disk, e.g. 4G or 512M "
        "(default: 40%% of the memory available when recovery starts)",
    )
    add_data_args(p)
    add_task_arg(p, "evaluate the original and the pruned model with your own metric (both go into the report)")
    p.set_defaults(func=run)


def _criterion(args: argparse.Namespace) -> CriterionOptions:
    """--nu, --samples and --one-shot go to the criteria that take them (weak-layer, ThiNet, obs)."""
    takes = get_criterion(args.criterion).parameters()
    if args.one_shot and "greedy" not in takes:
        raise OnnxPruneError(f"--one-shot is an obs setting; criterion '{args.criterion}' does not take it")
    given = {"nu": args.nu, "samples": args.samples, "greedy": not args.one_shot}
    return CriterionOptions(args.criterion, args.combine, {k: v for k, v in given.items() if k in takes})


def run(args: argparse.Namespace) -> int:

    check_output_path(args.output, [args.model])
    for r in args.report:
        if os.path.splitext(r)[1].lower() not in (".json", ".md"):
            raise OnnxPruneError(f"--report {r}: the name must end in .json or .md")
        check_output_path(r, [args.model, args.output])
    if args.min_channels < 1:
        raise OnnxPruneError("--min-channels must be at least 1")
    plan = PruningPlan.load(args.plan) if args.plan else None
    sens = None
    if args.sensitivity:
        sens = load_sensitivity(args.sensitivity)
    alloc = Allocation(
        ratio=args.ratio,
        round_to=args.round_to,
        min_channels=args.min_channels,
        global_rank=args.global_rank,
        normalisation=args.normalise,
        max_ratio=args.max_ratio,
        strategy=args.strategy,
        target_macs=args.target_macs,
        target_params=args.target_params,
        target_latency=args.target_latency,
        sensitivity=sens,
        max_drop=args.max_drop,
        backend=args.backend,
        bench_batch=args.bench_batch,
        bench_threads=args.bench_threads,
        bench_fp16=args.bench_fp16,
        latency_cache=os.path.splitext(args.model)[0] + ".latency.json",
        nu=args.nu,
        weigh_against=args.weigh_against,
    )
    if args.recon_samples < 1 or args.ridge < 0 or args.recal_inputs < 0:
        raise OnnxPruneError("--recon-samples must be positive, --ridge and --recal-inputs non-negative")
    recovery = RecoveryOptions(
        args.reconstruct,
        args.bias_compensation,
        args.recalibrate,
        args.recon_samples,
        args.ridge,
        args.memory_budget,
        args.recal_inputs or None,
    )
    options = PruneOptions(
        criterion=_criterion(args),
        allocation=alloc,
        recovery=recovery,
        exclude=tuple(args.exclude),
        steps=args.steps,
        verify_rewrite=not args.no_verify,
        rescale=not args.no_rescale,
        seed=args.seed,
    )
    model, report = prune(
        args.model,
        options=options,
        input_shapes=args.input_shape,
        plan=plan,
        data=data_spec(args),
        progress=not args.quiet,
    )
    if not any(g["prunable"] for g in report.groups):
        why = "".join(f"; {n}" for n in report.notes)
        if not args.copy_unprunable:
            log.warning(
                "no prunable groups%s: nothing to prune; no output written (--copy-unprunable writes an "
                "unchanged copy; `onnxprune analyze` shows why each group is frozen)",
                why,
            )
            return 0
        log.warning("no prunable groups%s: nothing to prune; the output is an unchanged copy", why)
    task = None
    if args.task:  # before anything is written: a failing task leaves no output behind
        task = {"original": evaluate_task(read_model(args.model), args.task), "pruned": evaluate_task(model, args.task)}
    save_model(model, args.output, external=args.external_data or None)
    measured = None
    if args.target_latency is not None:
        b = benchmark(
            [args.model, args.output],
            args.backend,
            batch=args.bench_batch,
            threads=args.bench_threads,
            fp16=args.bench_fp16,
            input_shapes=parse_input_shapes(args.input_shape),
            warmup=3,
            iters=30,
        )
        m = b.models[1]
        measured = {
            "backend": b.runtime,
            "original_ms": b.models[0].stats["median_ms"],
            "pruned_ms": m.stats["median_ms"],
            "fraction": 1 / m.speedup,
            "speedup": m.speedup,
            "speedup_ci": m.speedup_ci,
        }
    files = {"input_bytes": size_on_disk(args.model), "output_bytes": size_on_disk(args.output)}
    for r in args.report:
        if r.lower().endswith(".md"):
            pngs = plots(report, os.path.splitext(r)[0])
            save_text(markdown(report, args.model, args.output, files, pngs), r)
        else:
            extra = {**({"latency": measured} if measured else {}), **({"task": task} if task else {})}
            save_json({**report.to_json(), "files": files, **extra}, r)
    if args.save_plan:
        save_json(report.plan, args.save_plan)
    print(report.summary())
    rec = report.recovery
    if rec:
        done = ", ".join(
            f"{k.replace('_', ' ')} {len(rec[k])} layers"
            for k in ("bias_compensated", "reconstructed", "recalibrated")
            if k in rec
        )
        print(
            f"recovery: {done}"
            + (f"; {len(rec['skipped'])} layers left as they are (see the report)" if rec.get("skipped") else "")
        )
    if task:
        name, before = primary(task["original"])
        print(f"task {name}: {before:.2f} -> {task['pruned'][name]:.2f}")
    if measured:
        print(
            f"latency on {measured['backend']}: {measured['original_ms']:.2f} ms -> {measured['pruned_ms']:.2f} ms "
            f"({measured['fraction']:.2f} of the original, "
            f"predicted {report.plan['meta'].get('predicted_latency', 1):.2f})"
        )
    print(f"wrote {args.output}")
    return 0
