"""The prune report for people: a Markdown page with the per-group table, totals and plots."""

from __future__ import annotations

import logging
import os

from .report import PruneReport, verification_text
from .save import atomic_write

log = logging.getLogger(__name__)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} M"


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.2f} MiB"


def _ratio(a, b) -> str:
    return "n/a" if not a or b is None else f"{b / a:.3f}"


def markdown(
    report: PruneReport,
    model: str = "",
    output: str = "",
    files: dict | None = None,
    plots: list[str] = (),
    max_rows: int = 200,
) -> str:
    files = files or {}
    j = report.to_json()
    meta = j["plan"].get("meta", {}) if isinstance(j["plan"], dict) else {}
    v = report.verification
    ver = verification_text(v) + (" against the masked original" if v and v["passed"] else "")
    settings = ", ".join(
        f"{k} {meta[k]}" for k in ("ratio", "round_to", "min_channels", "combine", "target_macs") if k in meta
    )
    lines = [f"# onnxprune report: {os.path.basename(model) or 'model'}", ""]
    lines += [f"- input: `{model}`"] if model else []
    lines += [f"- output: `{output}`"] if output else []
    lines += [
        f"- criterion: **{report.criterion}**" + (f" ({settings})" if settings else ""),
        f"- verification: {ver}",
        f"- time: {report.timings.get('total', 0):.2f} s "
        f"({', '.join(f'{k} {v:.2f} s' for k, v in report.timings.items() if k != 'total')})",
        "",
    ]
    if report.rescaled:
        lines += [f"- ThiNet least squares rescaled {len(report.rescaled)} consumer layer(s)", ""]
    lines += [
        "## Totals",
        "",
        "| | before | after | after / before |",
        "|---|---:|---:|---:|",
        f"| MACs | {_mb(report.before.macs)} | {_mb(report.after.macs)} | "
        f"{_ratio(report.before.macs, report.after.macs)} |",
        f"| parameters | {_mb(report.before.params)} | {_mb(report.after.params)} | "
        f"{_ratio(report.before.params, report.after.params)} |",
    ]
    if files:
        lines.append(
            f"| file size on disk | {_bytes(files.get('input_bytes'))} | {_bytes(files.get('output_bytes'))} | "
            f"{_ratio(files.get('input_bytes'), files.get('output_bytes'))} |"
        )
    lines += [
        "",
        "MACs count multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul and Einsum at the analysis "
        "input shape (batch 1 when dynamic).",
        "",
    ]
    for p in plots:
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})", ""]
    total = max(report.before.macs, 1)
    groups = sorted(report.groups, key=lambda g: -g.get("macs", 0))
    removed_groups = sum(1 for g in groups if g["removed"])
    lines += [
        "## Groups",
        "",
        f"{len(groups)} channel groups, {sum(g['prunable'] for g in groups)} prunable, {removed_groups} pruned; "
        f"sorted by MACs share: the MACs of the layers whose weights the group slices (a layer counts for the "
        f"group it writes and the group it reads, so shares add up to more than 100%).",
        "",
        "| group | sources | channels before | after | removed | MACs share | status |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for g in groups[:max_rows]:
        src = f"`{g['sources'][0]}`" + (f" +{len(g['sources']) - 1}" if len(g["sources"]) > 1 else "")
        status = (
            (f"pruned ({report.criterion})" if g["removed"] else "prunable, kept")
            if g["prunable"]
            else f"frozen: {g.get('reason', '')}"
        )
        n, k = g["channels"], len(g["kept"])
        lines.append(
            f"| {g['id']} | {src} | {n} | {k} | {100 * (n - k) / max(n, 1):.1f}% | "
            f"{100 * g.get('macs', 0) / total:.1f}% | {status} |"
        )
    if len(groups) > max_rows:
        lines.append(f"\n{len(groups) - max_rows} smaller groups left out; the JSON report has all of them.")
    return "\n".join(lines) + "\n"


def pyplot(consequence: str):
    """matplotlib's pyplot on the file-only Agg backend, or None with a warning naming the fix."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: %s (pip install 'onnxprune[report]')", consequence)
        return None
    return plt


def plots(report: PruneReport, stem: str) -> list[str]:
    """PNG plots next to the report: channels per group before/after, MACs and params before/after.

    Returns the paths written; an empty list (with a warning naming the fix) without matplotlib.
    """
    plt = pyplot("the Markdown report has no plots")
    if plt is None:
        return []

    out = []
    groups = [g for g in report.groups if g["prunable"]]
    if groups:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(groups) + 2), 4))
        x = range(len(groups))
        ax.bar(x, [g["channels"] for g in groups], color="#c8d3e6", label="before")
        ax.bar(x, [len(g["kept"]) for g in groups], color="#2b5fab", label="after")
        step = max(1, len(groups) // 30)
        ax.set_xticks(list(x)[::step], [str(g["id"]) for g in groups][::step], fontsize=7)
        ax.set_xlabel("prunable group id")
        ax.set_ylabel("channels")
        ax.set_title(f"Channels kept per group ({report.criterion})")
        ax.legend()
        fig.tight_layout()
        path = f"{stem}_channels.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
        plt.close(fig)
        out.append(path)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, key, label in ((axes[0], "macs", "MACs (M)"), (axes[1], "params", "parameters (M)")):
        before, after = getattr(report.before, key) / 1e6, getattr(report.after, key) / 1e6
        ax.bar(["before", "after"], [before, after], color=["#c8d3e6", "#2b5fab"])
        ax.set_title(label)
        ax.text(1, after, f"{after / max(before, 1e-12):.0%}", ha="center", va="bottom")
    fig.tight_layout()
    path = f"{stem}_totals.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), ".png")
    plt.close(fig)
    out.append(path)
    return out
