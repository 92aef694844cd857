"""Query efficiency of Active DPO against DPO on all labels and DPO on random subsets, offline.

The task (`feedlearn.tasks.word_preferences`) has a hidden rule the oracle labeler knows: each topic likes
some words, and the response whose words are worth more is preferred. One tiny model, built once, starts
every run. Runs:
- DPO on every pair of the pool (one query per pair);
- Active DPO for several gamma values, asking only where |m| <= gamma, and elsewhere training on its own
  label (`flip`) or skipping the pair (`drop`);
- DPO on a random subset as large as each Active DPO run's queries, trained for as many optimizer steps
  as the full run (the subset's epochs scaled up), so it gets every chance to catch up.
Each run is scored by held-out preference accuracy against the hidden rule.

    python benchmarks/active_dpo_queries.py --out bench_out/active_dpo        # about 8 minutes on 2 cores
    python benchmarks/active_dpo_queries.py --out /tmp/smoke --quick          # a smoke test, seconds
    python benchmarks/active_dpo_queries.py --out bench_out/adpo_warm --topics 8 --pool 8000 --warm-topics 4
                                     # other regimes: fewer labels, a model that knows part of the task

Writes `OUT/result.json` ({"dpo": {...}, "active": [...], "random_subset": [...]}) and `OUT/queries.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from feedlearn.data.jsonl import write_json_atomic, write_jsonl_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.dpo import ActiveDPOConfig, DPOConfig, PreferenceLearning

PSEUDO_LABELS = ("flip", "drop")
"""What Active DPO does with the pairs it is sure of: train on its own label, or skip them."""
FULL = {"pool": 32000, "eval": 2000, "gammas": [1.0, 1.5, 2.0, 3.0], "topics": 2, "epochs": 1, "tiny": {}}
QUICK = {
    "pool": 256,
    "eval": 64,
    "gammas": [1.0],
    "topics": 2,
    "epochs": 1,
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2},
}


def base_config(out: Path, settings: dict, seed: int) -> dict:
    task = {"topics": settings["topics"]}
    return {
        "seed": seed,
        "run_dir": str(out / "runs"),
        "model": {"path": "tiny"},
        "tiny": {
            "hidden_size": 64,
            "intermediate_size": 192,
            "num_layers": 2,
            "num_heads": 4,
            **settings["tiny"],
        },
        "train_data": {"synthetic": {"n": settings["pool"], "seed": 0, "task": task}},
        "eval_data": {"synthetic": {"n": settings["eval"], "seed": 1, "task": task}},
        "dpo": {"beta": 0.1},
        "train": {
            "learning_rate": 1e-3,
            "lr_schedule": "cosine",
            "warmup_ratio": 0.05,
            "epochs": settings["epochs"],
            "batch_size": 16,
            "grad_accum": 1,
            "max_length": 64,
            "checkpoint_every": 10_000,
        },
    }


def run(config: DPOConfig, run_id: str) -> dict:
    """Train and evaluate one run; its queries, accuracy and wall time."""
    started = time.perf_counter()
    method = PreferenceLearning(
        config, open_run(config.run_dir, run_id, config.model_dump(mode="json")), False
    )
    method.train()
    metrics = method.evaluate()
    result = {
        "queries": metrics["queries_used"],
        "accuracy": metrics["preference_accuracy"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{run_id:>24}: {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, queries.png and the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seeds model init, data order and subsets")
    parser.add_argument("--topics", type=int, help="topics of the hidden rule (more: harder; default 2)")
    parser.add_argument(
        "--pool", type=int, help="labeled pairs in the pool (fewer: label-limited; default 32000)"
    )
    parser.add_argument(
        "--warm-topics",
        type=int,
        default=0,
        help="first teach the model the rule of this many topics (DPO on a separate pool), so that, as a "
        "pretrained model would, it starts knowing part of the task (default 0: it starts knowing nothing)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    settings = dict(QUICK if args.quick else FULL)
    if args.topics:
        settings["topics"] = args.topics
    if args.pool:
        settings["pool"] = args.pool
    started = time.perf_counter()

    config = base_config(out, settings, args.seed)
    model_path = PreferenceLearning(DPOConfig.model_validate(config), None, False).base_model_path()
    config["model"] = {"path": model_path}  # every run starts from the same tiny model
    if args.warm_topics:
        warm = {
            **config,
            "run_dir": str(out / "warm"),
            "train_data": {
                "synthetic": {"n": settings["pool"], "seed": 5, "task": {"topics": args.warm_topics}}
            },
        }
        warm_run = PreferenceLearning(
            DPOConfig.model_validate(warm), open_run(warm["run_dir"], "warm-start", warm), False
        )
        config["model"] = {"path": str(warm_run.train())}
        settings["warm_topics"] = args.warm_topics

    dpo = run(DPOConfig.model_validate(config), "dpo")
    active = []
    for mode in PSEUDO_LABELS:
        for gamma in settings["gammas"]:
            active_config = {**config, "active": {"gamma": gamma, "pseudo_label": mode}}
            result = run(ActiveDPOConfig.model_validate(active_config), f"active-{mode}-g{gamma}")
            active.append({"gamma": gamma, "pseudo_label": mode, **result})

    pool = DPOConfig.model_validate(config).train_data.load("train")
    order = list(range(len(pool)))
    random.Random(args.seed).shuffle(order)
    subsets = []
    for a in active:
        size = a["queries"]
        path = out / "data" / f"random-{size}.jsonl"
        write_jsonl_atomic(path, [pool[i] for i in order[:size]])
        epochs = max(1, math.ceil(settings["epochs"] * len(pool) / size))  # at least the full run's steps
        subset = {**config, "train_data": {"path": str(path)}, "train": {**config["train"], "epochs": epochs}}
        subsets.append(run(DPOConfig.model_validate(subset), f"random-{size}"))

    result = {
        "dpo": dpo,
        "active": active,
        "random_subset": subsets,
        "settings": {**settings, "seed": args.seed, "lr": config["train"]["learning_rate"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "result.json", result)
    plot(result, out / "queries.png")
    print(json.dumps(result, indent=2))


def plot(result: dict, path: Path) -> None:
    """Held-out accuracy against queries used, one marker per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dpo = result["dpo"]
    ax.axhline(dpo["accuracy"], color="C0", ls="--", alpha=0.6)
    ax.plot(dpo["queries"], dpo["accuracy"], "s", color="C0", ms=8, label="DPO, all labels")
    for color, mode in zip(("C1", "C3"), PSEUDO_LABELS, strict=True):
        runs = [a for a in result["active"] if a["pseudo_label"] == mode]
        ax.plot(
            [a["queries"] for a in runs],
            [a["accuracy"] for a in runs],
            "o-",
            color=color,
            label=f"Active DPO, {mode}",
        )
        for a in runs:
            ax.annotate(
                f"Γ={a['gamma']}", (a["queries"], a["accuracy"]), textcoords="offset points", xytext=(4, -10)
            )
    subsets = sorted(result["random_subset"], key=lambda s: s["queries"])
    ax.plot(
        [s["queries"] for s in subsets],
        [s["accuracy"] for s in subsets],
        "^-",
        color="C2",
        label="DPO, random subset",
    )
    ax.set_xlabel("preference labels queried")
    ax.set_ylabel("held-out preference accuracy (%)")
    ax.set_title("Active DPO: accuracy against labels paid for")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
