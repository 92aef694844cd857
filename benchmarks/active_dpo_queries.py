"""Query efficiency of Active DPO: its accuracy against the labels it paid for, beside the curve that random
subsets of the labels draw, over several seeds, offline.

The task (`feedlearn.tasks.word_preferences`) has a hidden rule the oracle labeler knows: each of 2 topics
gives each of 200 words a value, and the response whose words are worth more is preferred. A tiny model
must learn the 400 values from the labels, so its held-out accuracy still grows with labels up to the
whole pool of 6400: the regime where choosing which labels to pay for can show (or fail to show) an
effect. Per seed (the seed draws the pool, the tiny model's initial weights, the data order and the
subsets), every run trains for the same 400 optimizer steps (4 epochs over the pool, batch 64):
- DPO on random subsets of the pool (5, 10, 20, 50 and 100% of it, nested), the subset's epochs scaled up
  to the pool's steps: the random curve;
- Active DPO over the pool for several gammas, asking only where |m| <= gamma, and elsewhere training on
  its own label (`flip`, the paper's rule) or skipping the pair (`drop`);
- a control: Active DPO's `drop` rule on the random 50% subset, to tell the labels it chooses from the
  pairs it skips.
Every run of every seed is scored on the same held-out pairs (test, or with `--split validation` another
draw, used to choose the settings), so arms are compared paired: Active DPO's accuracy minus the random
curve's at the same number of labels (interpolated in log labels between the subsets around it), per
seed, then the mean and its standard error over seeds.

The `smollm2` arm runs the same comparison on a real model (`recipes/active-dpo/smollm2.yaml`):
SmolLM2-135M-Instruct with the reference's LoRA adapter, on pairs of its own answers labeled by a
preference a user holds (the shorter answer; `scripts/make_smollm2_pairs.py` wrote the shipped pairs),
a pool of 160, 20 optimizer steps per run. It adds a run labeled by the model itself as a local pairwise
judge (`judge`): the labels' agreement with the user's preference, and what DPO learns from them.

    OMP_NUM_THREADS=1 python benchmarks/active_dpo_queries.py --out bench_out/active_dpo --jobs 2
        # the reported numbers: 3 seeds, 33 runs, about 15 minutes on 2 idle cores
  OMP_NUM_THREADS=1 python benchmarks/active_dpo_queries.py --out bench_out/active_dpo --jobs 2 --arm smollm2
        # the real-model arm: 2 seeds, 12 runs
    python benchmarks/active_dpo_queries.py --out /tmp/smoke --quick      # a smoke test, about a minute

Writes the arm's section of `OUT/result.json` (every run, and the summary over seeds; a rerun keeps the
other arm's) and `OUT/queries.png` (`OUT/queries-smollm2.png`). Finished runs are kept in `OUT/runs` and
reused by a rerun with the same `--out` (start from an empty folder after a change).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from feedlearn.data.jsonl import read_jsonl, update_json_sections, write_jsonl_atomic
from feedlearn.data.records import LabelRecord
from feedlearn.data.store import open_run
from feedlearn.errors import FeedlearnError
from feedlearn.methods.dpo.config import ActiveDPOConfig, DPOConfig
from feedlearn.methods.dpo.stages import PairMargin, PreferenceLearning, pair_credit
from feedlearn.resources import peak_rss_mb
from feedlearn.stats import paired_difference

FULL = {
    "pool": 6400,
    "eval": 2000,
    "topics": 2,
    "words": 200,
    "epochs": 4,
    "batch": 64,
    "lr": 3e-3,
    "fractions": [0.05, 0.1, 0.2, 0.5, 1.0],
    "active": {"flip": [1.0, 2.0], "drop": [0.1, 0.25, 0.5]},
    "control": {"fraction": 0.5, "gamma": 0.25},
    "seeds": [0, 1, 2],
    "tiny": {},
}
SMOLLM2 = {
    "recipe": "smollm2.yaml",
    "pool": 160,
    "epochs": 1,
    "batch": 8,
    "fractions": [0.25, 0.5, 1.0],
    "active": {"flip": [1.3], "drop": [1.3]},
    "control": None,
    "judge": True,
    "seeds": [0, 1],
}
"""The real-model arm: the recipe's model, data and optimization; these runs beside it."""
QUICK = {
    "pool": 320,
    "eval": 64,
    "topics": 2,
    "words": 50,
    "epochs": 1,
    "batch": 16,
    "lr": 1e-3,
    "fractions": [0.1, 0.5, 1.0],
    "active": {"flip": [1.0], "drop": [1.0]},
    "control": {"fraction": 0.5, "gamma": 1.0},
    "seeds": [0, 1],
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2},
}
EVAL_SEEDS = {"test": 1, "validation": 2}
"""The draw of held-out pairs per split (both from the pairs no training pool can draw)."""
RECIPES = Path(__file__).resolve().parent.parent / "feedlearn" / "recipes" / "active-dpo"
LOCAL_JUDGE = {"kind": "judge", "local": {"path": "smollm2-135m-instruct"}}
"""The judge run's labeler: the recipe's own model, asked which answer is better in both orders."""


