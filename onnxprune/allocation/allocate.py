"""One entry point from allocation settings to a plan: uniform, global, PFEC-greedy, sensitivity-driven,
or latency-aware, optionally searched to a MACs/params target."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..bench import BACKENDS
from ..criteria import get_criterion
from ..errors import OnnxPruneError
from ..groups import Analysis
from ..plan import PruningPlan
from .global_rank import NORMALISATIONS, global_plan, normalise
from .latency import auto_round_to, check_target_latency, latency_plan_measured, latency_saved, latency_table
from .pfec_greedy import check_strategy, greedy_plan
from .sensitivity import densify, measured_loss, measured_points, ratios_from_sensitivity, tradeoff_ratios
from .targets import counts_of, plan_for_target
from .uniform import check_ratio, check_rounding, kept_count, ratio_plan, uniform_plan

log = logging.getLogger(__name__)

# Kept channels a multiple of 8 by default: onnxruntime's CPU convolutions (NCHWc) and tensor cores work on
# blocks of 8, and other widths measured slower than the unpruned model (README latency table, round-to 1)
DEFAULT_ROUND_TO = 8
WEIGHINGS = ("target", "latency")


@dataclass
class Allocation:
    """How many channels each group loses. ``round_to`` 0 means "auto" (measured on ``backend``)."""

    ratio: float = 0.3
    round_to: int = DEFAULT_ROUND_TO
    min_channels: int = 1
    global_rank: bool = False
    normalisation: str = "auto"  # l2, or none for criteria whose scores are comparable across groups (obs)
    max_ratio: float = 0.9
    strategy: str = "independent"
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    sensitivity: dict | None = None
    max_drop: float | None = None
    backend: str = "ort-cpu"
    bench_batch: int | None = None
    bench_threads: int = 0
    bench_fp16: bool = False
    latency_cache: str | None = None
    nu: float = 0.9
    # with --sensitivity and a MACs/params target: what a cut's measured drop is weighed against, the
    # target's own metric ("target") or the latency it saves on ``backend`` ("latency", latency table)
    weigh_against: str = "target"

    def check(self, criterion: str) -> None:
        check_ratio(self.ratio)
        check_rounding(max(self.round_to, 1), self.min_channels)
        check_strategy(self.strategy, criterion)
        if self.normalisation != "auto" and self.normalisation not in NORMALISATIONS:
            choices = ", ".join(("auto", *NORMALISATIONS))
            raise OnnxPruneError(f"unknown --normalise '{self.normalisation}'; choose from {choices}")
        targets = [t for t in ("target_macs", "target_params", "target_latency") if getattr(self, t) is not None]
        if len(targets) > 1:
            raise OnnxPruneError("give one of --target-macs, --target-params, --target-latency")
        if self.target_latency is not None:
            check_target_latency(self.target_latency)
        if self.weigh_against not in WEIGHINGS:
            raise OnnxPruneError(f"unknown --weigh-against '{self.weigh_against}'; choose from {', '.join(WEIGHINGS)}")
        if self.weigh_against == "latency" and (
            self.sensitivity is None or self.max_drop is not None or self.target_latency is not None or not targets
        ):
            raise OnnxPruneError(
                "--weigh-against latency needs --sensitivity and --target-macs or --target-params "
                "(--target-latency already spends measured latency)"
            )
        if self.target_latency is not None or self.round_to == 0 or self.weigh_against == "latency":
            if self.backend not in BACKENDS:
                raise OnnxPruneError(f"unknown backend '{self.backend}'; choose from {', '.join(BACKENDS)}")
            missing = BACKENDS[self.backend].available()
            if missing:  # before any work: these allocations time rewritten models on the backend
                raise OnnxPruneError(missing)
        if self.max_drop is not None and self.sensitivity is None:
            raise OnnxPruneError("--max-drop needs --sensitivity")
        modes = [
            self.global_rank,
            self.strategy == "greedy",
            self.sensitivity is not None or self.target_latency is not None,
        ]
        if sum(modes) > 1:
            raise OnnxPruneError(
                "--global, --strategy greedy and --sensitivity/--target-latency are separate allocations; choose one"
            )
        if self.sensitivity is not None:
            if self.max_drop is not None and targets:
                raise OnnxPruneError("--max-drop sets each group's ratio itself; drop the target (or --max-drop)")
            if self.max_drop is None and not targets:
                raise OnnxPruneError(
                    "--sensitivity needs --max-drop or a target (--target-macs, --target-params, --target-latency)"
                )

    def meta(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k not in ("sensitivity", "latency_cache")}


def resolved_normalisation(how: str, criterion: str) -> str:
    """``auto``: l2 per group (Molchanov et al.), except for a criterion whose scores already share one
    scale across groups (obs), which l2 would distort: a group whose every channel is cheap would be
    stretched to the same norm as one whose every channel is costly."""
    if how != "auto":
        return how
    return "none" if get_criterion(criterion).comparable else "l2"


def allocate(
    graph,
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    alloc: Allocation,
    criterion: str = "l1",
    combine: str = "sum",
    progress: bool = False,
    rewrite=None,
) -> PruningPlan:
    """``rewrite`` (the rewriter's ``apply_plan``) is needed by the allocations that time rewritten
    models (``--target-latency``, ``--round-to auto``); the caller passes it, since allocation sits
    below the rewrite layer."""
    alloc.check(criterion)
    normalisation = resolved_normalisation(alloc.normalisation, criterion)
    measured_with = (alloc.sensitivity or {}).get("criterion")
    if measured_with and measured_with != criterion:
        log.warning(
            "the sensitivity file was measured with criterion '%s' and this run removes channels by '%s': "
            "its drops describe other channels",
            measured_with,
            criterion,
        )
    if rewrite is None and (
        alloc.round_to == 0 or alloc.target_latency is not None or alloc.weigh_against == "latency"
    ):
        raise OnnxPruneError(
            "--target-latency, --weigh-against latency and --round-to auto time rewritten models: "
            "pass rewrite=apply_plan"
        )
    round_to = alloc.round_to
    measured = {}
    if round_to == 0:
        round_to, measured = auto_round_to(
            graph,
            analysis,
            alloc.backend,
            alloc.bench_batch,
            alloc.bench_threads,
            rewrite=rewrite,
            fp16=alloc.bench_fp16,
        )
    table = None
    if alloc.target_latency is not None or alloc.weigh_against == "latency":
        table = latency_table(
            graph,
            analysis,
            alloc.latency_cache,
            alloc.backend,
            alloc.bench_batch,
            alloc.bench_threads,
            round_to=round_to,
            min_channels=alloc.min_channels,
            progress=progress,
            rewrite=rewrite,
            fp16=alloc.bench_fp16,
        )
    if alloc.target_latency is not None:
        assert table is not None
        loss = None
        if alloc.sensitivity is not None:  # what each width loses, as measured, instead of criterion scores
            points = measured_points(alloc.sensitivity, analysis)
            loss = measured_loss(points, {gid: analysis.groups[gid].channels for gid in points})
        plan = latency_plan_measured(
            graph,
            analysis,
            normalise(scores, normalisation, alloc.nu),
            table,
            alloc.target_latency,
            alloc.backend,
            alloc.bench_batch,
            alloc.bench_threads,
            rewrite=rewrite,
            fp16=alloc.bench_fp16,
            loss=loss,
        )
        if alloc.sensitivity is not None:
            plan.meta["loss"] = "sensitivity"
        plan.meta["latency_table_cached"] = table["cached"]
    elif alloc.sensitivity is not None and alloc.max_drop is None:
        plan = _sensitivity_to_target(graph, analysis, scores, alloc, round_to, table)
    elif alloc.sensitivity is not None:
        ratios = ratios_from_sensitivity(alloc.sensitivity, analysis, alloc.max_drop)
        plan = ratio_plan(analysis, scores, lambda gid: ratios.get(gid, 0.0), round_to, alloc.min_channels)
        plan.meta["group_ratios"] = {str(k): v for k, v in ratios.items()}
    else:
        if alloc.global_rank:

            def make(x):
                return global_plan(
                    analysis,
                    scores,
                    x,
                    max_ratio=alloc.max_ratio,
                    round_to=round_to,
                    min_channels=alloc.min_channels,
                    normalisation=normalisation,
                    nu=alloc.nu,
                )
        elif alloc.strategy == "greedy":
            ord_ = 1 if criterion == "l1" else 2

            def make(x):
                n = {
                    g.id: g.channels - kept_count(g.channels, x, round_to, alloc.min_channels)
                    for g in analysis.groups
                    if g.prunable
                }
                return greedy_plan(graph, analysis, n, ord_, combine)
        else:

            def make(x):
                return uniform_plan(analysis, scores, x, round_to, alloc.min_channels)

        metric = "macs" if alloc.target_macs is not None else "params" if alloc.target_params is not None else None
        if metric:
            target = alloc.target_macs if metric == "macs" else alloc.target_params
            order = (
                None
                if alloc.global_rank or alloc.strategy == "greedy"
                else _cheapest_first(normalise(scores, "l2", alloc.nu))
            )
            plan, _, knob = plan_for_target(graph, analysis, make, target, metric, blend_order=order)
            plan.meta["ratio" if not alloc.global_rank else "fraction"] = knob
        else:
            plan = make(alloc.ratio)
    plan.meta.update({k: v for k, v in alloc.meta().items() if k not in plan.meta})
    plan.meta["round_to"] = round_to
    if measured:
        plan.meta["round_to_auto"] = measured
    return plan


def _sensitivity_to_target(
    graph, analysis, scores, alloc: Allocation, round_to: int, table: dict | None = None
) -> PruningPlan:
    """Ratios per group that reach the target with the least summed measured loss (``tradeoff_ratios``,
    between measured ratios by ``densify``); what each group saves at each measured ratio is counted on
    the model's shapes, or, with a latency ``table`` (``--weigh-against latency``), read off the table:
    the target is still met in MACs (parameters), with the cuts that save the most measured time for
    their loss. Why: MACs miss what does not scale with a convolution's multiply-adds (the PP-OCRv5
    recogniser's squeeze-excitation groups and those of its SVTR neck, which runs on 40 tokens, hold 2%
    of its MACs and, by the table's lines, a quarter of its latency: element-wise work, small kernels),
    and a MACs allocation leaves a group that saves no MACs whole even where cutting it loses nothing."""
    metric = "macs" if alloc.target_macs is not None else "params"
    target = alloc.target_macs if metric == "macs" else alloc.target_params
    points = measured_points(alloc.sensitivity, analysis)
    points = {gid: p for gid, p in points.items() if analysis.groups[gid].prunable and gid in scores}
    total = getattr(counts_of(graph, analysis, PruningPlan()), metric)

    def plan_at(ratios: dict[int, float]) -> PruningPlan:
        return ratio_plan(analysis, scores, lambda gid: ratios.get(gid, 0.0), round_to, alloc.min_channels)

    saved = {
        gid: {r: 1.0 - getattr(counts_of(graph, analysis, plan_at({gid: r})), metric) / max(total, 1) for r, _ in pts}
        for gid, pts in points.items()
    }
    if table is not None:
        saved = {
            gid: {r: _latency_saving(table, analysis, gid, r, round_to, alloc, s) for r, s in row.items()}
            for gid, row in saved.items()
        }
    points, saved = densify(points, saved)

    def make(knob: float) -> PruningPlan:
        return plan_at(tradeoff_ratios(points, saved, knob))

    def removed_ratio(plan: PruningPlan, gid: int) -> float:
        return len(plan.remove.get(gid, [])) / analysis.groups[gid].channels

    def loss_per_saving(light: PruningPlan, heavy: PruningPlan) -> list[int]:
        """Blend order where two knob values jump over the target: the groups whose extra cut loses
        least (interpolated drop) per unit saved go first."""

        def cost(gid: int) -> float:
            if gid not in points:
                return float("inf")
            xs, ys = [0.0] + [r for r, _ in points[gid]], [0.0] + [d for _, d in points[gid]]
            ss = [0.0] + [saved[gid][r] for r, _ in points[gid]]
            a, b = removed_ratio(light, gid), removed_ratio(heavy, gid)
            gain = float(np.interp(b, xs, ss) - np.interp(a, xs, ss))
            return float(np.interp(b, xs, ys) - np.interp(a, xs, ys)) / max(gain, 1e-12)

        return sorted(heavy.remove, key=cost)

    plan, _, _ = plan_for_target(graph, analysis, make, target, metric, blend_order=loss_per_saving)
    plan.meta["group_ratios"] = {str(gid): round(removed_ratio(plan, gid), 4) for gid in sorted(points)}
    plan.meta["allocation"] = "sensitivity"
    if table is not None:
        plan.meta["weigh_against"] = "latency"
        plan.meta["predicted_latency"] = round(
            1.0 - sum(latency_saved(table, gid, len(rm)) for gid, rm in plan.remove.items()), 4
        )
        plan.meta["latency_table_cached"] = table["cached"]
    return plan


def _latency_saving(
    table: dict, analysis, gid: int, ratio: float, round_to: int, alloc: Allocation, target_saved
) -> float:
    """What cutting group ``gid`` at ``ratio`` saves by the latency table, plus a thousandth of what it
    saves of the target's metric: a heavier cut then always saves more (the bisection's largest knob
    still reaches the target) and groups the table shows no saving for are ranked by the target."""
    channels = analysis.groups[gid].channels
    removed = channels - kept_count(channels, ratio, round_to, alloc.min_channels)
    return latency_saved(table, gid, removed) + 1e-3 * target_saved


def _cheapest_first(scores: dict[int, np.ndarray]):
    """Blend order for uniform plans that cannot land on a target: the groups whose extra channels
    (removed by the heavier plan only) matter least by the criterion go first."""

    def order(light: PruningPlan, heavy: PruningPlan) -> list[int]:
        def cost(gid: int) -> float:
            extra = sorted(set(heavy.remove.get(gid, [])) - set(light.remove.get(gid, [])))
            return float(np.mean(scores[gid][extra])) if extra and gid in scores else float("inf")

        return sorted(heavy.remove, key=cost)

    return order
