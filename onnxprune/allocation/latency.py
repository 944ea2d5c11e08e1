"""Latency-aware allocation measured on the serving runtime (HALP-style lookup table).

Latency is a staircase in the channel count, not a line (onnxruntime's blocked convolution kernels want
multiples of 8/16, TensorRT picks tactics per width), so MACs are a poor proxy. For every prunable group
the model is timed with only that group narrowed to several widths, interleaved with the original
(``bench``), which gives the latency saved per group and width. A plan's latency is predicted as the
original's minus the sum of those savings; widths are chosen greedily by importance lost per
millisecond saved until the prediction meets the budget.

The additive prediction is optimistic: each saving is a small difference of two noisy whole-model
timings, and the greedy picks exactly the entries whose noise made them look large (on resnet50 with
onnxruntime CPU a predicted 0.50 measured 0.93). So the plan is measured for real against the
original and the budget handed to the greedy is corrected by secant steps on (budget, measured
latency) until the measurement meets the target (``latency_plan_measured``).

The table is cached next to the model (``MODEL.latency.json``), keyed by the model's content, backend,
batch, threads and runtime, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable

import numpy as np

from ..bench import BACKENDS, benchmark, channel_block
from ..errors import OnnxPruneError
from ..groups import Analysis
from ..plan import PruningPlan
from ..progress import bar as progress_bar
from ..runtime import materialise
from ..save import save_json, save_model
from .uniform import kept_count, plan_from_counts

log = logging.getLogger(__name__)


def _digest(model) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()[:24]


def _widths(channels: int, points: int, round_to: int, min_channels: int) -> list[int]:
    ws = {kept_count(channels, 1 - k / points, round_to, min_channels) for k in range(1, points + 1)}
    return sorted(w for w in ws if w < channels)


def _time_variants(
    graph,
    analysis,
    plans: list[PruningPlan],
    backend: str,
    batch,
    threads: int,
    iters: int,
    rewrite,
    fp16=False,
    warmup: int = 2,
):
    """Median ms of the original and of each plan's model, measured interleaved. ``rewrite`` (the
    rewriter's ``apply_plan``) is passed in by the caller: allocation sits below the rewrite layer."""

    with tempfile.TemporaryDirectory(prefix="onnxprune-lat-") as tmp:
        paths = [os.path.join(tmp, "original.onnx")]
        save_model(materialise(graph.model, graph.consts), paths[0])
        for k, plan in enumerate(plans):
            paths.append(os.path.join(tmp, f"v{k}.onnx"))
            save_model(rewrite(graph, analysis, plan), paths[-1])
        rep = benchmark(
            paths,
            backend,
            batch=batch,
            # the shapes the model was analysed at (its other dynamic dims: an OCR line's width), with the
            # leading dim set to the benchmark batch where one is asked for
            input_shapes={k: (batch, *v[1:]) if batch and v else v for k, v in graph.input_shapes.items()},
            threads=threads,
            warmup=warmup,
            iters=iters,
            fp16=fp16,
        )
    return [m.stats["median_ms"] for m in rep.models]


def _narrow(analysis: Analysis, gid: int, width: int) -> PruningPlan:
    g = analysis.groups[gid]
    return plan_from_counts(analysis, {gid: -np.arange(g.channels, dtype=float)}, {gid: g.channels - width})


def latency_table(
    graph,
    analysis: Analysis,
    cache_path: str | None,
    backend: str = "ort-cpu",
    batch: int | None = None,
    threads: int = 0,
    points: int = 8,
    round_to: int = 1,
    min_channels: int = 1,
    iters: int = 10,
    progress: bool = False,
    *,
    rewrite,
    fp16: bool = False,
) -> dict:

    runtime = BACKENDS[backend].describe()
    key = f"{_digest(graph.model)}|{backend}|{batch}|{threads}|{fp16}|{points}|{round_to}|{min_channels}|{runtime}"
    cache = {}
    if cache_path and os.path.exists(cache_path):
        try:
            cache = json.load(open(cache_path))
        except ValueError:
            cache = {}
        if key in cache:
            return {**cache[key], "cached": True}
    groups = [g for g in analysis.groups if g.prunable]
    bar = None
    if progress:
        bar = progress_bar(total=len(groups), desc=f"latency table ({backend})", unit="group")
    table = {"original_ms": [], "groups": {}}
    for g in groups:
        ws = _widths(g.channels, points, round_to, min_channels)
        if ws:
            ms = _time_variants(
                graph, analysis, [_narrow(analysis, g.id, w) for w in ws], backend, batch, threads, iters, rewrite, fp16
            )
            # each group's row is relative to the original timed in the same interleaved run
            table["groups"][str(g.id)] = {"widths": ws + [g.channels], "saved_ms": [ms[0] - m for m in ms[1:]] + [0.0]}
            table["original_ms"].append(ms[0])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    table["original_ms"] = float(np.median(table["original_ms"])) if table["original_ms"] else 0.0
    if cache_path and os.access(os.path.dirname(os.path.abspath(cache_path)), os.W_OK):
        cache[key] = table
        save_json(cache, cache_path)
    elif cache_path:
        log.warning("cannot cache the latency table: %s is not writable", os.path.dirname(os.path.abspath(cache_path)))
    return {**table, "cached": False}