def base_config(out: Path, settings: dict, seed: int, split: str) -> dict:
    """Every run's settings before its own changes: the real-model arm's recipe, or the tiny task."""
    if "recipe" in settings:
        raw = yaml.safe_load((RECIPES / settings["recipe"]).read_text())
        data = RECIPES / Path(raw["train_data"]["path"]).parent.name
        raw.pop("method")
        raw.pop("active")
        raw["train"].update(epochs=settings["epochs"], batch_size=settings["batch"], checkpoint_every=100_000)
        return {
            **raw,
            "seed": seed,
            "run_dir": str(out / "runs"),
            "train_data": {"path": str(data / "train.jsonl")},
            "eval_data": {"path": str(data / f"{split}.jsonl")},
        }
    return tiny_config(out, settings, seed, split)


def tiny_config(out: Path, settings: dict, seed: int, split: str) -> dict:
    task = {"topics": settings["topics"], "words": settings["words"]}
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
        "train_data": {"synthetic": {"n": settings["pool"], "seed": seed, "task": task}},
        "eval_data": {"synthetic": {"n": settings["eval"], "seed": EVAL_SEEDS[split], "task": task}},
        "dpo": {"beta": 0.1},
        "train": {
            "learning_rate": settings["lr"],
            "lr_schedule": "cosine",
            "warmup_ratio": 0.05,
            "epochs": settings["epochs"],
            "batch_size": settings["batch"],
            "grad_accum": 1,
            "max_length": 64,
            "checkpoint_every": 100_000,
        },
    }


def run(job: tuple[str, dict]) -> dict:
    """Train and evaluate one run (a finished one is only evaluated again): its labels, accuracy, wall time
    and, for Active DPO, how its queries and pseudo-labels went."""
    run_id, raw = job
    config = (ActiveDPOConfig if "active" in raw else DPOConfig).model_validate(raw)
    started = time.perf_counter()
    method = PreferenceLearning(
        config, open_run(config.run_dir, run_id, config.model_dump(mode="json")), False
    )
    judged = raw.get("labeler", {}).get("kind") == "judge"
    try:
        method.train()
    except FeedlearnError as error:  # a judge with no usable label stops the run: reported as such
        if not judged:
            raise
        print(f"{run_id:>28}: stopped: {error}", flush=True)
        return {"run": run_id, "stopped": str(error), **label_agreement(method)}
    metrics = method.evaluate()
    margins = sorted(read_jsonl(method.layout.evaluation() / "margins.jsonl", PairMargin), key=lambda m: m.id)
    result = {
        "run": run_id,
        "labels": metrics["queries_used"],
        "accuracy": metrics["preference_accuracy"],
        "seconds": round(time.perf_counter() - started, 1),
        "right": [pair_credit(m.margin) for m in margins],
    }
    if "active" in raw:
        result |= query_trace(method)
    if judged:
        result |= label_agreement(method)
    print(f"{run_id:>28}: {result['labels']:>6} labels, {result['accuracy']:.2f}%", flush=True)
    return result


def query_trace(method: PreferenceLearning) -> dict:
    """Labels paid for by each quarter of the epoch, and how often the pseudo-labels agreed with the
    oracle (the share of all pseudo-labels of the run)."""
    steps = [r for r in method.store.metrics() if r["stage"] == "train" and r["step"] is not None]
    quarters = [steps[max(0, round(len(steps) * q / 4) - 1)]["queries_used"] for q in (1, 2, 3, 4)]
    pseudo = sum(r["pseudo_labels"] for r in steps)
    agree = sum(r["pseudo_labels"] * r.get("pseudo_label_agreement", 0.0) for r in steps)
    return {"labels_by_quarter": quarters, "pseudo_label_agreement": agree / pseudo if pseudo else None}


def label_agreement(method: PreferenceLearning) -> dict:
    """How the run's paid labels compare with the pool's own (the user's preference): how many were paid
    for, the share (%) that agree and the share the labeler left undecided (0); the rest disagree."""
    gold = {p.id: p.label for p in method.config.train_data.load("train")}
    path = method.layout.labels()
    records = read_jsonl(path, LabelRecord) if path.exists() else []
    n = len(records) or 1
    return {
        "judged": len(records),
        "agree": round(100 * sum(r.label == gold[r.id] for r in records) / n, 2),
        "undecided": round(100 * sum(r.label == 0 for r in records) / n, 2),
    }


