"""RISE's figure: accuracy per turn of each evaluated policy."""

from __future__ import annotations

import math
from pathlib import Path

from feedlearn.methods.plots import pyplot, save


def plot_turns(columns: dict[str, dict[str, float]], path: str | Path, problems: int | None = None) -> Path:
    """Accuracy per turn (acc@t1..acc@tT) of each model, with its parallel pass@n as a dashed line; given
    the number of test `problems`, each accuracy with its standard error, sqrt(p (1 - p) / problems)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, metrics) in enumerate(columns.items()):
        turns = sorted(int(k[5:]) for k in metrics if k.startswith("acc@t"))
        color = f"C{i}"
        accuracy = [metrics[f"acc@t{t}"] for t in turns]
        errors = [100 * math.sqrt(a / 100 * (1 - a / 100) / problems) for a in accuracy] if problems else None
        ax.errorbar(turns, accuracy, yerr=errors, fmt="o-", color=color, capsize=3, label=f"{name}: acc@turn")
        oracle = f"p1@t{turns[-1]}"
        if oracle in metrics:
            ax.plot(turns[-1], metrics[oracle], "*", ms=12, color=color, label=f"{name}: {oracle}")
        parallel = next((k for k in metrics if k.startswith("p") and k.endswith("@t1")), None)
        if parallel:
            ax.axhline(metrics[parallel], ls="--", color=color, alpha=0.6, label=f"{name}: {parallel}")
    ax.set_xticks(turns)
    ax.set_xlabel("turn")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy per turn without an oracle")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, Path(path))


def figure(columns: dict[str, dict[str, float]], run: Path, folder: Path) -> Path:
    """A run's report figure: `plot_turns` of its evaluations."""
    return plot_turns(columns, folder / "accuracy_per_turn.png")
