"""Reports: metrics tables in the terminal and plots as PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from feedlearn.data.store import flatten


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """A table with one row per metric and one column per model (e.g. base, rise)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for col in columns.values() for k in col))
    for key in keys:
        table.add_row(key, *(f"{col[key]:.1f}" if key in col else "-" for col in columns.values()))
    return table


def print_table(table: Table) -> None:
    """Print a rich table to the terminal."""
    Console().print(table)


def print_results(title: str, name: str, result: dict) -> None:
    """Print results of any depth: {metric: value} as one column called `name`; {column: {metric: value}}
    as one table (metrics nested inside a column become `a/b` rows); deeper results as one table per
    top-level key."""
    values = list(result.values())
    if not all(isinstance(v, dict) for v in values):
        print_table(metrics_table(title, {name: flatten(result)}))
    elif all(not all(isinstance(x, dict) for x in v.values()) for v in values):
        print_table(metrics_table(title, {key: flatten(v) for key, v in result.items()}))
    else:
        for key, sub in result.items():
            print_results(f"{title}: {key}", key, sub)


def plot_turns(columns: dict[str, dict[str, float]], path: str | Path, problems: int | None = None) -> None:
    """Accuracy per turn (acc@t1..acc@tT) of each model, with its parallel pass@n as a dashed line; given
    the number of test `problems`, each accuracy with its standard error, sqrt(p (1 - p) / problems)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouped_bars(ax, labels: list[str], series: dict[str, list[float]], rotation: int = 0) -> None:
    """One group of bars per label, one bar per series (in order, with a legend)."""
    width = 0.8 / len(series)
    for j, (name, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(labels))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=rotation)
    ax.legend(fontsize=8)


def _stage_metrics(run: Path, kind: str) -> dict[int, dict]:
    """AdaRefiner's per-stage metrics of a run folder: `kind` train (stage<i>/train) or evaluate."""
    pattern = "stage*/train/metrics.json" if kind == "train" else "evaluate/stage*/metrics.json"
    found = {}
    for path in run.glob(pattern):
        folder = path.parent if kind == "evaluate" else path.parent.parent
        found[int(folder.name.removeprefix("stage"))] = json.loads(path.read_text())
    return dict(sorted(found.items()))


def plot_adarefiner(runs: dict[str, Path], path: str | Path) -> None:
    """AdaRefiner runs side by side (base arms beside AdaRefiner): Crafter score and mean comprehension
    score per stage (lines: the training episodes; markers: test episodes), and success per achievement
    in each run's last evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    last = {}
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i}"
        train, test = _stage_metrics(run, "train"), _stage_metrics(run, "evaluate")
        if test:
            last[name] = test[max(test)]
        for ax, key in ((axes[0], "score"), (axes[1], "comprehension")):
            points = {s: m[key] for s, m in train.items() if m.get(key) is not None}
            if points:
                ax.plot(list(points), list(points.values()), "o-", color=color, label=f"{name} (train)")
            tested = {s: m[key] for s, m in test.items() if m.get(key) is not None}
            if tested:
                ax.plot(list(tested), list(tested.values()), "*", ms=12, color=color, label=f"{name} (test)")
    for ax, title in ((axes[0], "Crafter score"), (axes[1], "mean comprehension score")):
        ax.set_xlabel("stage")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    if last:
        names = list(next(iter(last.values()))["success"])
        grouped_bars(ax, names, {r: [m["success"][n] for n in names] for r, m in last.items()}, rotation=90)
        ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("success (%)")
    ax.set_title("success per achievement (last evaluation)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_method(method: str, columns: dict[str, dict[str, float]], path: Path) -> Path | None:
    """The method's own figure from its evaluation columns ({column: flat metrics}), or None where it has
    none here (RISE and AdaRefiner have theirs: `plot_turns`, `plot_adarefiner`). DPO / Active DPO:
    preference accuracy against the labels queried; C3PO: adherence in scope and change near and out of
    scope per method and feedback; Reflect-RL: success per level of each evaluated policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method in ("dpo", "active-dpo"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in columns.items():
            ax.plot(m.get("queries_used", 0), m["preference_accuracy"], "o", ms=8, label=name)
        ax.axhline(50, ls="--", color="grey", label="chance")
        ax.set_xlabel("labels queried")
        ax.set_ylabel("held-out preference accuracy (%)")
        ax.set_title("accuracy against labels queried")
        ax.legend(fontsize=8)
    elif method == "c3po":
        parts = ("in_scope_adherence", "near_scope_changed", "out_scope_changed")
        fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4.2), squeeze=False)
        for ax, (feedback, m) in zip(axes[0], columns.items(), strict=True):
            names = sorted({k.split("/")[0] for k in m if k.endswith(parts)})
            grouped_bars(ax, names, {p: [m.get(f"{n}/{p}", 0) for n in names] for p in parts}, rotation=30)
            ax.set_ylabel("%")
            ax.set_ylim(0, 118)  # room above 100% for the legend
            ax.legend(fontsize=8, ncol=3, loc="upper center")
            ax.set_title(f"feedback {feedback}: follows in scope, changes elsewhere", fontsize=10)
    elif method == "reflect-rl":
        levels = sorted({k.split("/")[1] for m in columns.values() for k in m if k.startswith("levels/")})
        keys = [f"levels/{lvl}/success" for lvl in levels] or ["success"]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) + 3), 4))
        grouped_bars(
            ax, levels or ["all"], {name: [m.get(k, 0) for k in keys] for name, m in columns.items()}
        )
        ax.set_xlabel("level")
        ax.set_ylabel("success (%)")
        ax.set_title("test success per level")
    else:
        return None
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
