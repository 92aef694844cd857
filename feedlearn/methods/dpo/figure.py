"""DPO's and Active DPO's figure: held-out preference accuracy against the labels queried."""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.plots import pyplot, save


def figure(columns: dict[str, dict[str, float]], run: Path, folder: Path) -> Path:
    """Each evaluation's preference accuracy at the number of labels its training queried."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, m in columns.items():
        ax.plot(m.get("queries_used", 0), m["preference_accuracy"], "o", ms=8, label=name)
    ax.axhline(50, ls="--", color="grey", label="chance")
    ax.set_xlabel("labels queried")
    ax.set_ylabel("held-out preference accuracy (%)")
    ax.set_title("accuracy against labels queried")
    ax.legend(fontsize=8)
    return save(fig, folder / "results.png")
