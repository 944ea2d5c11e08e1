"""``onnxprune finetune``: distil the original into the pruned model through torch; weights written back."""

from __future__ import annotations

import argparse

from .. import finetune
from ..errors import OnnxPruneError
from ..save import check_output_path, save_json, save_model
from .common import add_data_args, add_model_args, data_spec


def register(sub) -> None:

    p = sub.add_parser(
        "finetune",
        help="knowledge distillation of a pruned model towards the original (torch)",
        description="Fine-tune the weights of PRUNED so its outputs match --teacher's (KL on "
        "temperature-softened outputs, optional cross-entropy with labels). The graph "
        "structure is unchanged; weights are written back into the ONNX file.",
    )
    add_model_args(p)
    p.add_argument("--teacher", required=True, help="the original (unpruned) model")
    p.add_argument("-o", "--output", required=True, help="fine-tuned model path (written atomically)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument(
        "--labels",
        type=float,
        nargs="?",
        const=1.0,
        default=0.0,
        metavar="WEIGHT",
        help="add cross-entropy with the data's labels, weighted (default weight 1 when given)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--eval", metavar="DATA", help="held-out data: KL to the teacher printed before and after each epoch"
    )
    p.add_argument("--json", metavar="FILE", help="per-epoch history as JSON")
    add_data_args(p, "--calib", required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    check_output_path(args.output, [args.model, args.teacher])
    if args.json:
        check_output_path(args.json, [args.model, args.teacher, args.output])
    if args.epochs < 1:
        raise OnnxPruneError("--epochs must be at least 1")
    eval_spec = None
    if args.eval:
        eval_spec = data_spec(argparse.Namespace(**{**vars(args), "calib": args.eval}))
    res = finetune(
        args.model,
        args.teacher,
        data_spec(args),
        epochs=args.epochs,
        lr=args.lr,
        temperature=args.temperature,
        label_weight=args.labels,
        device=args.device,
        eval_data=eval_spec,
        input_shapes=args.input_shape,
        progress=not args.quiet,
    )
    save_model(res.model, args.output)
    if args.json:
        save_json({"epochs": res.epochs, "parameters": res.parameters}, args.json)
    print(f"fine-tuned {res.parameters} weights over {args.epochs} epoch(s); wrote {args.output}")
    return 0
