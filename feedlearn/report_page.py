"""`feedlearn report`'s folder: a PNG of training curves per stage (every numeric metric a stage logged
per step: loss, learning rate, grad norm, the method's diagnostics) and an `index.html` that shows the
evaluation tables and the figures together, self-contained (no network, no CDN, no script), to open in a
browser or attach to a note.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

PANELS_PER_ROW = 3
SKIPPED = ("stage", "step", "time")


def stage_curves(metrics_log: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{stage: {metric: [(step, value)]}} of the rows logged with a step (summary rows have none). A last
    line without its newline was torn by a crash (the run drops it when it resumes) and is skipped."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for line in metrics_log.read_text(encoding="utf-8").split("\n")[:-1]:
        if not line:
            continue
        row = json.loads(line)
        if row.get("step") is None:
            continue
        for key, value in row.items():
            if key in SKIPPED or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                curves.setdefault(row["stage"], {}).setdefault(key, []).append((row["step"], value))
    return curves


def plot_curves(stage: str, curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per metric of `stage`, its value against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted(curves)
    rows = math.ceil(len(names) / PANELS_PER_ROW)
    columns = min(PANELS_PER_ROW, len(names))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = zip(*curves[name], strict=True)
        ax.plot(steps, values, "-" if len(steps) > 20 else "o-", ms=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.ticklabel_format(axis="y", useOffset=False)  # a loss near log 2 reads as 0.6931, not 1e-5+...
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"{stage}: training curves", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: Path, results: dict[str, dict], figures: list[Path] = ()) -> Path:
    """`run/report/`: a curves PNG per stage that logged steps and `index.html` with the evaluation
    `results` ({column: flat {metric: value}}) as a table, then every figure (`figures` too, written in
    `run/report/` before)."""
    folder = run / "report"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    log = run / "metrics.jsonl"
    for stage, curves in (stage_curves(log) if log.exists() else {}).items():
        png = folder / f"curves_{stage.replace('/', '_')}.png"
        plot_curves(stage, curves, png)
        images.append((f"{stage}: training curves", png.name))
    images += [(figure.stem, figure.name) for figure in figures]
    page = folder / "index.html"
    page.write_text(_html(run.name, results, images), encoding="utf-8")
    return page


def write_comparison(runs: list[Path], results: dict[str, dict]) -> Path:
    """`compare.html` in the first run's report folder: the runs' evaluation columns side by side
    (`run/column`), then each run's figures (written by `write_report` before), captioned by run."""
    folder = runs[0] / "report"
    images = []
    for run in runs:
        for png in sorted((run / "report").glob("*.png")):
            target = folder / f"{run.name}__{png.name}"
            if png.resolve() != target.resolve() and "__" not in png.name:
                target.write_bytes(png.read_bytes())
                images.append((f"{run.name}: {png.stem}", target.name))
    page = folder / "compare.html"
    page.write_text(_html(" vs ".join(r.name for r in runs), results, images), encoding="utf-8")
    return page


def _html(name: str, results: dict[str, dict], images: list[tuple[str, str]]) -> str:
    keys = list(dict.fromkeys(k for column in results.values() for k in column))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in results)
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{_cell(column.get(k))}</td>" for column in results.values())
        + "</tr>"
        for k in keys
    )
    figures = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, src in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}figure{margin:1.5em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>feedlearn: {html.escape(name)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(name)}</h1><h2>Evaluation</h2>"
        f"<table><tr><th>metric</th>{head}</tr>{body}</table><h2>Figures</h2>{figures}</body></html>\n"
    )


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))
