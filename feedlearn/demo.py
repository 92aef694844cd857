"""`feedlearn demo`: RISE end to end on the embedded tiny offline recipe, with a before/after table and each
difference beside its paired standard error."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

from rich.table import Table

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.methods.rise.data import paired_comparison
from feedlearn.methods.rise.figure import plot_turns
from feedlearn.methods.rise.stages import Rise
from feedlearn.report import metrics_table, print_table

DEMO_RECIPE = files("feedlearn") / "recipes" / "rise" / "tiny.yaml"


def run_demo(out: Path, overrides: list[str] = (), recipe: Path = DEMO_RECIPE) -> dict:
    """Start from the bundled tiny base (warm-started on synthetic arithmetic; or `recipe`'s model and warm
    start), evaluate it over 5 turns, run RISE (self-distillation), evaluate again; write
    `out/summary.json` (both models' metrics, and under `paired` each difference and each model's gain over
    its turns with the standard error of the paired difference over the same test problems) and
    `out/turns.png` (accuracy per turn with error bars)."""
    started = time.perf_counter()
    name = f"rise-{Path(recipe).stem}"
    config = load_recipe(RiseConfig, str(recipe), [f"run_dir={out}", *overrides])
    store = open_run(config.run_dir, name, config.model_dump(mode="json"))
    rise = Rise(config, store)
    rise.run()
    columns = {"base": rise.evaluate(0), "rise": rise.evaluate(config.iterations)}
    paired = paired_comparison(rise.outcomes(0), rise.outcomes(config.iterations))
    summary = {**columns, "paired": paired, "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "summary.json", summary)
    plot_turns(columns, out / "turns.png", problems=len(rise.outcomes(0)["m1@t1"]))
    print_table(metrics_table(f"RISE, {name} (accuracy, %)", columns))
    print_table(differences_table(paired))
    print(f"summary: {out / 'summary.json'}  plot: {out / 'turns.png'}  run: {store.path}")
    return summary


def differences_table(paired: dict[str, dict]) -> Table:
    """RISE minus the base per metric, and each model's gain over its own turns, in points with the
    paired standard error and how many errors away from 0 each is."""
    table = Table(title="RISE - base on the same problems (points, paired s.e.)")
    for column in ("", "points", "se", "points / se"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [(f"{k}: rise - base", v) for k, v in paired["difference"].items()]
    for gain, by_model in ((k, v) for k, v in paired.items() if k != "difference"):
        rows += [(f"{gain}: {model}", v) for model, v in by_model.items()]
    for name, v in rows:
        ratio = f"{v['points'] / v['se']:+.1f}" if v["se"] else "-"
        table.add_row(name.replace("new", "rise"), f"{v['points']:+.1f}", f"{v['se']:.1f}", ratio)
    return table