def latency_saved(table: dict, gid: int, removed: int) -> float:
    """Fraction of the original latency that removing ``removed`` channels of group ``gid`` saves, by the
    table: the slope of the least-squares line through its measured (channels removed, ms saved)
    points, with an intercept, never negative.

    Why a line and not the measured points: each point is a small difference of two noisy whole-model
    timings (on the PP-OCRv5 recogniser at 9 ms, 10 runs each, consecutive widths of one group read
    0.29, 0.22, 0.06, 0.22, 0.10, 0.27 ms), so the points would rank groups by their noise; the slope
    over all of a group's widths keeps what they share, how much the group's channels cost.
    Why an intercept: every point of a row is measured against the same timing of the original, so
    that timing's error is an offset shared by the whole row (a 60-channel squeeze-excitation group
    read 0.12-0.35 ms "saved" for 4 channels); a line through the origin turned the offset into slope.
    On the recogniser's sensitivity plans at -30% MACs the table predicted 0.747 and 0.717 of the
    latency through the origin, 0.804 and 0.791 with the intercept; measured 0.81 and 0.82."""
    row = table["groups"].get(str(gid))
    if not row or not table.get("original_ms") or removed <= 0:
        return 0.0
    slope, _ = _line(row)
    return max(slope, 0.0) * removed / table["original_ms"]


