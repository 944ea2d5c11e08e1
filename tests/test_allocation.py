"""Allocation: global ranking, targets, PFEC greedy, sensitivity, iterative steps, latency tables."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from graphs import G, absorbable
from test_cli import run, small_model

import onnxprune
from onnxprune.allocation import latency as lat
from onnxprune.allocation.allocate import Allocation, allocate
from onnxprune.allocation.global_rank import global_plan
from onnxprune.allocation.sensitivity import densify, measured_loss, ratios_from_sensitivity, tradeoff_ratios
from onnxprune.criteria import group_scores  # noqa: F401  (registers the criteria)
from onnxprune.plan import PruningPlan
from onnxprune.rewrite import apply_plan

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "calib", "samples", "fmnist_256.npz")


@pytest.mark.parametrize("model", ["resnet20.onnx", "vgg11_dynamo.onnx", "mbv2.onnx"])
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_global_targets_are_met_within_one_percent(shared_models, model, metric):
    path = os.path.join(shared_models, model)
    pruned, rep = onnxprune.prune(path, "l1", global_rank=True, round_to=1, **{f"target_{metric}": 0.5})
    achieved = getattr(rep.after, metric) / getattr(rep.before, metric)
    assert 0.495 <= achieved <= 0.5, achieved  # a target is a ceiling
    assert rep.plan["meta"][f"achieved_{metric}"] == pytest.approx(achieved)
    assert rep.verification["passed"]


def test_max_ratio_is_never_exceeded(shared_models):
    rep = onnxprune.analyze(os.path.join(shared_models, "resnet56.onnx"))
    scores = onnxprune.score_groups(rep.graph, rep.analysis, "l1")
    for max_ratio in (0.3, 0.6):
        for norm in ("none", "l2", "max", "weak-layer"):
            plan = global_plan(rep.analysis, scores, 0.5, max_ratio=max_ratio, normalisation=norm)
            for g in rep.groups:
                assert len(plan.remove.get(g.id, [])) <= int(max_ratio * g.channels), (norm, g.id)


def test_normalisation_changes_the_global_ranking(trained_models):
    rep = onnxprune.analyze(os.path.join(trained_models, "resnet20.onnx"))
    scores = onnxprune.score_groups(rep.graph, rep.analysis, "l1")
    plans = {n: global_plan(rep.analysis, scores, 0.3, normalisation=n).remove for n in ("none", "l2", "max")}
    counts = {n: {g: len(c) for g, c in p.items()} for n, p in plans.items()}
    assert counts["none"] != counts["l2"] and counts["l2"] != counts["max"]
    total = sum(g.channels for g in rep.groups if g.prunable)
    for c in counts.values():  # the same number of channels, spread differently
        assert sum(c.values()) == int(0.3 * total)


def _pfec_case():
    """a (4 ch) -> relu -> b (4 ch) -> head. a's channel 0 is the weakest filter; b's filter 0 is large
    only through its kernel on a's channel 0; b's filter 3 is uniformly small."""
    b = G(shape=(1, 2, 6, 6))
    wa = np.ones((4, 2, 1, 1), np.float32)
    wa[0] *= 0.01
    wb = np.full((4, 4, 1, 1), 1.0, np.float32)
    wb[0] = 0.05
    wb[0, 0] = 100.0
    wb[3] = 0.2
    a = b.op("Relu", [b.conv(b.x, 2, 4, k=1, name="a", w=wa)])
    y = b.conv(b.op("Relu", [b.conv(a, 4, 4, k=1, name="b", w=wb)]), 4, 3, k=1, name="head")
    b.output(y)
    return b.model()


def test_pfec_greedy_differs_from_independent_as_documented(tmp_path):
    path = str(tmp_path / "pfec.onnx")
    onnx.save(_pfec_case(), path)
    removed = {}
    for strategy in ("independent", "greedy"):
        _, rep = onnxprune.prune(path, "l1", 0.25, strategy=strategy, round_to=1)
        removed[strategy] = {tuple(g["sources"]): g["removed"] for g in rep.groups if g["removed"]}
    assert removed["independent"][("a",)] == removed["greedy"][("a",)] == [0]
    assert removed["independent"][("b",)] == [3]  # filter 0 looks big because of a's channel 0...
    assert removed["greedy"][("b",)] == [0]  # ...which greedy no longer counts


def test_greedy_needs_a_norm_criterion(tmp_path):
    rc, _, err = run(
        "prune", small_model(tmp_path), "-o", str(tmp_path / "o.onnx"), "--strategy", "greedy", "--criterion", "fpgm"
    )
    assert rc == 1 and "l1 or l2" in err


def test_sensitivity_round_trips_into_an_allocation(trained_models, tmp_path):
    src = os.path.join(trained_models, "resnet20.onnx")
    stem = str(tmp_path / "sens")
    rc, out, err = run(
        "-q", "sensitivity", src, "--calib", SAMPLES, "--limit", "128", "--ratios", "0.3,0.7", "-o", stem
    )
    assert rc == 0, err
    res = json.loads(open(stem + ".json").read())
    assert res["metric"] == "top1" and res["samples"] == 128
    assert open(stem + ".png", "rb").read(4) == b"\x89PNG"
    assert len(open(stem + ".csv").read().strip().splitlines()) == 1 + sum(len(g["points"]) for g in res["groups"])
    for g in res["groups"]:
        assert [p["ratio"] for p in g["points"]] == [0.3, 0.7]
    drops = sorted(p["drop"] for g in res["groups"] for p in g["points"])
    max_drop = drops[len(drops) // 2]
    report = onnxprune.analyze(src)
    ratios = ratios_from_sensitivity(res, report.analysis, max_drop)
    out_model, rep_json = tmp_path / "p.onnx", tmp_path / "r.json"
    rc, _, err = run(
        "prune",
        src,
        "-o",
        str(out_model),
        "--sensitivity",
        stem + ".json",
        "--round-to",
        "1",
        "--max-drop",
        str(max_drop),
        "--report",
        str(rep_json),
    )
    assert rc == 0, err
    rep = json.loads(rep_json.read_text())
    by_id = {g["id"]: g for g in rep["groups"]}
    assert 0 < sum(1 for r in ratios.values() if r > 0) < len(ratios)  # the budget separates groups
    for g in res["groups"]:
        r = ratios[g["id"]]
        assert len(by_id[g["id"]]["removed"]) == g["channels"] - onnxprune.allocation.kept_count(g["channels"], r)
        if r > 0:
            assert all(p["drop"] <= max_drop for p in g["points"] if p["ratio"] <= r)


def test_sensitivity_parallel_equals_serial(trained_models):
    src = os.path.join(trained_models, "resnet20.onnx")
    data = onnxprune.DataSpec(SAMPLES, limit=64)
    a = onnxprune.sensitivity(src, ratios=[0.5], data=data)
    b = onnxprune.sensitivity(src, ratios=[0.5], data=data, jobs=2)
    assert a["groups"] == b["groups"]
    calib, rec = onnxprune.DataSpec(SAMPLES, limit=64), onnxprune.RecoveryOptions(reconstruct=True)
    a = onnxprune.sensitivity(src, ratios=[0.5], data=data, calib=calib, recovery=rec)
    b = onnxprune.sensitivity(src, ratios=[0.5], data=data, calib=calib, recovery=rec, jobs=2)
    assert a["groups"] == b["groups"]  # the workers recover each copy as the parent would


def test_sensitivity_file_from_another_model_is_refused(trained_models, tmp_path):
    res = {"format": "onnxprune.sensitivity/1", "groups": [{"id": 0, "sources": ["nope"], "points": []}]}
    with pytest.raises(onnxprune.OnnxPruneError, match="does not match"):
        ratios_from_sensitivity(res, onnxprune.analyze(os.path.join(trained_models, "resnet20.onnx")).analysis, 1.0)


def test_tradeoff_spares_the_groups_that_lose_most_per_mac_saved():
    points = {
        0: [(0.25, 0.1), (0.5, 0.2), (0.75, 0.4)],  # cheap
        1: [(0.25, 5.0), (0.5, 9.0), (0.75, 20.0)],  # costly for what it saves
        2: [(0.25, -0.3), (0.5, 0.0), (0.75, 0.1)],  # measured a gain: counts as no loss
        3: [(0.25, 1.0), (0.5, 0.2), (0.75, 3.0)],  # a noisy dip at 0.5 does not make it cheaper than 0.25
    }
    saved = {g: {0.25: 0.05, 0.5: 0.1, 0.75: 0.15} for g in points}
    prev = dict.fromkeys(points, 0.0)
    for knob in np.linspace(0.0, 0.99, 60):
        r = tradeoff_ratios(points, saved, float(knob))
        assert all(r[g] >= prev[g] for g in points)  # monotone in the knob: a target can be bisected
        prev = r
        if 0 < r[1]:
            assert r[0] == 0.75 and r[2] == 0.75  # the costly group goes only after the cheap ones are used up
        if 0 < r[3] < 0.5:
            raise AssertionError("the envelope of group 3's drops is 1.0 from 0.25 on")
    assert tradeoff_ratios(points, saved, 0.0) == dict.fromkeys(points, 0.0)
    assert prev == dict.fromkeys(points, 0.75)
    # between measured ratios: the convex hull of the envelope (0 -> 1.0 at 0.5 -> 3.0) and the saving,
    # interpolated from (0, 0), never extrapolated
    dense, dense_saved = densify({3: points[3]}, {3: saved[3]}, step=0.125)
    assert dense[3] == [(0.125, 0.25), (0.25, 0.5), (0.375, 0.75), (0.5, 1.0), (0.625, 2.0), (0.75, 3.0)]
    assert dense_saved[3][0.625] == pytest.approx(0.125)


def test_sensitivity_to_a_target_spends_it_on_the_measured_cheap_groups(trained_models, tmp_path):
    """A made-up sensitivity file (the first half of the groups expensive, the rest free) drives a MACs
    target: the plan reaches it, within tolerance, from the free groups first."""
    src = os.path.join(trained_models, "resnet20.onnx")
    report = onnxprune.analyze(src)
    ids = [g.id for g in report.analysis.groups if g.prunable]
    costly = set(ids[: len(ids) // 2])
    sens = {
        "format": "onnxprune.sensitivity/1",
        "metric": "top1",
        "groups": [
            {
                "id": g,
                "sources": list(report.analysis.groups[g].sources),
                "points": [{"ratio": r, "drop": (30.0 if g in costly else 0.1) * r} for r in (0.25, 0.5, 0.75)],
            }
            for g in ids
        ],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(sens))
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    rc, _, err = run(
        "prune", src, "-o", str(out), "--sensitivity", str(path), "--target-macs", "0.8", "--report", str(rep)
    )
    assert rc == 0, err
    r = json.loads(rep.read_text())
    assert r["after"]["macs"] / r["before"]["macs"] <= 0.8 * 1.01
    ratios = {int(k): v for k, v in r["plan"]["meta"]["group_ratios"].items()}
    assert sum(ratios[g] for g in costly) < sum(ratios[g] for g in ids if g not in costly)
    assert r["verification"]["passed"]
    both = ("--sensitivity", str(path), "--max-drop", "1", "--target-macs", "0.8")
    rc, _, err = run("prune", src, "-o", str(out), *both)
    assert rc != 0 and "drop the target" in err


def test_weighing_against_latency_meets_the_macs_target_with_the_cuts_that_save_time(trained_models, monkeypatch):
    """Every group loses the same measured drop; a made-up latency table says only the second half of
    the groups saves time. Weighed against MACs the target is spread by MACs; weighed against latency it
    is met (the same MACs ceiling) with more of the time-saving groups' channels, and the plan says what
    the table predicts."""
    src = os.path.join(trained_models, "resnet20.onnx")
    report = onnxprune.analyze(src)
    graph, analysis = report.graph, report.analysis
    ids = [g.id for g in analysis.groups if g.prunable]
    fast = set(ids[len(ids) // 2 :])
    sens = {
        "format": "onnxprune.sensitivity/1",
        "groups": [
            {
                "id": g,
                "sources": list(analysis.groups[g].sources),
                "points": [{"ratio": r, "drop": r} for r in (0.25, 0.5, 0.75)],
            }
            for g in ids
        ],
    }
    table = {"original_ms": 10.0, "cached": False, "groups": {}}
    for g in ids:
        c = analysis.groups[g].channels
        widths = [c // 4, c // 2, c]
        table["groups"][str(g)] = {
            "widths": widths,
            "saved_ms": [(0.02 if g in fast else 0.0) * (c - w) for w in widths],
        }
    monkeypatch.setattr("onnxprune.allocation.allocate.latency_table", lambda *a, **k: table)
    scores = onnxprune.score_groups(graph, analysis, "l1")

    def fast_share(weigh: str):
        alloc = Allocation(target_macs=0.7, sensitivity=sens, round_to=1, weigh_against=weigh)
        plan = allocate(graph, analysis, scores, alloc, rewrite=apply_plan)
        achieved = plan.meta["achieved_macs"]
        assert 0.66 <= achieved <= 0.7  # a ceiling, met within a group's step
        removed = {g: len(plan.remove.get(g, [])) for g in ids}
        return sum(removed[g] for g in fast) / max(sum(removed.values()), 1), plan

    by_macs, _ = fast_share("target")
    by_latency, plan = fast_share("latency")
    assert by_latency > by_macs + 0.1, (by_macs, by_latency)
    assert plan.meta["weigh_against"] == "latency"
    saved = sum(0.02 * len(plan.remove.get(g, [])) for g in fast) / 10.0
    assert plan.meta["predicted_latency"] == pytest.approx(1.0 - saved, abs=1e-3)


def test_latency_saved_is_the_slope_through_the_measured_widths_whatever_their_shared_offset():
    """Every point of a row is timed against one timing of the original: its error is an offset common
    to the row, which the line's intercept takes and the slope (ms per channel) does not."""
    removed = np.array([24, 16, 8])
    table = {"original_ms": 10.0, "groups": {"3": {"widths": [8, 16, 24, 32], "saved_ms": []}}}
    for offset in (0.0, 0.3, -0.2):
        table["groups"]["3"]["saved_ms"] = [*(offset + 0.05 * removed), 0.0]
        assert lat.latency_saved(table, 3, 10) == pytest.approx(0.05 * 10 / 10.0)
    table["groups"]["3"]["saved_ms"] = [2.4, 1.0, 1.0, 0.0]  # noisy: the least-squares slope
    slope = np.polyfit(removed, [2.4, 1.0, 1.0], 1)[0]
    assert lat.latency_saved(table, 3, 10) == pytest.approx(slope * 10 / 10.0)
    assert lat.latency_saved(table, 4, 10) == 0.0  # not in the table (not timed): no saving known
    table["groups"]["3"]["saved_ms"] = [-0.5, -0.2, 0.1, 0.0]  # more saved by fewer channels: never negative
    assert lat.latency_saved(table, 3, 8) == 0.0
    table["groups"]["5"] = {"widths": [8, 16], "saved_ms": [0.4, 0.0]}  # one measured width: its own slope
    assert lat.latency_saved(table, 5, 4) == pytest.approx(0.05 * 4 / 10.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"weigh_against": "watts"}, "unknown --weigh-against"),
        ({"weigh_against": "latency"}, "needs --sensitivity"),  # no sensitivity, no target
        ({"weigh_against": "latency", "max_drop": 1.0}, "needs --sensitivity"),  # --max-drop sets the ratios
    ],
)
def test_weigh_against_latency_is_refused_where_it_has_no_meaning(extra, message):
    sens = {"format": "onnxprune.sensitivity/1", "groups": []}
    alloc = Allocation(sensitivity=sens if "max_drop" in extra else None, **extra)
    with pytest.raises(onnxprune.OnnxPruneError, match=message):
        alloc.check("l1")


