"""``onnxprune eval``: accuracy on labelled data and agreement with a reference model."""

from __future__ import annotations

import argparse
import json

from .. import evaluate
from ..errors import OnnxPruneError
from ..save import save_json
from .common import add_data_args, add_model_args, add_task_arg, data_spec


def register(sub) -> None:

    p = sub.add_parser(
        "eval",
        help="top-1/top-5 on data; agreement, |diff| and KL against --reference",
        description="Evaluate a model on data (streamed).",
    )
    add_model_args(p)
    add_data_args(p, "--data", required=False)
    p.add_argument("--reference", help="original model to compare against (top-1 agreement, |diff|, KL)")
    add_task_arg(p, "your own metric instead of top-1")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if (args.data is None) == (args.task is None):
        raise OnnxPruneError("give --data (top-1, agreement) or --task (your own metric)")
    data = data_spec(args, "data") if args.data is not None else None
    res = evaluate(args.model, data, args.reference, args.input_shape, progress=True, task=args.task)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in res.items()}))
    if args.json:
        save_json(res, args.json)
    return 0
