"""The obs criterion: its cost is the exact increase of the refitted least-squares error, and it removes
first the input that the refit can absorb."""

from __future__ import annotations

import numpy as np
from graphs import absorbable
from helpers import feeds_for, outputs

import onnxprune
from onnxprune.criteria.obs import Consumer, block_cost, greedy_order


def test_cost_equals_the_increase_of_the_refitted_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 9))
    w = rng.standard_normal((9, 4))
    y = x @ w
    hinv = np.linalg.inv(x.T @ x)
    for idx in (np.array([2]), np.array([0, 5, 7])):
        keep = np.setdiff1d(np.arange(9), idx)
        refit, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        measured = float(np.sum((y - x[:, keep] @ refit) ** 2))  # the full model's error is 0
        assert np.isclose(block_cost(hinv, w, idx), measured, rtol=1e-9)


def test_obs_removes_the_absorbable_channel_first_and_the_refit_is_exact():
    """graphs.absorbable: only channel 0 or 3 of 'a' can go without loss; obs picks one of them (l1 does
    not), and least squares then restores the output."""
    model = absorbable()
    data = [feeds_for(model, seed=s) for s in range(16)]
    pruned, r = onnxprune.prune(model, "obs", 0.25, round_to=1, data=data, ridge=1e-9)  # exact refit: no ridge
    ((gid, removed),) = ((g["id"], g["removed"]) for g in r.groups if g["removed"])
    assert removed in ([0], [3]), removed
    _, l1 = onnxprune.prune(model, "l1", 0.25, round_to=1)
    assert next(g["removed"] for g in l1.groups if g["removed"]) not in ([0], [3])
    for feeds in data[:3]:
        want = outputs(model, feeds)[0]
        assert np.abs(outputs(pruned, feeds)[0] - want).max() <= 1e-4 * np.abs(want).max()


def test_greedy_cost_is_the_refitted_error_of_every_prefix_of_its_order():
    """Each greedy score is the least-squares error after removing that channel and every channel scored
    below it (float64, no dampening): the OBS updates of H^-1 and the weights are exact."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 12))
    x[:, 5] = x[:, 2] + 0.01 * rng.standard_normal(300)  # channels 2 and 5 can stand in for each other
    w = rng.standard_normal((12, 3))
    y = x @ w
    c = Consumer(w, np.linalg.inv(x.T @ x), 1.0, np.arange(12))
    order = greedy_order([(c, {k: np.array([k]) for k in range(12)})], steps=12)
    ranked = sorted(order, key=order.get)
    for n in range(1, 11):
        keep = np.setdiff1d(np.arange(12), ranked[:n])
        refit, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        assert np.isclose(order[ranked[n - 1]], np.sum((y - x[:, keep] @ refit) ** 2), rtol=1e-7)
    assert ranked.index(2) == 0 or ranked.index(5) == 0  # one twin goes first, and the other is then dear
    assert abs(ranked.index(2) - ranked.index(5)) > 1
    np.testing.assert_array_equal(c.w, w)  # the consumer's arrays are not changed


def test_greedy_obs_does_not_remove_both_of_two_interchangeable_channels():
    """graphs.absorbable: channels 0 and 3 each cost nothing alone, since each can stand in for the other.
    One-shot obs removes both at 50%; greedy removes one of them and the channel whose loss the refit
    repairs best, and ends closer to the original."""
    model = absorbable()
    data = [feeds_for(model, seed=s) for s in range(16)]
    removed, err = {}, {}
    for greedy in (True, False):
        pruned, r = onnxprune.prune(model, "obs", 0.5, round_to=1, data=data, ridge=1e-9, greedy=greedy)
        removed[greedy] = next(g["removed"] for g in r.groups if g["removed"])
        err[greedy] = sum(float(np.sum((outputs(pruned, f)[0] - outputs(model, f)[0]) ** 2)) for f in data)
    assert len({0, 3} & set(removed[True])) == 1, removed
    assert sorted(removed[False]) == [0, 3], removed
    assert err[True] < 0.5 * err[False], err


def test_global_obs_ranks_the_relative_costs_across_groups_as_they_are(trained_models):
    """obs costs are fractions of each consumer's output energy, one scale for every group: --global
    removes the cheapest channels of the whole model, not the cheapest after a per-group l2 rescaling."""
    import os

    path = os.path.join(trained_models, "resnet20.onnx")
    calib = os.path.join(os.path.dirname(__file__), "..", "calib", "samples", "fmnist_train_256.npz")
    data = onnxprune.DataSpec(calib, batch_size=64)
    rep = onnxprune.analyze(path)
    scores = onnxprune.score_groups(rep.graph, rep.analysis, "obs", data=data)
    plans = {}
    for norm in ("auto", "l2"):
        alloc = onnxprune.Allocation(ratio=0.3, global_rank=True, round_to=1, max_ratio=0.9, normalisation=norm)
        _, r = onnxprune.prune(path, "obs", allocation=alloc, data=data, reconstruct=False)
        plans[norm] = {g["id"]: g["removed"] for g in r.groups}
        assert r.plan["meta"]["normalisation"] == ("none" if norm == "auto" else "l2")
    assert plans["auto"] != plans["l2"]
    removed = [scores[g][c] for g, cs in plans["auto"].items() for c in cs]
    kept = [
        scores[g][c]
        for g in scores
        for c in range(len(scores[g]))
        if c not in plans["auto"].get(g, []) and len(plans["auto"].get(g, [])) < int(0.9 * len(scores[g]))
    ]  # channels of groups already at --max-ratio stay whatever they cost
    assert max(removed) <= min(kept)