def test_sensitivity_reconstruct_needs_calibration_data(trained_models, tmp_path):
    src = os.path.join(trained_models, "resnet20.onnx")
    rc, _, err = run("sensitivity", src, "--task", "mod:fn", "--reconstruct", "-o", str(tmp_path / "s"))
    assert rc != 0 and "need calibration data (--calib)" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "s.json")


def test_sensitivity_after_reconstruction_measures_what_recovery_cannot_repair():
    """graphs.absorbable: removing channel 0 or 3 loses nothing once least squares has refitted the
    linear head, but a lot as rewritten."""
    model = absorbable()
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(32)]
    plain = onnxprune.sensitivity(model, "obs", [0.25], data=data, calib=data)
    rec = onnxprune.sensitivity(
        model, "obs", [0.25], data=data, calib=data, recovery=onnxprune.RecoveryOptions(reconstruct=True, ridge=1e-9)
    )
    assert plain["recovery"] is None and rec["recovery"]["reconstruct"] is True
    (p_plain,), (p_rec,) = plain["groups"][0]["points"], rec["groups"][0]["points"]
    assert p_plain["kl_divergence"] > 1e-3
    assert p_rec["kl_divergence"] < 1e-6


def test_iterative_steps_reach_the_target_and_verify(trained_models):
    src = os.path.join(trained_models, "resnet20.onnx")
    pruned, rep = onnxprune.prune(src, "l1", target_macs=0.5, steps=3, round_to=1)
    assert abs(rep.after.macs / rep.before.macs - 0.5) <= 0.01
    assert rep.verification["passed"] and len(rep.plan["meta"]["steps"]) == 2
    with pytest.raises(onnxprune.OnnxPruneError, match="--steps"):
        onnxprune.PruningPlan.from_json(rep.plan)
    onnx.checker.check_model(pruned, full_check=True)


