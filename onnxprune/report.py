"""Reports: JSON for machines, a table for people."""

from __future__ import annotations

from dataclasses import dataclass, field

from .count import Counts
from .groups import Analysis


@dataclass
class AnalysisReport:
    analysis: Analysis
    counts: Counts
    model_path: str = ""
    graph: object = None  # the normalised Graph the analysis ran on (reused by prune)

    @property
    def groups(self):
        return self.analysis.groups

    @property
    def prunable_channel_fraction(self) -> float:
        total = self.analysis.source_channels
        ok = {name for g in self.groups if g.prunable for name in g.sources}
        prunable = sum(s.n for s in self.analysis.sources if s.node in ok)
        return prunable / total if total else 0.0

    def to_json(self) -> dict:
        return {
            "model": self.model_path,
            "groups": [g.to_json() for g in self.groups],
            "total": {
                **self.counts.to_json(),
                "groups": len(self.groups),
                "prunable_groups": sum(g.prunable for g in self.groups),
                "source_channels": self.analysis.source_channels,
                "prunable_channel_fraction": round(self.prunable_channel_fraction, 6),
            },
            "notes": list(self.analysis.notes),
        }

    def table(self, limit: int = 0) -> str:
        rows = [("id", "channels", "sources", "status", "MACs %")]
        total = max(self.counts.macs, 1)
        shown = self.groups if not limit else self.groups[:limit]
        for g in shown:
            src = g.sources[0] + (f" (+{len(g.sources) - 1})" if len(g.sources) > 1 else "")
            status = "prunable" if g.prunable else f"frozen: {g.reason}"
            rows.append((str(g.id), str(g.channels), src, status, f"{100 * g.macs / total:.1f}"))
        widths = [min(max(len(r[i]) for r in rows), 60) for i in range(4)]
        lines = ["  ".join(r[i][:60].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        if limit and len(self.groups) > limit:
            lines.append(f"... {len(self.groups) - limit} more groups (use --json for all)")
        lines.append(
            f"groups: {len(self.groups)} ({sum(g.prunable for g in self.groups)} prunable), "
            f"prunable channels: {100 * self.prunable_channel_fraction:.1f}% of "
            f"{self.analysis.source_channels}, MACs: {self.counts.macs / 1e6:.2f} M, "
            f"params: {self.counts.params / 1e6:.3f} M"
        )
        lines += [f"note: {n}" for n in self.analysis.notes]
        return "\n".join(lines)


@dataclass
class PruneReport:
    before: Counts
    after: Counts
    plan: dict
    criterion: str
    verification: dict | None = None
    timings: dict = field(default_factory=dict)
    groups: list[dict] = field(default_factory=list)
    rescaled: list[str] = field(default_factory=list)  # consumers whose weights ThiNet's least squares changed
    recovery: dict = field(default_factory=dict)  # layers changed by each recovery step, skipped layers, times
    notes: list[str] = field(default_factory=list)  # the analysis's notes (layers that make no group)

    def to_json(self) -> dict:
        return {
            "criterion": self.criterion,
            "rescaled_consumers": self.rescaled,
            "recovery": self.recovery,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "macs_ratio": self.after.macs / max(self.before.macs, 1),
            "params_ratio": self.after.params / max(self.before.params, 1),
            "verification": self.verification,
            "timings_s": self.timings,
            "groups": self.groups,
            "plan": self.plan,
            "notes": self.notes,
        }

    def summary(self) -> str:
        v = self.verification
        ver = verification_text(v)
        return (
            f"MACs {self.before.macs / 1e6:.2f} M -> {self.after.macs / 1e6:.2f} M "
            f"({100 * (1 - self.after.macs / max(self.before.macs, 1)):.1f}% fewer), params "
            f"{self.before.params / 1e6:.3f} M -> {self.after.params / 1e6:.3f} M, "
            f"{sum(len(g['removed']) for g in self.groups)} channels removed in "
            f"{sum(1 for g in self.groups if g['removed'])} groups{self._step_note()}{self._target_note()}, "
            f"verification: {ver}"
        )

    def _target_note(self) -> str:
        meta = self.plan.get("meta", {}) if isinstance(self.plan, dict) else {}
        auto = ""
        measured = meta.get("round_to_auto")
        backend, multiple = meta.get("backend", "?"), meta.get("round_to")
        if measured and "channel_block" in measured:
            auto = f" (round-to auto: {backend}'s channel block on this machine, {multiple})"
        elif measured:
            auto = f" (round-to auto measured on {backend}: {multiple})"
        return auto + self._target_only(meta)

    @staticmethod
    def _target_only(meta: dict) -> str:
        for metric in ("macs", "params"):
            if f"target_{metric}" in meta:
                how = " by blending two uniform ratios" if "blended" in meta else ""
                return (
                    f" (target {meta[f'target_{metric}']:.3f} of the {metric}, achieved "
                    f"{meta[f'achieved_{metric}']:.3f}{how})"
                )
        return ""

    def _step_note(self) -> str:
        k = self.plan.get("meta", {}).get("step") if isinstance(self.plan, dict) else None
        return f" in the last of {k} steps" if k else ""


def verification_text(v: dict | None) -> str:
    """One phrase for the summary line and the Markdown report, naming what decided."""
    if v is None:
        return "skipped (--no-verify)"
    if not v["passed"]:
        return "FAILED"
    if v.get("method") == "float64":
        return (
            f"exact in float64 (relative |diff| {v['float64_rel_diff']:.1e}; float32 |diff| "
            f"{v['max_abs_diff']:.2e} is rounding, reference's own float32 error {v['noise_floor']:.1e})"
        )
    return f"exact (max |diff| {v['max_abs_diff']:.2e})"
