"""Reflect-RL offline: SFT only, SFT + RL, SFT + RL with reflection, on DangerousTaxi (dropoff level) and
on AutoExplore over a small synthetic repository with held-out questions.

Tiny models learn from the scripted teacher (oracle moves, template reflections, recovery steps), then the
policy learns online with REINFORCE (`recipes/reflect-rl/tiny.yaml`, `tiny_autoexplore.yaml`). Each
configuration is evaluated on the same held-out episodes (greedy): success rate and mean cost.

    python benchmarks/reflect_rl_taxi.py --out bench_out/reflect_rl     # minutes on 2 cores
    python benchmarks/reflect_rl_taxi.py --out /tmp/smoke --quick       # a smoke test

Writes `OUT/result.json` (Taxi's {"sft": {"success": %, "cost": ..}, "sft_rl": {...}, "reflect_rl": {...},
"reflect_sft": {...}, "curve": [{"iteration", "sft_rl", "reflect_rl"}, ...]}, and the same under
"autoexplore") and `OUT/curve.png`.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.reflect_rl import ReflectRL, ReflectRLConfig

RECIPES = {
    "taxi": files("feedlearn") / "recipes" / "reflect-rl" / "tiny.yaml",
    "autoexplore": files("feedlearn") / "recipes" / "reflect-rl" / "tiny_autoexplore.yaml",
}
QUICK = [
    "tiny={hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, vocab_size: 400}",
    "teacher={episodes: 8, p_oracle: 0.9, negatives: 2}",
    "sft.epochs=1",
    "sft.batch_size=4",
    "rl.iterations=2",
    "rl.episodes_per_iteration=2",
    "evaluate.episodes=4",
    "max_reflection_tokens=16",
]


def run(out: Path, recipe, name: str, overrides: list[str]) -> tuple[dict, dict, list[float]]:
    """SFT, evaluate, RL, evaluate; (after SFT, after RL, success per RL iteration)."""
    config = load_recipe(ReflectRLConfig, str(recipe), [f"run_dir={out / 'runs'}", *overrides])
    method = ReflectRL(config, open_run(config.run_dir, name, config.model_dump(mode="json")))
    method.run()
    rows = [json.loads(line) for line in (method.store.path / "metrics.jsonl").read_text().splitlines()]
    curve = [100.0 * r["charts/success"] for r in rows if r["stage"] == "rl"]
    return method.evaluate("sft"), method.evaluate("rl"), curve


def compare(out: Path, env: str, common: list[str]) -> dict:
    """The three configurations (and reflection after SFT only) on one environment."""
    sft, sft_rl, curve_plain = run(out, RECIPES[env], f"{env}-no-reflection", [*common, "reflection=false"])
    reflect_sft, reflect_rl, curve_reflect = run(
        out, RECIPES[env], f"{env}-reflection", [*common, "reflection=true"]
    )
    return {
        "sft": sft,
        "sft_rl": sft_rl,
        "reflect_sft": reflect_sft,
        "reflect_rl": reflect_rl,
        "curve": [
            {"iteration": i + 1, "sft_rl": a, "reflect_rl": b}
            for i, (a, b) in enumerate(zip(curve_plain, curve_reflect, strict=True))
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, curve.png and the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument("--seed", type=int, default=0, help="the recipes' seed")
    parser.add_argument("--env", choices=["both", *RECIPES], default="both", help="which environments")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipes"
    )
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    common = [f"seed={args.seed}", *(QUICK if args.quick else []), *args.set]
    result = {}
    if args.env in ("both", "taxi"):
        result.update(compare(out, "taxi", common))
    if args.env in ("both", "autoexplore"):
        result["autoexplore"] = compare(out, "autoexplore", common)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "result.json", result)
    plot(result, out / "curve.png")
    print(json.dumps(_without_curves(result), indent=2))


def _without_curves(result: dict) -> dict:
    return {k: _without_curves(v) if k == "autoexplore" else v for k, v in result.items() if k != "curve"}


def plot(result: dict, path: Path) -> None:
    """Per environment: training success per RL iteration, with and without reflection, and the held-out
    results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (title, r)
        for title, r in [("DangerousTaxi (dropoff)", result), ("AutoExplore", result.get("autoexplore"))]
        if r and "curve" in r
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    for ax, (title, r) in zip(axes[0], panels, strict=True):
        its = [c["iteration"] for c in r["curve"]]
        for key, label, color in [
            ("sft_rl", "RL, no reflection", "C0"),
            ("reflect_rl", "RL with reflection", "C1"),
        ]:
            ax.plot(
                its, [c[key] for c in r["curve"]], "-", color=color, alpha=0.7, label=f"{label} (training)"
            )
            ax.axhline(r[key]["success"], color=color, ls="--", label=f"{label}: held out")
        ax.axhline(r["sft"]["success"], color="C7", ls=":", label="SFT only: held out")
        ax.set_xlabel("RL iteration")
        ax.set_ylabel("success (%)")
        ax.set_title(f"Reflect-RL on {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
