"""``onnxprune demo``: the whole pipeline on a model it exports itself (needs torch + torchvision)."""

from __future__ import annotations

import argparse
import os

from .. import analyze, prune, zoo
from ..errors import OnnxPruneError
from ..save import save_json, save_model


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="export a torchvision model, analyze it, prune it and verify the result",
        description="Export torchvision MODEL (random weights) with the chosen exporter, then run "
        "analyze and prune --ratio RATIO on it, writing both models and the report.",
    )
    p.add_argument("--model", default="resnet18", help="torchvision classification model name")
    p.add_argument("--dynamo", action="store_true", help="use torch.onnx.export(dynamo=True)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--out", default="onnxprune-demo", help="folder for the exported and pruned models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    src = os.path.join(args.out, f"{args.model}.onnx")
    print(f"exporting torchvision {args.model} ({'dynamo' if args.dynamo else 'legacy'} exporter) -> {src}")
    try:
        zoo.export(args.model, src, dynamo=args.dynamo)
    except ImportError:
        raise OnnxPruneError("the demo needs torch and torchvision: pip install 'onnxprune[torch]'") from None
    report = analyze(src)
    print(report.table(limit=12))
    pruned, rep = prune(report.graph, ratio=args.ratio)
    out = os.path.join(args.out, f"{args.model}_pruned.onnx")
    save_model(pruned, out)
    save_json(rep.to_json(), os.path.join(args.out, "report.json"))
    print(rep.summary())
    print(f"wrote {out} and {os.path.join(args.out, 'report.json')}")
    return 0