def _line(row: dict) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through a row's measured (channels removed, ms
    saved) points, the full width (0 by definition, not measured) left out; with one measured point,
    the line through the origin."""
    full = row["widths"][-1]
    n = np.array([full - w for w in row["widths"][:-1]], dtype=float)
    ms = np.array(row["saved_ms"][:-1], dtype=float)
    if len(n) >= 2:
        dn = n - n.mean()
        slope = float(dn @ (ms - ms.mean())) / max(float(dn @ dn), 1e-12)
        return slope, float(ms.mean() - slope * n.mean())
    return (float(ms[0] / n[0]) if len(n) else 0.0), 0.0


def _without_offset(row: dict) -> dict:
    offset = _line(row)[1]
    return {**row, "saved_ms": [v - offset for v in row["saved_ms"][:-1]] + [row["saved_ms"][-1]]}


def check_target_latency(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise OnnxPruneError(f"--target-latency must be in (0, 1], got {target}")


def score_loss(scores: dict[int, np.ndarray]) -> Callable[[int, int], float]:
    """Importance lost when a group loses its ``n`` lowest-scored channels: the sum of their scores."""
    order = {gid: np.cumsum(np.sort(s)) for gid, s in scores.items() if len(s) and not np.isnan(s).any()}

    def loss(gid: int, n: int) -> float:
        if gid not in order:
            return float("inf")
        return float(order[gid][n - 1]) if n > 0 else 0.0

    return loss


def latency_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    table: dict,
    keep_fraction: float,
    loss: Callable[[int, int], float] | None = None,
) -> tuple[PruningPlan, float]:
    """Greedy by loss per millisecond saved; returns (plan, predicted fraction of the latency).

    ``loss(group, n_removed)`` is what a group loses with ``n_removed`` channels gone: by default the
    summed (normalised) scores of those channels, or a measured drop (``--sensitivity``); infinite
    where the group must not go. ``keep_fraction`` is a budget in the table's (predicted) units; the
    closed loop may push it below zero when the table is that optimistic.
    """
    loss = loss or score_loss(scores)
    l0 = table["original_ms"]
    # each row's points less the offset its shared timing of the original put on all of them (``_line``):
    # left in, every group's first cut looked worth that offset and the prediction summed it per group
    rows = {int(k): _without_offset(v) for k, v in table["groups"].items()}
    cur = {gid: len(v["widths"]) - 1 for gid, v in rows.items()}  # index of the current width (full)
    saved = 0.0
    while l0 - saved > keep_fraction * l0:
        best = None
        for gid, i in cur.items():
            r = rows[gid]
            full = r["widths"][-1]
            for j in range(i):
                gain = r["saved_ms"][j] - r["saved_ms"][i]
                if gain <= 0:
                    continue
                lost = loss(gid, full - r["widths"][j]) - loss(gid, full - r["widths"][i])
                if not np.isfinite(lost):
                    continue
                cand = (lost / gain, gid, j, gain)
                if best is None or cand < best:
                    best = cand
        if best is None:
            break
        _, gid, j, gain = best
        cur[gid] = j
        saved += gain
    n_remove = {gid: rows[gid]["widths"][-1] - rows[gid]["widths"][i] for gid, i in cur.items()}
    plan = plan_from_counts(analysis, scores, n_remove)
    pred = (l0 - saved) / l0 if l0 else 1.0
    plan.meta.update(allocation="latency", target_latency=keep_fraction, predicted_latency=pred)
    return plan, pred


def latency_plan_measured(
    graph,
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    table: dict,
    target: float,
    backend: str = "ort-cpu",
    batch: int | None = None,
    threads: int = 0,
    iters: int = 50,
    tol: float = 0.02,
    rounds: int = 6,
    *,
    rewrite,
    fp16: bool = False,
    loss: Callable[[int, int], float] | None = None,
) -> PruningPlan:
    """Closed loop around ``latency_plan``: the returned plan's latency was measured, not predicted.

    Keeps the slowest plan whose measured latency is within ``tol`` of the target (or below);
    when none is, the fastest one measured, with a warning.
    """
    check_target_latency(target)
    tried: list[tuple[float, float, float, PruningPlan]] = []  # (budget, predicted, measured, plan)
    budget = target
    for _ in range(rounds):
        plan, pred = latency_plan(analysis, scores, table, budget, loss)
        if tried and plan.remove == tried[-1][3].remove:
            break  # the greedy cannot prune further (every group at its minimum width) or the budget stalled
        ms = _time_variants(graph, analysis, [plan], backend, batch, threads, iters, rewrite, fp16, warmup=5)
        measured = ms[1] / ms[0]
        tried.append((budget, pred, measured, plan))
        log.info("latency budget %.3f: predicted %.3f, measured %.3f", budget, pred, measured)
        if abs(measured - target) <= tol or (measured < target and budget >= 1.0):
            break
        if len(tried) >= 2 and abs(tried[-1][2] - tried[-2][2]) > 1e-3:
            (b0, _, m0, _), (b1, _, m1, _) = tried[-2], tried[-1]
            nxt = b1 + (target - m1) * (b1 - b0) / (m1 - m0)
        else:
            nxt = budget * target / measured
        budget = float(np.clip(nxt, -5.0, 1.0))
    ok = [t for t in tried if t[2] <= target + tol]
    if ok:  # the slowest plan that meets the target is the one that pruned least
        budget, pred, measured, plan = max(ok, key=lambda t: t[2])
    else:
        budget, pred, measured, plan = min(tried, key=lambda t: t[2])
        log.warning(
            "--target-latency %.3f not reached: the fastest plan measured %.3f of the original", target, measured
        )
    plan.meta.update(
        predicted_latency=pred,
        measured_latency=measured,
        latency_budget=budget,
        latency_rounds=[
            {"budget": round(b, 4), "predicted": round(p, 4), "measured": round(m, 4)} for b, p, m, _ in tried
        ],
    )
    return plan


def auto_round_to(
    graph,
    analysis: Analysis,
    backend: str = "ort-cpu",
    batch: int | None = None,
    threads: int = 0,
    span: int = 32,
    iters: int = 10,
    candidates=(32, 16, 8, 4, 2),
    *,
    rewrite,
    fp16: bool = False,
) -> tuple[int, dict]:
    """The channel multiple the runtime rewards: the backend's own channel block where it can tell
    (onnxruntime CPU: its NCHWc block, 16 on AVX-512) and most prunable MACs are convolutions', else
    read off a measured staircase.

    Why not always the staircase: it times one convolution group, whose timings on a shared 2-core
    machine are noisier than a step of a few percent, and it cannot see what a width costs elsewhere:
    on the YOLOX character detector it read 4, while widths that are not whole NCHWc blocks put every
    CSP Concat out of the blocked layout (13 more reorder pairs; 1.15x at -30% MACs against 1.28x).
    The staircase: the group with the most MACs is timed at every width from W down to W - span (W: a
    multiple of ``span`` near three quarters of its channels). The answer is the largest multiple m
    whose widths are faster than the widths just below them (the step of the staircase) for most
    steps; else 1.
    """
    block = channel_block(backend)
    if block and _mostly_convolutional(analysis):
        return block, {"channel_block": block}
    groups = [g for g in analysis.groups if g.prunable and g.channels > span + 1]
    if not groups:
        return 1, {}
    g = max(groups, key=lambda g: g.macs)
    top = max(span, (3 * g.channels // 4) // span * span)
    widths = list(range(top, top - span - 1, -1))
    plans = [_narrow(analysis, g.id, w) for w in widths]
    ms = _time_variants(graph, analysis, plans, backend, batch, threads, iters, rewrite, fp16)
    lat = dict(zip(widths, ms[1:]))
    for m in candidates:
        steps = [w for w in widths if w % m == 0 and w - 1 in lat and w - m // 2 in lat]
        wins = [lat[w] < min(lat[w - k] for k in range(1, m // 2 + 1)) for w in steps]
        if wins and sum(wins) >= 0.75 * len(wins):
            return m, {"group": g.id, "latency_ms": lat}
    return 1, {"group": g.id, "latency_ms": lat}


def _mostly_convolutional(analysis: Analysis) -> bool:
    """Whether groups produced by convolutions hold at least half the prunable MACs (the channel
    block of a convolution runtime says little about a transformer's MatMuls)."""
    convs = {s.node for s in analysis.sources if s.op_type == "Conv"}
    macs = [(g.macs, any(n in convs for n in g.sources)) for g in analysis.groups if g.prunable]
    total = sum(m for m, _ in macs)
    return total > 0 and 2 * sum(m for m, conv in macs if conv) >= total
