"""Reconstruction and recalibration from one pass of the original model.

The original model runs once over the calibration set and leaves only what the steps need: each refitted
layer's outputs at sampled positions (reconstruction) and each corrected layer's per-channel sums
(recalibration). The pruned model is then propagated (``Propagation``) visiting the edited nodes in graph
order: once to refit every layer that lost inputs from its inputs as they now are (He et al. 2017's
sequential refit), and, with recalibration, once more to give every remaining BatchNormalization its
input's statistics and re-standardise every folded layer's kept output channels to the original's mean
and variance (EagleEye's adaptive statistics), each seeing the corrected layers upstream.

Why two propagations rather than one sweep doing both at each layer: refitting each layer on inputs that
were already re-standardised measured worse on the PP-OCRv5 recogniser (-30% MACs: 99.11% character
accuracy against 99.56% for refit-then-recalibrate; the refit alone gives 99.13%), since the refit's
intercept already matches the means and the re-standardisation is best applied once, to the refitted
model's final statistics.

Why the statistics are taken on a part of the set (``STATISTICS_INPUTS``, whole batches spread over
it): a per-channel mean and variance settle on far fewer inputs than a refit's targets need, and on
resnet50 at 224x224 with 1,024 images the second propagation and both sets of statistics over every
input cost more than the reconstruction's whole pass of the original (see docs/RESULTS.md).
"""

from __future__ import annotations

import time

import numpy as np

from ..data import batch_rows
from ..progress import bar
from .blas import one_thread
from .passes import Recovery, stream
from .propagate import Propagation
from .recalibrate import output_sums, restandardise, set_bn_statistics
from .recalibrate import targets as recalibration_targets
from .reconstruct import TargetSampler, fit_layer, refittable

#: inputs the recalibration's statistics are taken on by default (``--recal-inputs``)
STATISTICS_INPUTS = 256


@one_thread()  # see blas.py: short BLAS calls between onnxruntime runs
def recover_layers(
    rec: Recovery,
    batches,
    *,
    reconstruct: bool = True,
    recalibrate: bool = False,
    samples: int = 8192,
    ridge: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    budget: int | None = None,
    timings: dict | None = None,
    statistics_inputs: int | None = STATISTICS_INPUTS,
) -> dict[str, list[str]]:
    """Edits ``rec.pruned`` in place; returns the nodes changed per step (``reconstructed``,
    ``recalibrated``, in graph order) for the steps asked. ``timings`` (if given) receives the seconds of
    the original pass, of running the pruned model's segments (``propagation``, with their count, over
    both propagations), of everything else (``solves``: normal equations, solves, statistics) and the
    number of inputs the recalibration's statistics were taken on (``statistics_inputs``: at least that
    many, whole batches spread evenly over the set; None: every input)."""
    timings = {} if timings is None else timings
    fit = {lay.node: lay for lay in refittable(rec)} if reconstruct else {}
    restd, bn_list = recalibration_targets(rec) if recalibrate else ({}, [])
    bns = set(bn_list)
    # one Layer per node: a refit may add a bias input, which the re-standardisation must then scale
    # (a second Layer read before the refit would still say "no bias" and write another one)
    restd = {name: fit.get(name, lay) for name, lay in restd.items()}
    out: dict[str, list[str]] = {}
    if reconstruct:
        out["reconstructed"] = []
    if recalibrate:
        out["recalibrated"] = []
    if not fit and not restd and not bns:
        return out
    t0 = time.perf_counter()
    sampler = TargetSampler(rec, list(fit.values()), len(batches), samples, seed)
    sums = output_sums(rec, restd)
    chosen = spread(batches, statistics_inputs)  # the batches the statistics are taken on
    model, shapes, consts = rec.original.model, rec.original.shapes, rec.original.consts
    # the refit's targets come from every batch, the statistics from the chosen ones: two passes rather
    # than one reading every tensor on every batch, since every tensor read costs each batch a copy out of
    # onnxruntime's blocked layout (mbv2 over 4,096 images, side by side: 2.3-2.6 s for one pass reading
    # both sets, 2.0-2.2 s for the two passes, 1.3-1.4 s for the plain forward pass)
    stream(model, sampler.names, batches, shapes, sampler, arrays=consts)
    stream(model, sums.names, [batches[b] for b in chosen], shapes, sums, arrays=consts)
    orig_moments = sums.moments()
    timings["original_pass"] = round(time.perf_counter() - t0, 4)
    order = {n.name: k for k, n in enumerate(rec.pruned.graph.node)}
    t1 = time.perf_counter()
    seconds_run, segments = 0.0, 0
    if fit:
        with Propagation(rec.pruned, batches, budget) as prop:
            for name in bar(sorted(fit, key=order.__getitem__), desc="reconstruct", unit="layer", enabled=progress):
                prop.run_until(name)
                inputs = prop.tensor(rec.nodes[name].input[0])
                targets, target_map = sampler.targets[name], sampler.maps.get(name)
                if fit_layer(rec, fit[name], inputs, sampler.pos[name], targets, ridge, target_map):
                    out["reconstructed"].append(name)
            seconds_run, segments = seconds_run + prop.seconds_run, segments + prop.segments
    if restd or bns:
        timings["statistics_inputs"] = sum(batch_rows(batches[b][0]) for b in chosen)
        with Propagation(rec.pruned, [batches[b] for b in chosen], budget) as prop:
            visits = sorted(set(restd) | bns, key=order.__getitem__)
            for name in bar(visits, desc="recalibrate", unit="layer", enabled=progress):
                if name in bns:
                    prop.run_until(name)
                    set_bn_statistics(rec, name, prop)
                    out["recalibrated"].append(name)
                else:
                    prop.run_through(name)
                    if restandardise(rec, restd[name], prop, orig_moments):
                        out["recalibrated"].append(name)
            seconds_run, segments = seconds_run + prop.seconds_run, segments + prop.segments
    timings["propagation"] = round(seconds_run, 4)
    timings["segments"] = segments
    timings["solves"] = round(time.perf_counter() - t1 - seconds_run, 4)
    return out


def spread(batches, inputs: int | None) -> list[int]:
    """Indices of whole batches, in order, evenly spaced over the set, holding at least ``inputs`` inputs (all of
    them when ``inputs`` is None or 0, as ``--recal-inputs 0``, or the set is no larger): spaced rather
    than the first ones, since a folder of images read in name order may come class by class."""
    rows = [batch_rows(feeds) for feeds, _ in batches]
    if not inputs or sum(rows) <= inputs:
        return list(range(len(batches)))
    k = 1
    while True:
        idx = sorted({int(i) for i in np.round(np.linspace(0, len(batches) - 1, k))})
        if sum(rows[i] for i in idx) >= inputs:
            return idx
        k += 1


def reconstruct(rec: Recovery, batches, samples: int = 8192, ridge: float = 1e-3, **options) -> list[str]:
    """Least-squares refit alone of every layer that lost inputs (``options``: the other keywords of
    ``recover_layers``); returns the layers changed."""
    return recover_layers(rec, batches, samples=samples, ridge=ridge, **options).get("reconstructed", [])


def recalibrate(
    rec: Recovery,
    batches,
    progress: bool = False,
    budget: int | None = None,
    statistics_inputs: int | None = STATISTICS_INPUTS,
) -> list[str]:
    """Statistics recalibration alone; returns the nodes changed."""
    done = recover_layers(
        rec,
        batches,
        reconstruct=False,
        recalibrate=True,
        progress=progress,
        budget=budget,
        statistics_inputs=statistics_inputs,
    )
    return done.get("recalibrated", [])
