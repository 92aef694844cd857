"""C3PO's figure: per feedback, adherence in scope and change near and out of scope of each model."""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.plots import grouped_bars, pyplot, save

PARTS = ("in_scope_adherence", "near_scope_changed", "out_scope_changed")


def figure(columns: dict[str, dict[str, float]], run: Path, folder: Path) -> Path:
    """One panel per feedback (column), one group of bars per model."""
    fig, axes = pyplot().subplots(1, len(columns), figsize=(6 * len(columns), 4.2), squeeze=False)
    for ax, (feedback, m) in zip(axes[0], columns.items(), strict=True):
        names = sorted({k.split("/")[0] for k in m if k.endswith(PARTS)})
        grouped_bars(ax, names, {p: [m.get(f"{n}/{p}", 0) for n in names] for p in PARTS}, rotation=30)
        ax.set_ylabel("%")
        ax.set_ylim(0, 118)  # room above 100% for the legend
        ax.legend(fontsize=8, ncol=3, loc="upper center")
        ax.set_title(f"feedback {feedback}: follows in scope, changes elsewhere", fontsize=10)
    return save(fig, folder / "results.png")