def test_latency_table_is_cached_and_plan_meets_prediction(tmp_path):
    path = small_model(tmp_path)
    report = onnxprune.analyze(path)
    cache = str(tmp_path / "m.latency.json")
    t1 = lat.latency_table(
        report.graph, report.analysis, cache, "ort-cpu", threads=1, points=2, iters=3, rewrite=apply_plan
    )
    assert not t1["cached"] and os.path.exists(cache)
    t2 = lat.latency_table(
        report.graph, report.analysis, cache, "ort-cpu", threads=1, points=2, iters=3, rewrite=apply_plan
    )
    assert t2["cached"] and t2["groups"] == t1["groups"]
    # a different setting is a different table
    t3 = lat.latency_table(
        report.graph, report.analysis, cache, "ort-cpu", threads=1, points=4, iters=3, rewrite=apply_plan
    )
    assert not t3["cached"] and len(json.load(open(cache))) == 2


def test_latency_plan_prefers_cheap_importance_per_millisecond(tmp_path):
    path = str(tmp_path / "two.onnx")
    onnx.save(_pfec_case(), path)
    report = onnxprune.analyze(path)
    gids = [g.id for g in report.groups if g.prunable]
    a, b = gids[0], gids[1]
    # group a: a staircase, halving saves 4 ms; group b: halving saves 1 ms
    table = {
        "original_ms": 10.0,
        "groups": {
            str(a): {"widths": [2, 4], "saved_ms": [4.0, 0.0]},
            str(b): {"widths": [2, 4], "saved_ms": [1.0, 0.0]},
        },
    }
    scores = {g: np.ones(report.groups[g].channels) for g in gids}
    plan, pred = lat.latency_plan(report.analysis, scores, table, 0.7)
    assert len(plan.remove.get(a, [])) == 2 and not plan.remove.get(b) and pred == pytest.approx(0.6)
    plan, pred = lat.latency_plan(report.analysis, scores, table, 0.55)
    assert len(plan.remove[a]) == 2 and len(plan.remove[b]) == 2 and pred == pytest.approx(0.5)
    # with measured drops (--sensitivity) instead of scores: a loses 10 points at half, b only 0.5, so b
    # goes first although it saves less; a group measured only up to a quarter is never cut past it
    points = {a: [(0.5, 10.0)], b: [(0.5, 0.5)]}
    loss = measured_loss(points, {a: 4, b: 4})
    plan, pred = lat.latency_plan(report.analysis, scores, table, 0.95, loss)
    assert len(plan.remove.get(b, [])) == 2 and not plan.remove.get(a) and pred == pytest.approx(0.9)
    loss = measured_loss({a: [(0.25, 0.0)], b: [(0.5, 0.5)]}, {a: 4, b: 4})
    plan, _ = lat.latency_plan(report.analysis, scores, table, 0.0, loss)
    assert not plan.remove.get(a) and len(plan.remove[b]) == 2


