"""The obs criterion: its cost is the exact increase of the refitted least-squares error, and it removes
first the input that the refit can absorb."""

from __future__ import annotations

import numpy as np
from graphs import absorbable
from helpers import feeds_for, outputs

import onnxprune
from onnxprune.criteria.obs import block_cost


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
