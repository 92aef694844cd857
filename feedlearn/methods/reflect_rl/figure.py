"""Reflect-RL's figure: test success per level of each evaluated policy."""

from __future__ import annotations

from pathlib import Path

from feedlearn.methods.plots import grouped_bars, pyplot, save


def figure(columns: dict[str, dict[str, float]], run: Path, folder: Path) -> Path:
    """One group of bars per level (or one, 'all'), one bar per evaluation."""
    levels = sorted({k.split("/")[1] for m in columns.values() for k in m if k.startswith("levels/")})
    keys = [f"levels/{lvl}/success" for lvl in levels] or ["success"]
    fig, ax = pyplot().subplots(figsize=(max(6, 1.2 * len(keys) + 3), 4))
    grouped_bars(ax, levels or ["all"], {name: [m.get(k, 0) for k in keys] for name, m in columns.items()})
    ax.set_xlabel("level")
    ax.set_ylabel("success (%)")
    ax.set_title("test success per level")
    return save(fig, folder / "results.png")
