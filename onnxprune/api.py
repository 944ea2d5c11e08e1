"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import onnx

from .allocation.allocate import Allocation, allocate
from .count import count
from .criteria import CriterionOptions, get_criterion, group_scores
from .criteria.thinet import rescale as thinet_rescale
from .data import DataSpec
from .errors import OnnxPruneError, VerificationError
from .evaluation import evaluate as _evaluate
from .evaluation import evaluate_task
from .groups import analyse
from .load import Graph, build_graph, parse_input_shapes, read_arrays, read_model
from .options import PruneOptions, resolve
from .plan import PruningPlan
from .recovery import STATISTICS_INPUTS, Recovery, RecoveryOptions, run_recovery
from .recovery.finetune import finetune as _finetune
from .report import AnalysisReport, PruneReport
from .rewrite import apply_plan, check_rewrite
from .sensitivity_measure import run_sensitivity
from .verify import verify


def load(model, input_shapes=None) -> Graph:
    """Read (path or ModelProto) and normalise; ``input_shapes``: dict or list of ``name:1x3x224x224``."""
    if isinstance(input_shapes, (list, tuple)):
        input_shapes = parse_input_shapes(list(input_shapes))
    if isinstance(model, Graph):
        return model if not input_shapes else build_graph(model.materialised(), input_shapes)
    if isinstance(model, onnx.ModelProto):
        return build_graph(model, input_shapes or {})  # normalised on a copy: the caller's stays as it is
    # read here from a file: its weights become arrays as they are read, the model is normalised in place
    light, arrays = read_arrays(model)
    return build_graph(light, input_shapes or {}, owned=True, arrays=arrays)


def _group_macs(analysis, counts) -> None:
    """Each group's MACs share: the MACs of every node whose weights it slices."""
    node_groups: dict[str, set[int]] = {}
    atom_group, _ = analysis.atom_index()
    root_group = {}
    for a, r in enumerate(analysis.roots):
        if atom_group[a] >= 0:
            root_group[int(r)] = int(atom_group[a])
    for act in analysis.actions:
        if act.kind == "slice_param":
            lab = act.labels[act.labels >= 0]
            gids = {root_group.get(int(r)) for r in np.unique(analysis.roots[lab])}
            node_groups.setdefault(act.node, set()).update(x for x in gids if x is not None)
    for node, gids in node_groups.items():
        for gid in gids:
            analysis.groups[gid].macs += counts.per_node.get(node, 0)


def evaluate(model, data=None, reference=None, input_shapes=None, progress: bool = False, task=None) -> dict:
    """Top-1/top-5 on labelled data; agreement, |diff| and KL against ``reference`` when given. With
    ``task`` (a callable or ``module:function``, see ``evaluation.evaluate_task``) the task's own metrics
    instead, for the model and the reference."""
    if task is not None:  # the task feeds its own sizes: no shape analysis needed
        res = {"task": evaluate_task(model if isinstance(model, Graph) else read_model(model), task)}
        if reference is not None:
            res["reference"] = evaluate_task(reference if isinstance(reference, Graph) else read_model(reference), task)
        return res
    if data is None:
        raise OnnxPruneError("evaluate needs data (labelled or with a reference) or a task")

    graph = model if isinstance(model, Graph) else load(model, input_shapes)
    ref = None
    if reference is not None:
        ref = reference if isinstance(reference, Graph) else load(reference, input_shapes)
    return _evaluate(graph, as_data(data), ref, progress)


def analyze(model, input_shapes=None, exclude=()) -> AnalysisReport:
    graph = model if isinstance(model, Graph) else load(model, input_shapes)
    analysis = analyse(graph, tuple(exclude))
    counts = count(graph.model, graph.shapes)
    _group_macs(analysis, counts)
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else ""
    return AnalysisReport(analysis, counts, path, graph)


def as_data(data) -> DataSpec | None:
    """A DataSpec from a spec string, an iterable of feed dicts or a CalibrationDataReader."""
    if data is None or isinstance(data, DataSpec):
        return data
    return DataSpec(source=data)


