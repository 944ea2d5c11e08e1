"""Recovery without retraining (bias compensation, least-squares reconstruction, statistics
recalibration) and optional distillation fine-tuning; each step is a function over the pruned model."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .bias import compensate_bias
from .passes import Recovery, load_batches
from .sweep import STATISTICS_INPUTS, recalibrate, reconstruct, recover_layers


@dataclass
class RecoveryOptions:
    """Which recovery steps run after the rewrite. ``reconstruct=None`` means: on when data is given."""

    reconstruct: bool | None = None
    bias_compensation: bool = False
    recalibrate: bool = False
    samples: int = 8192  # sample positions per refitted layer
    ridge: float = 1e-3
    memory_budget: int | None = None  # bytes of activations kept in memory (None: 40% of what is free)
    # inputs the recalibration's statistics are taken on, whole batches spread over the set (None: all)
    recal_inputs: int | None = STATISTICS_INPUTS

    def reconstructs(self, have_data: bool) -> bool:
        return self.reconstruct if self.reconstruct is not None else have_data

    def active(self, have_data: bool) -> bool:
        return bool(self.bias_compensation or self.recalibrate or self.reconstructs(have_data))


def run_recovery(rec: Recovery, data, options: RecoveryOptions, seed: int = 0, progress: bool = False) -> dict:
    """Bias compensation, then reconstruction, then recalibration (each optional), in place on
    ``rec.pruned``; the last two share one pass of the original (``recover_layers``). Compensation first
    gives the reconstruction's ridge a better starting point; the recalibration last re-standardises
    whatever the refit left."""
    batches = load_batches(data, rec.original)
    out: dict = {"timings_s": {}}
    if options.bias_compensation:
        t = time.perf_counter()
        out["bias_compensated"] = compensate_bias(rec, batches)
        out["timings_s"]["bias_compensated"] = round(time.perf_counter() - t, 4)
    reconstructs = options.reconstructs(True)
    if reconstructs or options.recalibrate:
        t = time.perf_counter()
        breakdown: dict = {}
        done = recover_layers(
            rec,
            batches,
            reconstruct=reconstructs,
            recalibrate=options.recalibrate,
            samples=options.samples,
            ridge=options.ridge,
            seed=seed,
            progress=progress,
            budget=options.memory_budget,
            timings=breakdown,
            statistics_inputs=options.recal_inputs,
        )
        out.update(done)
        out["timings_s"]["+".join(done)] = round(time.perf_counter() - t, 4)
        out["timings_s"]["breakdown"] = breakdown
    out["skipped"] = dict(rec.skipped)
    return out


__all__ = [
    "Recovery",
    "RecoveryOptions",
    "run_recovery",
    "recover_layers",
    "reconstruct",
    "compensate_bias",
    "recalibrate",
    "STATISTICS_INPUTS",
]