def jobs_of_seed(out: Path, settings: dict, seed: int, split: str) -> list[tuple[str, dict]]:
    """Every run of one seed, from one tiny model built here (once per seed)."""
    config = base_config(out, settings, seed, split)
    if config["model"]["path"] == "tiny":
        base = DPOConfig.model_validate(config)
        store = open_run(base.run_dir, f"tiny-base-seed{seed}", base.model_dump(mode="json"))
        model_path = PreferenceLearning(base, store, False).base_model_path()
        config["model"] = {"path": model_path}
    pool = DPOConfig.model_validate(config).train_data.load("train")
    order = subset_order(len(pool), seed)
    jobs, subsets = [], {}
    for fraction in settings["fractions"]:
        size = round(fraction * len(pool))
        path = out / "data" / f"seed{seed}-random-{size}.jsonl"
        write_jsonl_atomic(path, [pool[i] for i in order[:size]])
        epochs = settings["epochs"] * round(len(pool) / size)  # the same optimizer steps as the pool's
        train = {**config["train"], "epochs": epochs}
        subsets[fraction] = {**config, "train_data": {"path": str(path)}, "train": train}
        jobs.append((f"s{seed}-random-{size}", subsets[fraction]))
    for mode, gammas in settings["active"].items():
        for gamma in gammas:
            active = {"gamma": gamma, "pseudo_label": mode}
            jobs.append((f"s{seed}-active-{mode}-g{gamma}", {**config, "active": active}))
    control = settings["control"]
    if control:
        subset = subsets[control["fraction"]]
        active = {"gamma": control["gamma"], "pseudo_label": "drop"}
        jobs.append((f"s{seed}-{control_arm(settings)}", {**subset, "active": active}))
    if settings.get("judge"):
        jobs.append((f"s{seed}-judge", {**config, "labeler": LOCAL_JUDGE}))
    return jobs


def control_arm(settings: dict) -> str:
    """The name of the control run: the drop rule on a random subset."""
    control = settings["control"]
    return f"random-{round(control['fraction'] * settings['pool'])}-drop-g{control['gamma']}"


def subset_order(n: int, seed: int) -> list[int]:
    """The seed's order of the pool; each random subset is a prefix of it (the subsets are nested)."""
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def check_steps(settings: dict) -> None:
    """Each subset must get exactly the full run's optimizer steps: its size times its epochs is the pool,
    in whole batches."""
    for fraction in settings["fractions"]:
        size = round(fraction * settings["pool"])
        if size % settings["batch"] or size * round(settings["pool"] / size) != settings["pool"]:
            raise SystemExit(f"subset of {size} pairs: choose a pool and fractions that give whole batches")


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """The random curve (labels, accuracy) at `x` labels, linear in log labels; None outside it."""
    points = sorted(points)
    if not points[0][0] <= x <= points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            t = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]