def score_groups(
    graph: Graph,
    analysis,
    criterion: str | CriterionOptions = "l1",
    combine: str = "sum",
    seed: int = 0,
    data=None,
    **params,
) -> dict[int, np.ndarray]:
    """Per prunable group, its channels' scores; ``params`` are the criterion's own settings (checked)."""
    crit = criterion if isinstance(criterion, CriterionOptions) else CriterionOptions(criterion, combine, params)
    atom_scores = crit.scores(graph, analysis, data=as_data(data), seed=seed)
    return {g.id: group_scores(atom_scores, g.atoms, crit.combine) for g in analysis.groups if g.prunable}


def prune(
    model,
    criterion: str | CriterionOptions | None = None,
    ratio: float | None = None,
    *,
    options: PruneOptions | None = None,
    allocation: Allocation | None = None,
    recovery: RecoveryOptions | None = None,
    data=None,
    plan: PruningPlan | None = None,
    input_shapes=None,
    progress: bool = False,
    **shorthands,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune ``model`` and return ``(pruned ModelProto, PruneReport)``.

    ``options`` (a PruneOptions, as the CLI builds it) or its parts (``criterion``: a name or a
    CriterionOptions, default l1; ``allocation``,
    ``recovery``) say what to do; any of their fields can also be given as a keyword (``ratio=0.5``,
    ``target_macs=0.5``, ``round_to=8``, ``global_rank=True``, ``reconstruct=True``, ``samples=500``,
    ``steps=3``, ``seed=1``...), and a keyword none of them owns is an error. With ``plan`` the plan is
    replayed instead of scoring and allocating. ``steps`` > 1 prunes iteratively, re-scoring the partly
    pruned model between steps (Molchanov et al.), with the recovery after every step. Recovery runs after
    the verified rewrite; reconstruction is on by default when ``data`` is given."""
    t0 = time.perf_counter()
    opts = resolve(criterion, ratio, options, allocation, recovery, shorthands)
    opts.check(replaying=plan is not None, have_data=data is not None)
    report = analyze(model, input_shapes, opts.exclude)
    if opts.steps == 1:
        pruned, rep = _prune_once(report, opts, plan, data, progress)
    else:
        pruned, rep = _prune_steps(report, opts, data, progress)
    rep.timings["total"] = round(time.perf_counter() - t0, 4)
    _copy_metadata(report.graph.model, pruned)
    return pruned, rep


def _prune_steps(report: AnalysisReport, opts: PruneOptions, data, progress: bool):
    """K prune steps on the partly pruned model; each step's target is the cumulative one, so the
    rounding of earlier steps does not add up. Each step is verified against its own input, which makes
    the chain exact against the original with the union of removed channels masked."""
    alloc, steps = opts.allocation, opts.steps
    before = report.counts
    current, step_plans, rescaled, timings, recovered = report, [], [], {}, {}
    for s in range(1, steps + 1):
        done_macs = current.counts.macs / before.macs
        done_params = current.counts.params / before.params
        kw = {}
        if alloc.target_macs is not None:
            kw["target_macs"] = min(1.0, (1 - (1 - alloc.target_macs) * s / steps) / done_macs)
        elif alloc.target_params is not None:
            kw["target_params"] = min(1.0, (1 - (1 - alloc.target_params) * s / steps) / done_params)
        else:
            prev, cum = alloc.ratio * (s - 1) / steps, alloc.ratio * s / steps
            kw["ratio"] = 1 - (1 - cum) / (1 - prev)
        pruned, rep = _prune_once(current, replace(opts, allocation=replace(alloc, **kw)), None, data, progress)
        step_plans.append(rep.plan)
        rescaled += rep.rescaled
        for k, v in rep.recovery.items():
            if isinstance(v, list):
                recovered.setdefault(k, []).extend(v)
        for k, v in rep.timings.items():
            timings[k] = round(timings.get(k, 0.0) + v, 4)
        if s < steps:
            current = analyze(load(pruned, report.graph.input_shapes), None, opts.exclude)
    rep.before = before
    rep.plan = {**rep.plan, "meta": {**rep.plan["meta"], "steps": step_plans[:-1], "step": steps}}
    rep.rescaled, rep.timings = rescaled, timings
    rep.recovery = {**rep.recovery, **recovered}
    return pruned, rep


def _prune_once(report: AnalysisReport, opts: PruneOptions, plan: PruningPlan | None, data, progress: bool):
    graph, analysis = report.graph, report.analysis
    crit, alloc, recovery, seed = opts.criterion, opts.allocation, opts.recovery, opts.seed
    timings = {}
    if plan is None:
        t = time.perf_counter()
        scores = score_groups(graph, analysis, crit, seed=seed, data=data) if alloc.strategy != "greedy" else {}
        plan = allocate(graph, analysis, scores, alloc, crit.name, crit.combine, progress, rewrite=apply_plan)
        plan.meta.update(criterion=crit.name, combine=crit.combine)
        timings["score_allocate"] = time.perf_counter() - t
    t = time.perf_counter()
    pruned = apply_plan(graph, analysis, plan)
    shapes = check_rewrite(graph, analysis, plan, pruned)
    timings["rewrite"] = time.perf_counter() - t
    ver = None
    if opts.verify_rewrite:
        t = time.perf_counter()
        res = verify(graph, analysis, plan, pruned, seed=seed)
        timings["verify"] = time.perf_counter() - t
        ver = res.to_json()
        if not res.passed:
            raise VerificationError(f"{res.message()}; output not written")
    rescaled: list[str] = []
    recovered: dict = {}
    thinet = plan.meta.get("criterion") == "thinet"
    if opts.rescale and thinet and plan.remove and not recovery.reconstructs(data is not None):
        # after verification on purpose: the structural rewrite is proven exact first, then ThiNet's
        # least squares deliberately changes the kept weights of the layers that lost inputs
        t = time.perf_counter()
        # only ThiNet takes ``samples``; a replayed ThiNet plan under another criterion uses its default
        samples = int(crit.params.get("samples", get_criterion("thinet").parameters()["samples"]))
        rescaled = thinet_rescale(graph, analysis, plan, pruned, as_data(data), samples, seed)
        timings["rescale"] = time.perf_counter() - t
    if recovery.active(data is not None) and plan.remove:
        # after verification on purpose, like ThiNet's rescaling: the structure is proven exact first,
        # then recovery changes weights (and may add a bias input) without touching shapes
        t = time.perf_counter()
        recovered = run_recovery(Recovery(graph, analysis, plan, pruned), as_data(data), recovery, seed, progress)
        shapes = check_rewrite(graph, analysis, plan, pruned)
        timings["recovery"] = time.perf_counter() - t
    after = count(pruned, shapes)
    groups = []
    for g in analysis.groups:
        removed = sorted(plan.remove.get(g.id, []))
        gone = set(removed)
        groups.append(
            {
                "id": g.id,
                "sources": g.sources,
                "channels": g.channels,
                "prunable": g.prunable,
                "reason": g.reason,
                "macs": int(g.macs),
                "removed": removed,
                "kept": [c for c in range(g.channels) if c not in gone],
            }
        )
    rep = PruneReport(
        report.counts,
        after,
        plan.to_json(analysis),
        plan.meta.get("criterion", crit.name),
        ver,
        {k: round(v, 4) for k, v in timings.items()},
        groups,
        rescaled,
        recovered,
        list(analysis.notes),
    )
    return pruned, rep


def sensitivity(
    model,
    criterion: str = "l1",
    ratios=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *,
    data=None,
    calib=None,
    exclude=(),
    input_shapes=None,
    combine: str = "sum",
    seed: int = 0,
    jobs: int = 1,
    progress: bool = False,
    task=None,
    recovery: RecoveryOptions | None = None,
    **criterion_options,
) -> dict:
    """Prune one group at a time at each ratio (channels chosen by ``criterion`` on ``calib``) and measure
    top-1 (labels) or agreement and KL with the original on ``data``, or the primary metric of ``task``
    (see ``evaluation.evaluate_task``); with ``recovery`` (e.g. ``RecoveryOptions(reconstruct=True)``)
    each pruned copy is first recovered on ``calib``. See sensitivity_measure.py."""
    if (data is None) == (task is None):
        raise OnnxPruneError("sensitivity needs evaluation data (--data) or a task (--task), not both")

    report = analyze(model, input_shapes, exclude)
    scores = score_groups(report.graph, report.analysis, criterion, combine, seed, data=calib, **criterion_options)
    res = run_sensitivity(
        report.graph,
        report.analysis,
        scores,
        list(ratios),
        as_data(data),
        exclude,
        jobs,
        progress,
        task=task,
        recovery=recovery,
        calib=as_data(calib),
        seed=seed,
    )
    # what chose the channels (obs: greedy or one-shot), defaults included
    res.update(
        criterion=criterion,
        criterion_options={**get_criterion(criterion).parameters(), **criterion_options},
        model=os.fspath(model) if isinstance(model, (str, os.PathLike)) else "",
    )
    return res


def _plan_of(plan, analysis) -> PruningPlan:
    if isinstance(plan, PruningPlan):
        out = plan
    elif isinstance(plan, dict):
        out = PruningPlan.from_json(plan)
    else:
        out = PruningPlan.load(os.fspath(plan))
    out.validate(analysis)
    return out


def recover(
    original,
    pruned,
    plan,
    data,
    *,
    reconstruct: bool = True,
    bias_compensation: bool = False,
    recalibrate: bool = False,
    samples: int = 8192,
    ridge: float = 1e-3,
    recal_inputs: int | None = STATISTICS_INPUTS,
    input_shapes=None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[onnx.ModelProto, dict]:
    """Recovery steps on a model that ``prune`` made from ``original`` with ``plan`` (a PruningPlan, its JSON,
    or a saved plan file). Returns a new ModelProto; ``pruned`` is not modified. The pruned model is checked
    against the plan first, so a model from another plan is refused rather than silently mis-fitted."""
    report = analyze(original, input_shapes)
    the_plan = _plan_of(plan, report.analysis)
    src = read_model(pruned) if isinstance(pruned, (str, os.PathLike)) else pruned
    model = onnx.ModelProto()
    model.CopyFrom(src)
    try:
        check_rewrite(report.graph, report.analysis, the_plan, model)
    except OnnxPruneError as e:
        raise OnnxPruneError(f"the pruned model does not match this original and plan: {e}") from None
    if data is None:
        raise OnnxPruneError("recovery needs calibration data (--calib)")
    opts = RecoveryOptions(reconstruct, bias_compensation, recalibrate, samples, ridge, recal_inputs=recal_inputs)
    info = run_recovery(Recovery(report.graph, report.analysis, the_plan, model), as_data(data), opts, seed, progress)
    check_rewrite(report.graph, report.analysis, the_plan, model)
    return model, info


def finetune(
    pruned,
    teacher,
    data,
    *,
    epochs: int = 1,
    lr: float = 1e-4,
    temperature: float = 4.0,
    label_weight: float = 0.0,
    device: str = "cpu",
    eval_data=None,
    input_shapes=None,
    progress: bool = True,
    log=print,
):
    """Distil ``teacher`` (the original) into ``pruned`` through torch; returns a FinetuneResult whose
    ``model`` is a new ModelProto with the same graph and trained weights."""

    student = load(pruned, input_shapes)  # normalise copies: the caller's model is left as it is
    teacher_graph = teacher if isinstance(teacher, Graph) else load(teacher, input_shapes)
    if [i.name for i in _graph_inputs(student)] != [i.name for i in _graph_inputs(teacher_graph)]:
        raise OnnxPruneError("--teacher must have the same inputs as the pruned model")
    return _finetune(
        student,
        teacher_graph,
        as_data(data),
        epochs=epochs,
        lr=lr,
        temperature=temperature,
        label_weight=label_weight,
        device=device,
        eval_data=as_data(eval_data),
        progress=progress,
        log=log,
    )


def _graph_inputs(graph: Graph):
    return [i for i in graph.model.graph.input if i.name not in graph.consts]


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    dst.producer_name = src.producer_name or dst.producer_name
    entry = dst.metadata_props.add()
    entry.key, entry.value = "onnxprune", "pruned"


__all__ = [
    "load",
    "analyze",
    "prune",
    "score_groups",
    "evaluate",
    "sensitivity",
    "recover",
    "finetune",
    "Allocation",
    "OnnxPruneError",
]