def test_latency_plan_reads_the_points_without_their_rows_shared_offset(tmp_path):
    """Every point of a row was timed against one timing of the original: a row reading 0.5 ms more
    saved at every width is 0.2 ms a channel, not 0.7 ms for the first channel, so reaching 0.94 of
    10 ms takes three channels (0.6 ms), not one."""
    path = str(tmp_path / "two.onnx")
    onnx.save(_pfec_case(), path)
    report = onnxprune.analyze(path)
    a = next(g.id for g in report.groups if g.prunable and g.channels == 4)
    removed = np.array([3, 2, 1])
    table = {
        "original_ms": 10.0,
        "groups": {str(a): {"widths": [1, 2, 3, 4], "saved_ms": [*(0.5 + 0.2 * removed), 0.0]}},
    }
    scores = {g.id: np.ones(g.channels) for g in report.groups if g.prunable}
    plan, pred = lat.latency_plan(report.analysis, scores, table, 0.94)
    assert len(plan.remove[a]) == 3 and pred == pytest.approx(0.94)


def test_latency_timing_keeps_the_analysed_shapes_of_dynamic_inputs():
    """A model with a dynamic width (an OCR line) is timed at the width it was analysed at, also with a
    benchmark batch: the batch replaces the leading dim only."""
    b = G(shape=(1, 3, 8, 8))
    b.output(b.conv(b.op("Relu", [b.conv(b.x, 3, 8)]), 8, 4))
    model = b.model()
    for k, name in ((0, "N"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[k].dim_param = name
    report = onnxprune.analyze(model, ["x:1x3x8x24"])
    plan = lat._narrow(report.analysis, next(g.id for g in report.groups if g.prunable), 4)
    for batch in (None, 2):
        ms = lat._time_variants(report.graph, report.analysis, [plan], "ort-cpu", batch, 1, 2, apply_plan)
        assert len(ms) == 2 and all(m > 0 for m in ms)


def test_round_to_auto_reads_the_staircase(monkeypatch, shared_models):
    rep = onnxprune.analyze(os.path.join(shared_models, "vgg11.onnx"))

    def staircase(graph, analysis, plans, *a, **k):
        widths = [analysis.groups[next(iter(p.remove))].channels - len(next(iter(p.remove.values()))) for p in plans]
        return [100.0] + [50.0 + 0.1 * w + (0.0 if w % 8 == 0 else 5.0) for w in widths]

    monkeypatch.setattr(lat, "_time_variants", staircase)
    monkeypatch.setattr(lat, "channel_block", lambda backend: None)  # a backend that cannot tell
    m, info = lat.auto_round_to(rep.graph, rep.analysis, rewrite=apply_plan)
    assert m == 8 and len(info["latency_ms"]) == 33
    plan = allocate(
        rep.graph,
        rep.analysis,
        onnxprune.score_groups(rep.graph, rep.analysis, "l1"),
        Allocation(ratio=0.3, round_to=0),
        rewrite=apply_plan,
    )
    assert plan.meta["round_to"] == 8
    for gid, removed in plan.remove.items():
        assert (rep.groups[gid].channels - len(removed)) % 8 == 0


def test_round_to_auto_takes_the_channel_block_the_backend_reports_for_convolution_models(monkeypatch):
    """onnxruntime CPU tells its NCHWc block: nothing is timed for a convolutional model; a model whose
    MACs are MatMuls still reads the staircase."""

    def no_timing(*a, **k):
        raise AssertionError("timed although the backend reported its channel block")

    monkeypatch.setattr(lat, "_time_variants", no_timing)
    monkeypatch.setattr(lat, "channel_block", lambda backend: 16 if backend == "ort-cpu" else None)
    b = G(shape=(1, 16, 8, 8))
    b.output(b.conv(b.op("Relu", [b.conv(b.x, 16, 64)]), 64, 8))
    rep = onnxprune.analyze(b.model())
    assert lat.auto_round_to(rep.graph, rep.analysis, rewrite=apply_plan) == (16, {"channel_block": 16})

    d = G(shape=(2, 16))
    d.output(d.matmul(d.op("Relu", [d.matmul(d.x, 16, 64)]), 64, 8))
    rep = onnxprune.analyze(d.model())
    with pytest.raises(AssertionError, match="timed although"):
        lat.auto_round_to(rep.graph, rep.analysis, rewrite=apply_plan)


def test_widths_of_whole_channel_blocks_keep_a_concat_in_onnxruntimes_blocked_layout():
    """What --round-to auto relies on, checked on this machine's onnxruntime: two branches of a whole
    number of blocks concatenate inside the NCHWc layout; half a block more puts the Concat out of it
    (reorders around it), as the pruned YOLOX detector's CSP blocks did with multiples of 8 on AVX-512."""
    from onnxprune.bench.ort_cpu import channel_block, optimised_graph

    block = channel_block()
    if block is None:
        pytest.skip("onnxruntime's NCHWc layout does not run on this machine")
    counts = {}
    for width in (block, block + block // 2):
        b = G(shape=(1, 16, 8, 8))
        cat = b.op("Concat", [b.conv(b.x, 16, width), b.conv(b.x, 16, width)], axis=1)
        b.output(b.conv(b.op("Relu", [cat]), 2 * width, 16))
        counts[width] = sum(n.op_type.startswith("Reorder") for n in optimised_graph(b.model()).graph.node)
    assert counts[block] < counts[block + block // 2]


def test_latency_plan_is_measured_and_corrected(monkeypatch, shared_models):
    """A table twice as optimistic as the runtime: the closed loop still lands on the target."""
    from onnxprune.allocation.targets import counts_of

    rep = onnxprune.analyze(os.path.join(shared_models, "vgg11.onnx"))
    full = counts_of(rep.graph, rep.analysis, PruningPlan()).macs

    def runtime(graph, analysis, plans, *a, **k):  # latency: 20 ms fixed + 80 ms proportional to MACs
        return [100.0] + [20.0 + 80.0 * counts_of(graph, analysis, p).macs / full for p in plans]

    monkeypatch.setattr(lat, "_time_variants", runtime)
    table = lat.latency_table(rep.graph, rep.analysis, None, points=4, rewrite=apply_plan)
    for row in table["groups"].values():
        row["saved_ms"] = [2 * s for s in row["saved_ms"]]
    scores = onnxprune.score_groups(rep.graph, rep.analysis, "l1")
    plan = lat.latency_plan_measured(rep.graph, rep.analysis, scores, table, 0.6, rewrite=apply_plan)
    rounds = plan.meta["latency_rounds"]
    assert rounds[0]["measured"] > rounds[0]["predicted"] + 0.1  # the raw prediction misses
    assert len(rounds) > 1 and abs(plan.meta["measured_latency"] - 0.6) <= 0.02
    assert plan.meta["measured_latency"] == pytest.approx(runtime(rep.graph, rep.analysis, [plan])[1] / 100)


def test_cli_target_latency_end_to_end(tmp_path):
    path = small_model(tmp_path)
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    rc, stdout, err = run(
        "prune", path, "-o", str(out), "--target-latency", "0.9", "--bench-threads", "1", "--report", str(js)
    )
    assert rc == 0, err
    meta = json.loads(js.read_text())["plan"]["meta"]
    assert meta["allocation"] == "latency" and meta["latency_rounds"]
    assert any(meta["measured_latency"] == pytest.approx(r["measured"], abs=1e-4) for r in meta["latency_rounds"])
    assert os.path.exists(str(tmp_path / "m.latency.json"))
    assert "latency" in stdout


def test_cli_weigh_against_latency_end_to_end(tmp_path):
    path = small_model(tmp_path)
    analysis = onnxprune.analyze(path).analysis
    sens = {
        "format": "onnxprune.sensitivity/1",
        "groups": [
            {"id": g.id, "sources": list(g.sources), "points": [{"ratio": 0.5, "drop": 0.1}]}
            for g in analysis.groups
            if g.prunable
        ],
    }
    (tmp_path / "s.json").write_text(json.dumps(sens))
    out, js = tmp_path / "o.onnx", tmp_path / "r.json"
    args = (
        "prune",
        path,
        "-o",
        str(out),
        "--sensitivity",
        str(tmp_path / "s.json"),
        "--target-macs",
        "0.8",
        "--round-to",
        "1",
    )
    rc, _, err = run(*args, "--weigh-against", "latency", "--bench-threads", "1", "--report", str(js))
    assert rc == 0, err
    r = json.loads(js.read_text())
    assert r["plan"]["meta"]["weigh_against"] == "latency" and 0 < r["plan"]["meta"]["predicted_latency"] <= 1
    assert r["after"]["macs"] / r["before"]["macs"] <= 0.8 and r["verification"]["passed"]
    assert os.path.exists(str(tmp_path / "m.latency.json"))
    rc, _, err = run("prune", path, "-o", str(tmp_path / "x.onnx"), "--weigh-against", "latency")
    assert rc != 0 and "needs --sensitivity" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "x.onnx")


def test_target_between_uniform_steps_is_reached_by_blending():
    """With --round-to 8 every 24-channel group jumps 24 -> 16 at the same uniform ratio, so no ratio
    lands near 0.8 of the MACs; the blended plan takes the heavier cut on some groups only and lands
    at or below the target, within one group's step, and says so."""
    from graphs import G

    b = G(shape=(1, 3, 16, 16))
    x = b.conv(b.x, 3, 24)
    for _ in range(10):
        x = b.op("Relu", [b.conv(x, 24, 24)])
    b.output(b.conv(x, 24, 4))
    model = b.model()
    whole = onnxprune.analyze(model).counts.macs
    _, uniform_step = onnxprune.prune(model, ratio=0.34, round_to=8)
    assert uniform_step.after.macs / whole < 0.7  # one uniform step jumps far past 0.8
    pruned, r = onnxprune.prune(model, target_macs=0.8, round_to=8)
    meta = r.plan["meta"]
    assert "blended" in meta and r.verification["passed"]
    achieved = r.after.macs / whole
    assert achieved == pytest.approx(meta["achieved_macs"]) and 0.75 < achieved <= 0.8
    assert "target 0.800 of the macs, achieved" in r.summary()
    assert all(len(g["kept"]) % 8 == 0 for g in r.groups if g["prunable"])