def mean_se(values: list[float]) -> dict:
    """Mean and standard error (n - 1 in the variance) over seeds."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 3), "se": round(se, 3), "n": len(values), "values": values}


def paired(right: list[float], base: list[float]) -> dict:
    """One run's accuracy minus another's on the same held-out pairs, in points, with the standard error of
    the per-pair differences (n - 1 in the variance)."""
    mean, se = paired_difference(right, base)
    return {"points": round(100 * mean, 2), "se": round(100 * se, 2)}


def summarize(runs: dict[int, dict[str, dict]], settings: dict) -> dict:
    """Per arm over seeds: labels and accuracy (mean, SE); for Active DPO also the random curve's accuracy
    at its labels and the paired difference."""
    seeds = sorted(runs)
    random_arms = [f"random-{round(f * settings['pool'])}" for f in settings["fractions"]]
    summary = {"random": [], "active": []}
    for arm in random_arms:
        rows = [runs[s][arm] for s in seeds]
        summary["random"].append(
            {
                "arm": arm,
                "labels": rows[0]["labels"],
                "accuracy": mean_se([r["accuracy"] for r in rows]),
            }
        )
    for mode, gammas in settings["active"].items():
        for gamma in gammas:
            arm = f"active-{mode}-g{gamma}"
            rows, curve, diffs = [runs[s][arm] for s in seeds], [], []
            for s, r in zip(seeds, rows, strict=True):
                at = interpolate(
                    [(runs[s][a]["labels"], runs[s][a]["accuracy"]) for a in random_arms], r["labels"]
                )
                curve.append(at)
                if at is not None:
                    diffs.append(round(r["accuracy"] - at, 3))
            agreement = [
                r["pseudo_label_agreement"] for r in rows if r.get("pseudo_label_agreement") is not None
            ]
            summary["active"].append(
                {
                    "arm": arm,
                    "pseudo_label": mode,
                    "gamma": gamma,
                    "labels": mean_se([r["labels"] for r in rows]),
                    "accuracy": mean_se([r["accuracy"] for r in rows]),
                    "random_at_same_labels": mean_se([c for c in curve if c is not None]) if diffs else None,
                    "difference": mean_se(diffs) if diffs else None,
                    "pseudo_label_agreement": round(statistics.fmean(agreement), 4) if agreement else None,
                    "versus_all_labels_per_seed": [
                        paired(r["right"], runs[s][random_arms[-1]]["right"])
                        for s, r in zip(seeds, rows, strict=True)
                    ],
                }
            )
    if settings["control"]:
        arm = control_arm(settings)
        plain = f"random-{round(settings['control']['fraction'] * settings['pool'])}"
        rows = [runs[s][arm] for s in seeds]
        summary["control"] = {
            "arm": arm,
            "labels": mean_se([r["labels"] for r in rows]),
            "accuracy": mean_se([r["accuracy"] for r in rows]),
            "difference_to_plain_subset": mean_se(
                [round(runs[s][arm]["accuracy"] - runs[s][plain]["accuracy"], 3) for s in seeds]
            ),
        }
    if settings.get("judge"):
        rows = [runs[s]["judge"] for s in seeds]
        full = random_arms[-1]
        summary["judge"] = {
            "labels_agreeing": mean_se([r["agree"] for r in rows]),
            "labels_undecided": mean_se([r["undecided"] for r in rows]),
            "stopped": [r.get("stopped") for r in rows],
        }
        if not any(r.get("stopped") for r in rows):
            summary["judge"] |= {
                "accuracy": mean_se([r["accuracy"] for r in rows]),
                "difference_to_dataset_labels": mean_se(
                    [round(runs[s]["judge"]["accuracy"] - runs[s][full]["accuracy"], 3) for s in seeds]
                ),
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, queries.png and the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test (about a minute)")
    parser.add_argument(
        "--arm",
        choices=["tiny", "smollm2"],
        default="tiny",
        help="tiny: the hidden-rule task; smollm2: SmolLM2-135M-Instruct on its own answers",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: 0 1 2)")
    parser.add_argument(
        "--split",
        choices=sorted(EVAL_SEEDS),
        default="test",
        help="held-out pairs to score on: test (reported) or validation (to choose settings on)",
    )
    parser.add_argument("--topics", type=int, help="topics of the hidden rule (default 2)")
    parser.add_argument("--words", type=int, help="words responses draw from (more: harder; default 200)")
    parser.add_argument("--pool", type=int, help="labeled pairs in the pool (default 6400)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process each (default 1)")
    args = parser.parse_args()
    out = Path(args.out)
    settings = dict(QUICK if args.quick else SMOLLM2 if args.arm == "smollm2" else FULL)
    for key in ("seeds", "topics", "words", "pool"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    check_steps(settings)
    started = time.perf_counter()

    jobs = [
        (seed, job) for seed in settings["seeds"] for job in jobs_of_seed(out, settings, seed, args.split)
    ]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run, [job for _, job in jobs]))
    runs: dict[int, dict[str, dict]] = {}
    for (seed, _), result in zip(jobs, results, strict=True):
        runs.setdefault(seed, {})[result["run"].split("-", 1)[1]] = result

    result = {
        "summary": summarize(runs, settings),
        "runs": {  # each run's per-pair scores (`right`) are summarized in the paired differences
            str(seed): {arm: {k: v for k, v in r.items() if k != "right"} for arm, r in arms.items()}
            for seed, arms in runs.items()
        },
        "settings": {**settings, "split": args.split, "jobs": args.jobs},
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    update_json_sections(out / "result.json", {args.arm: result}, legacy="summary")
    plot(result, out / ("queries.png" if args.arm == "tiny" else f"queries-{args.arm}.png"))
    print(table(result["summary"]))
    print(f"{result['seconds'] / 60:.1f} minutes")


def table(summary: dict) -> str:
    """The summary as a markdown table: mean ± SE over seeds."""

    def cell(stat: dict | None, sign: str = "") -> str:
        return "" if stat is None else f"{stat['mean']:{sign}.2f} ± {stat['se']:.2f}"

    lines = [
        "| run | labels | accuracy (%) | random subsets at as many labels | difference (paired) |",
        "|---|---|---|---|---|",
    ]
    for r in summary["random"]:
        lines.append(f"| DPO, {r['arm']} | {r['labels']} | {cell(r['accuracy'])} | | |")
    control = summary.get("control")
    if control:
        labels, diff = control["labels"], cell(control["difference_to_plain_subset"], "+")
        lines.append(
            f"| control: {control['arm']} | {labels['mean']:.0f} ± {labels['se']:.0f} | "
            f"{cell(control['accuracy'])} | (against the plain subset:) | {diff} |"
        )
    for a in summary["active"]:
        lines.append(
            f"| Active DPO, {a['pseudo_label']}, gamma {a['gamma']} | {a['labels']['mean']:.0f} ± "
            f"{a['labels']['se']:.0f} | {cell(a['accuracy'])} | {cell(a['random_at_same_labels'])} | "
            f"{cell(a['difference'], '+')} |"
        )
    judge = summary.get("judge")
    if judge:
        lines.append(
            f"| DPO, the model as its own judge ({cell(judge['labels_agreeing'])}% of its labels agree, "
            f"{cell(judge['labels_undecided'])}% undecided) | | {cell(judge.get('accuracy'))} | "
            f"(against the dataset's labels:) | {cell(judge.get('difference_to_dataset_labels'), '+')} |"
        )
    for a in summary["active"]:
        per_seed = " / ".join(f"{d['points']:+.2f} ± {d['se']:.2f}" for d in a["versus_all_labels_per_seed"])
        lines.append(
            f"\nActive DPO, {a['pseudo_label']}, gamma {a['gamma']} against DPO on all labels, paired on"
        )
        lines.append(f"the held-out pairs, per seed: {per_seed}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Held-out accuracy against labels paid for: the random curve (mean and SE over seeds) and each
    Active DPO mode's gammas (mean and SE of both labels and accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    summary, settings = result["summary"], result["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [r["labels"] for r in summary["random"]]
    mean = [r["accuracy"]["mean"] for r in summary["random"]]
    se = [r["accuracy"]["se"] for r in summary["random"]]
    ax.errorbar(labels, mean, yerr=se, fmt="^-", color="C2", capsize=3, label="DPO, random subset")
    ax.axhline(mean[-1], color="C2", ls=":", alpha=0.5)
    for color, mode in zip(("C1", "C3"), settings["active"], strict=False):
        arms = [a for a in summary["active"] if a["pseudo_label"] == mode]
        ax.errorbar(
            [a["labels"]["mean"] for a in arms],
            [a["accuracy"]["mean"] for a in arms],
            xerr=[a["labels"]["se"] for a in arms],
            yerr=[a["accuracy"]["se"] for a in arms],
            fmt="o-",
            color=color,
            capsize=3,
            label=f"Active DPO, {mode}",
        )
        for a in arms:
            ax.annotate(
                f"Γ={a['gamma']}",
                (a["labels"]["mean"], a["accuracy"]["mean"]),
                textcoords="offset points",
                xytext=(4, 5),
                fontsize=8,
                color=color,
            )
    control, rule = summary.get("control"), settings["control"]
    if control:
        ax.errorbar(
            [control["labels"]["mean"]],
            [control["accuracy"]["mean"]],
            xerr=[control["labels"]["se"]],
            yerr=[control["accuracy"]["se"]],
            fmt="D",
            color="k",
            capsize=3,
            label=f"Active DPO's drop rule on the random {rule['fraction']:.0%} subset, Γ={rule['gamma']}",
        )
    judge = summary.get("judge")
    if judge and "accuracy" in judge:
        ax.errorbar(
            [labels[-1]],
            [judge["accuracy"]["mean"]],
            yerr=[judge["accuracy"]["se"]],
            fmt="s",
            color="C4",
            capsize=3,
            label=f"DPO, the model as its own judge ({judge['labels_agreeing']['mean']:.0f}% agree)",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(labels))  # the subsets' sizes, written out
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(labels[0] / 1.2, labels[-1] * 1.3)
    ax.set_xlabel(f"preference labels paid for (pool of {settings['pool']})")
    ax.set_ylabel(f"held-out preference accuracy (%), {settings['split']}")
    seeds = len(settings["seeds"])
    task = (
        "SmolLM2-135M-Instruct"
        if "recipe" in settings
        else f"{settings['topics']} topics x {settings['words']} words"
    )
    ax.set_title(f"Active DPO against random subsets ({task}): mean ± SE of {seeds} seeds", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
