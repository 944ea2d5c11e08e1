"""Argument groups shared by subcommands (Polygraphy style) and the error contract of the CLI."""

from __future__ import annotations

import argparse

from ..data import DataSpec
from ..errors import OnnxPruneError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input ONNX model (external data is read from beside it)")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:1x3x224x224",
        help="concrete shape for an input with dynamic dims (repeatable); a dynamic batch defaults to 1",
    )


def add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="freeze the groups whose source node names match any of these globs",
    )


def add_data_args(p: argparse.ArgumentParser, flag: str = "--calib", required: bool = False) -> None:
    g = p.add_argument_group("data (calibration/evaluation)")
    g.add_argument(
        flag,
        required=required,
        metavar="DATA",
        help="random:N | file.npz (arrays by input name, optional labels) | file.npy | a folder of "
        "images (class sub-folders = labels) | package.module:function returning feed dicts",
    )
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--limit", type=int, default=None, help="use at most this many samples")
    g.add_argument("--size", default=None, metavar="HxW", help="resize images to HxW (default: the model's input)")
    g.add_argument("--mean", default="0", help="per-channel mean after scaling pixels to [0,1], e.g. 0.485,0.456,0.406")
    g.add_argument("--std", default="1", help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument("--channel-order", default="RGB", choices=["RGB", "BGR"])
    g.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"])


def data_spec(args: argparse.Namespace, flag: str = "calib"):

    src = getattr(args, flag)
    if src is None:
        return None
    try:
        size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
        mean = tuple(float(v) for v in args.mean.split(","))
        std = tuple(float(v) for v in args.std.split(","))
    except ValueError:
        raise OnnxPruneError("--size is HxW and --mean/--std are comma-separated numbers") from None
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or any(s == 0 for s in std):
        raise OnnxPruneError("--batch-size and --limit must be positive and --std non-zero")
    return DataSpec(
        src,
        batch_size=args.batch_size,
        limit=args.limit,
        size=size,
        mean=mean,
        std=std,
        channel_order=args.channel_order,
        layout=args.layout,
        seed=getattr(args, "seed", 0),
    )


def add_task_arg(p: argparse.ArgumentParser, purpose: str) -> None:
    """``--task``: the user's own metric, shared by eval, sensitivity and prune."""
    p.add_argument(
        "--task",
        metavar="MODULE:FUNCTION",
        help=f"{purpose}: module:function or file.py:function, called with predict(feeds) -> outputs, "
        "returning a dict of metrics (first = primary, higher is better)",
    )
