"""Sensitivity analysis (Li et al. 2017, Fig. 2b): prune one group at a time at several ratios and measure
how much the model loses; ``allocation.sensitivity`` turns the result into per-group ratios.

With labels the loss is the top-1 drop in points; without, it is 100 - top-1 agreement with the original
(KL divergence is recorded too). Pruned copies are evaluated on data held in memory, so keep the
evaluation set small (``--limit``); groups can be spread over worker processes (``jobs``).

With recovery options (``--reconstruct``), each pruned copy is first recovered on the calibration data
as ``prune`` would recover it, so the measured loss is what remains after the refit. Models whose every
group collapses when pruned alone (a recogniser's CTC output) but recovers under least squares are told
apart only this way: the groups that least squares cannot repair are the ones to spare.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import onnx

from .allocation.sensitivity import FORMAT
from .allocation.uniform import kept_count, plan_from_counts
from .data import DataSpec, open_data
from .errors import OnnxPruneError
from .evaluation import evaluate_task, primary
from .groups import Analysis, analyse
from .load import build_graph
from .progress import bar as progress_bar
from .recovery import Recovery, RecoveryOptions, run_recovery
from .report_markdown import pyplot
from .rewrite import apply_plan
from .runtime import make_session, materialise
from .save import atomic_write

_STATE: dict = {}


def _softmax(x):
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def metrics(logits: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict:
    out = {"top1_agreement": 100.0 * float(np.mean(logits.argmax(1) == ref.argmax(1)))}
    p, q = _softmax(ref), _softmax(logits)
    out["kl_divergence"] = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    if labels is not None:
        out["top1"] = 100.0 * float(np.mean(logits.argmax(1) == labels))
    return out


def _logits(model, feeds_list, arrays=None) -> np.ndarray:
    sess = make_session(model, threads=1, arrays=arrays)
    outs = [np.asarray(sess.run(None, f)[0], dtype=np.float64) for f in feeds_list]
    return np.concatenate([o.reshape(len(o), -1) for o in outs])


def _init(state: dict) -> None:
    """Worker start: rebuild the graph and analysis from the model bytes (cheaper than pickling them)."""
    if "graph" not in state:
        graph = build_graph(onnx.load_from_string(state["model_bytes"]), state["input_shapes"])
        state = {**state, "graph": graph, "analysis": analyse(graph, tuple(state["exclude"]))}
    _STATE.clear()
    _STATE.update(state)


def _point(task: tuple[int, float, int]) -> dict:
    gid, ratio, n = task
    s = _STATE
    plan = plan_from_counts(s["analysis"], s["scores"], {gid: n})
    model = apply_plan(s["graph"], s["analysis"], plan)
    if s.get("recovery") is not None:
        rec = Recovery(s["graph"], s["analysis"], plan, model)
        run_recovery(rec, DataSpec(s["recovery_feeds"]), s["recovery"], s.get("seed", 0))
    if s.get("task") is not None:  # the user's metric on their own data (first key: the primary one)
        m = evaluate_task(model, s["task"])
    else:
        m = metrics(_logits(model, s["feeds"]), s["ref"], s["labels"])
    return {"group": gid, "ratio": ratio, "removed": len(plan.remove.get(gid, [])), **m}


def run_sensitivity(
    graph,
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    ratios: list[float],
    data,
    exclude=(),
    jobs: int = 1,
    progress: bool = False,
    task=None,
    recovery: RecoveryOptions | None = None,
    calib=None,
    seed: int = 0,
) -> dict:
    """``data`` evaluates top-1 (labels) or agreement with the original; ``task`` (a callable or
    ``module:function``, see ``evaluation.evaluate_task``) evaluates the user's own metric instead.
    ``recovery`` (with ``calib``, a DataSpec) recovers each pruned copy before it is measured."""
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise OnnxPruneError("--ratios must be numbers in (0, 1), e.g. 0.1,0.2,0.3")
    if jobs < 1:
        raise OnnxPruneError("--jobs must be at least 1")
    if task is not None and jobs > 1 and not isinstance(task, str):
        raise OnnxPruneError("with --jobs > 1 the task must be named as module:function (workers import it)")
    recovering = recovery is not None and recovery.active(calib is not None)
    if recovering and calib is None:
        raise OnnxPruneError("--reconstruct/--recalibrate need calibration data (--calib)")
    if task is not None:
        feeds, labels, ref = [], None, None
        base = evaluate_task(graph, task)
        metric = primary(base)[0]
    else:
        batches = list(open_data(data, graph))
        feeds = [f for f, _ in batches]
        labels = (
            None
            if any(lab is None for _, lab in batches)
            else np.concatenate([np.asarray(lab).reshape(-1) for _, lab in batches])
        )
        ref = _logits(graph.model, feeds, graph.consts)
        base = metrics(ref, ref, labels)
        metric = "top1" if labels is not None else "top1_agreement"
    tasks = []
    for g in analysis.groups:
        if not g.prunable or np.isnan(scores[g.id]).any():
            continue
        for r in sorted(set(ratios)):
            n = g.channels - kept_count(g.channels, r)
            if n > 0:
                tasks.append((g.id, r, n))
    state = {"scores": scores, "feeds": feeds, "ref": ref, "labels": labels, "task": task, "seed": seed}
    if recovering:  # read once: every pruned copy is recovered on the same batches
        state.update(recovery=recovery, recovery_feeds=[f for f, _ in open_data(calib, graph)])
    bar = None
    if progress:
        bar = progress_bar(total=len(tasks), desc="sensitivity", unit="model")
    results = []
    if jobs == 1:
        _init({**state, "graph": graph, "analysis": analysis})
        for t in tasks:
            results.append(_point(t))
            if bar is not None:
                bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        state.update(
            model_bytes=materialise(graph.model, graph.consts).SerializeToString(),
            input_shapes=graph.input_shapes,
            exclude=list(exclude),
        )
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init, initargs=(state,)) as ex:
            for res in ex.map(_point, tasks, chunksize=max(1, len(tasks) // (4 * jobs))):
                results.append(res)
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    groups = []
    for g in analysis.groups:
        pts = [r for r in results if r["group"] == g.id]
        for p in pts:
            p["drop"] = base[metric] - p[metric]
        if pts:
            groups.append(
                {
                    "id": g.id,
                    "sources": list(g.sources),
                    "channels": g.channels,
                    "points": [{k: v for k, v in p.items() if k != "group"} for p in pts],
                }
            )
    return {
        "format": FORMAT,
        "metric": metric,
        "baseline": base,
        "samples": len(ref) if ref is not None else None,
        "ratios": sorted(set(ratios)),
        "recovery": _recovery_meta(state.get("recovery")),
        "groups": groups,
    }


def _recovery_meta(options: RecoveryOptions | None) -> dict | None:
    """What each point was recovered with (None: measured as rewritten)."""
    if options is None:
        return None
    return {
        "reconstruct": options.reconstructs(True),
        "recalibrate": options.recalibrate,
        "bias_compensation": options.bias_compensation,
    }


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["ratio", "removed", "top1", "top1_agreement", "kl_divergence", "drop"]
    w.writerow(["group", "first_source", "channels"] + keys)
    for g in result["groups"]:
        for p in g["points"]:
            w.writerow([g["id"], g["sources"][0], g["channels"]] + [p.get(k, "") for k in keys])
    return buf.getvalue()


def plot(result: dict, path: str) -> bool:
    """One curve per group (Li et al. Fig. 2b); False (with a warning) without matplotlib."""
    plt = pyplot("no sensitivity plot")
    if plt is None:
        return False

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = result["baseline"][metric]
    for g in result["groups"]:
        xs = [0.0] + [p["ratio"] for p in g["points"]]
        ys = [base] + [p[metric] for p in g["points"]]
        ax.plot(xs, ys, marker=".", linewidth=1, label=f"{g['id']}: {g['sources'][0][-28:]}")
    ax.set_xlabel("fraction of the group's channels removed")
    labels = {"top1": "top-1 (%)", "top1_agreement": "top-1 agreement with the original (%)"}
    ax.set_ylabel(labels.get(metric, metric))
    ax.set_title("Sensitivity: one group pruned at a time")
    if len(result["groups"]) <= 24:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
    plt.close(fig)
    return True
