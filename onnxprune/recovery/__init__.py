"""Recovery without retraining (bias compensation, least-squares reconstruction, statistics
recalibration) and optional distillation fine-tuning; each step is a function over the pruned model."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .bias import compensate_bias
from .passes import Recovery, load_batches
from .recalibrate import recalibrate
from .reconstruct import reconstruct


@dataclass
class RecoveryOptions:
    """Which recovery steps run after the rewrite. ``reconstruct=None`` means: on when data is given."""

    reconstruct: bool | None = None
    bias_compensation: bool = False
    recalibrate: bool = False
    samples: int = 8192  # sample positions per refitted layer
    ridge: float = 1e-3
    memory_budget: int | None = None  # bytes of activations kept in memory (None: 40% of what is free)

    def reconstructs(self, have_data: bool) -> bool:
        return self.reconstruct if self.reconstruct is not None else have_data

    def active(self, have_data: bool) -> bool:
        return bool(self.bias_compensation or self.recalibrate or self.reconstructs(have_data))


def run_recovery(rec: Recovery, data, options: RecoveryOptions, seed: int = 0, progress: bool = False) -> dict:
    """Bias compensation, then reconstruction, then recalibration (each optional), in place on
    ``rec.pruned``. Compensation first gives the reconstruction's ridge a better starting point; the
    recalibration last re-standardises whatever the refit left."""
    batches = load_batches(data, rec.original)
    out: dict = {"timings_s": {}}
    breakdown: dict = {}
    steps = [
        ("bias_compensated", options.bias_compensation, lambda: compensate_bias(rec, batches)),
        (
            "reconstructed",
            options.reconstructs(True),
            lambda: reconstruct(
                rec, batches, options.samples, options.ridge, seed, progress, options.memory_budget, breakdown
            ),
        ),
        ("recalibrated", options.recalibrate, lambda: recalibrate(rec, batches, progress, options.memory_budget)),
    ]
    for key, on, fn in steps:
        if not on:
            continue
        t = time.perf_counter()
        out[key] = fn()
        out["timings_s"][key] = round(time.perf_counter() - t, 4)
    if breakdown:
        out["timings_s"]["reconstruct_steps"] = breakdown
    out["skipped"] = dict(rec.skipped)
    return out


__all__ = ["Recovery", "RecoveryOptions", "run_recovery", "reconstruct", "compensate_bias", "recalibrate"]
