"""`feedlearn demo`: RISE end to end on the embedded tiny offline recipe, with a before/after table."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.rise import Rise, RiseConfig
from feedlearn.report import metrics_table, plot_turns, print_table

DEMO_RECIPE = files("feedlearn") / "recipes" / "rise" / "tiny.yaml"


def run_demo(out: Path, overrides: list[str] = ()) -> dict:
    """Build a tiny model, warm it up on synthetic arithmetic, evaluate it over 5 turns, run one RISE
    iteration (self-distillation), evaluate again; write `out/summary.json` and `out/turns.png`."""
    started = time.perf_counter()
    config = load_recipe(RiseConfig, str(DEMO_RECIPE), [f"run_dir={out}", *overrides])
    store = open_run(config.run_dir, "rise-tiny", config.model_dump(mode="json"))
    rise = Rise(config, store)
    rise.run()
    columns = {"base": rise.evaluate(0), "rise": rise.evaluate(config.iterations)}
    summary = {**columns, "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "summary.json", summary)
    plot_turns(columns, out / "turns.png")
    print_table(metrics_table("RISE on the tiny offline recipe (accuracy, %)", columns))
    print(f"summary: {out / 'summary.json'}  plot: {out / 'turns.png'}  run: {store.path}")
    return summary
