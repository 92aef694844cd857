"""AdaRefiner's figure: Crafter score and comprehension per iteration, success per achievement."""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.adarefiner.layout import AdaRefinerLayout
from feedlearn.methods.plots import grouped_bars, pyplot, save


def figure(columns: dict[str, dict[str, float]], run: Path, folder: Path) -> Path:
    """Crafter score and mean comprehension score per iteration (lines: the training episodes; stars: test
    episodes), and success per achievement in the run's last evaluation."""
    layout = AdaRefinerLayout(run, "adarefiner")
    train, test = layout.summaries("train"), layout.summaries("evaluate")
    fig, axes = pyplot().subplots(1, 3, figsize=(17, 4.5))
    for ax, key, title in (
        (axes[0], "score", "Crafter score"),
        (axes[1], "comprehension", "mean comprehension score"),
    ):
        points = {s: m[key] for s, m in train.items() if m.get(key) is not None}
        if points:
            ax.plot(list(points), list(points.values()), "o-", color="C0", label="train")
        tested = {s: m[key] for s, m in test.items() if m.get(key) is not None}
        if tested:
            ax.plot(list(tested), list(tested.values()), "*", ms=12, color="C1", label="test")
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    if test:
        last = test[max(test)]["success"]
        grouped_bars(ax, list(last), {run.name: list(last.values())}, rotation=90)
        ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("success (%)")
    ax.set_title("success per achievement (last evaluation)")
    return save(fig, folder / "results.png")
