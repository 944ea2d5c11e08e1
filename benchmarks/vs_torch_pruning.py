"""onnxprune next to Torch-Pruning (Fang et al., DepGraph) on the same architectures, ratio and criterion.

    pip install torch-pruning        # benchmark-only dependency
    python benchmarks/vs_torch_pruning.py [--models resnet50,vgg16_bn] [--readme docs/RESULTS.md]

Both remove 30% of the channels of every prunable group by L1 filter norm (Torch-Pruning:
MagnitudePruner-style MetaPruner with MagnitudeImportance(p=1), the 1000-way classifier ignored;
onnxprune: ``prune --ratio 0.3 --criterion l1`` on the legacy ONNX export). Reported: wall time to prune
(Torch-Pruning: dependency graph + step on the torch module; onnxprune: load + analyse + score + rewrite +
exactness verification on the ONNX file), MACs and parameters of the ONNX files (one counter for all),
and latency speedup on onnxruntime CPU (2 threads, batch 1) with the three models interleaved.
Torch-Pruning runs with its default options: attention heads (``num_heads``) are not configured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import machine, markdown_table, replace_section  # noqa: E402

import onnxprune  # noqa: E402
from onnxprune import zoo  # noqa: E402
from onnxprune.bench import benchmark  # noqa: E402
from onnxprune.save import save_model  # noqa: E402

MODELS = (
    "resnet50,mobilenet_v2,vgg16_bn,efficientnet_b0,densenet121,regnet_y_400mf,shufflenet_v2_x1_0,"
    "googlenet,convnext_tiny,vit_b_16,swin_t"
)
RATIO = 0.3


def _torch_model(name):
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def torch_pruning_prune(name: str, out: str | None, size: int) -> dict:
    import torch
    import torch_pruning as tp

    model = _torch_model(name)
    x = torch.randn(1, 3, size, size)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO, ignored_layers=ignored
    )
    pruner.step()
    elapsed = time.perf_counter() - t
    with torch.no_grad():
        y = model(x)
    if tuple(y.shape) != (1, 1000):
        raise RuntimeError(f"pruned model returns shape {tuple(y.shape)}")
    if out is None:  # a timing repeat
        return {"prune_s": round(elapsed, 2)}
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 3, size, size),),
            out,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    return {"prune_s": round(elapsed, 2)}


def onnxprune_prune(src: str, out: str | None) -> dict:
    t = time.perf_counter()
    model, rep = onnxprune.prune(src, "l1", RATIO)
    elapsed = time.perf_counter() - t
    if out is not None:
        save_model(model, out)
    return {"prune_s": round(elapsed, 2), "exact": rep.verification["passed"]}


def run_one(name: str, workdir: str, iters: int, repeats: int = 1) -> dict:
    """``repeats`` > 1 times each tool that many times, alternating, and reports the median (the first
    call of each also pays one-time costs: file cache, lazy imports, allocator growth)."""
    size = 224
    src = os.path.join(workdir, f"{name}.onnx")
    if not os.path.exists(src):
        zoo.export(name, src, size=size)
    row = {"model": name}
    base = onnxprune.analyze(src).counts
    paths = {"original": src}
    for tool, fn in (
        ("onnxprune", lambda o: onnxprune_prune(src, o)),
        ("torch_pruning", lambda o: torch_pruning_prune(name, o, size)),
    ):
        out = os.path.join(workdir, f"{name}_{tool}.onnx")
        try:
            row[tool] = fn(out)
            c = onnxprune.analyze(out).counts
            row[tool].update(macs_ratio=round(c.macs / base.macs, 3), params_ratio=round(c.params / base.params, 3))
            paths[tool] = out
        except Exception as e:  # a tool failing on a model is a result of this benchmark
            row[tool] = {
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                "trace": traceback.format_exc()[-800:],
            }
    for _ in range(repeats - 1):
        for tool, fn in (
            ("onnxprune", lambda o: onnxprune_prune(src, o)),
            ("torch_pruning", lambda o: torch_pruning_prune(name, o, size)),
        ):
            if "error" not in row[tool]:
                row[tool].setdefault("prune_s_all", [row[tool]["prune_s"]]).append(fn(None)["prune_s"])
    for tool in ("onnxprune", "torch_pruning"):
        if "prune_s_all" in row[tool]:
            row[tool]["prune_s"] = round(float(sorted(row[tool]["prune_s_all"])[len(row[tool]["prune_s_all"]) // 2]), 2)
    if len(paths) > 1:
        rep = benchmark(list(paths.values()), "ort-cpu", threads=2, warmup=3, iters=iters, progress=True)
        for tool, m in zip(list(paths)[1:], rep.models[1:]):
            row[tool]["speedup"] = round(m.speedup, 3)
            row[tool]["ci"] = [round(v, 3) for v in m.speedup_ci]
        row["original_ms"] = round(rep.models[0].stats["median_ms"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="time each tool's pruning this many times (median)")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out", "vs-tp-models"))
    ap.add_argument("--out", default=os.path.join(HERE, "out", "vs_torch_pruning.json"))
    ap.add_argument("--readme")
    args = ap.parse_args()
    import torch_pruning

    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        row = run_one(name, args.workdir, args.iters, args.repeats)
        rows.append(row)
        print(
            json.dumps(
                {
                    k: ({kk: vv for kk, vv in v.items() if kk != "trace"} if isinstance(v, dict) else v)
                    for k, v in row.items()
                }
            ),
            flush=True,
        )
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "torch_pruning": torch_pruning.__version__, "rows": rows}, f, indent=1)
    if args.readme:
        replace_section(args.readme, "vs-tp", table(json.load(open(args.out))))


def table(data: dict) -> str:
    def cell(r):
        if "error" in r:
            return "fails: " + r["error"].split(":")[0], "–", "–"
        sp = f"{r['speedup']:.2f} ({r['ci'][0]:.2f}-{r['ci'][1]:.2f})" if "speedup" in r else "–"
        t = f"{r['prune_s']:.2f} s" + (f" (median of {len(r['prune_s_all'])})" if "prune_s_all" in r else "")
        return t, f"{r['macs_ratio']:.3f}", sp

    columns = ["model", "onnxprune time", "MACs kept", "ORT speedup", "Torch-Pruning time", "MACs kept", "ORT speedup"]
    rows = [[r["model"], *cell(r["onnxprune"]), *cell(r["torch_pruning"])] for r in data["rows"]]
    ok = {t: sum("error" not in r[t] for r in data["rows"]) for t in ("onnxprune", "torch_pruning")}
    note = (
        f"Handled: onnxprune {ok['onnxprune']}/{len(data['rows'])}, Torch-Pruning {data['torch_pruning']} "
        f"{ok['torch_pruning']}/{len(data['rows'])}. Machine: {data['machine']}; 2 threads, batch 1."
    )
    return markdown_table(columns, rows, "lrrrrrr", [note])


if __name__ == "__main__":
    main()
