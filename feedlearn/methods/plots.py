"""What every method's figure shares: matplotlib without a display, grouped bars, saving a figure."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(ax, labels: list[str], series: dict[str, list[float]], rotation: int = 0) -> None:
    """One group of bars per label, one bar per series (in order, with a legend)."""
    width = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(labels))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=rotation)
    ax.legend(fontsize=8)


def save(fig, path: Path) -> Path:
    """Lay `fig` out, write it to `path` (its folder created) and close it."""
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return Path(path)
