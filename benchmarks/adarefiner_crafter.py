"""AdaRefiner on Crafter, offline: the mechanism first, the end-to-end pipeline second.

1. Mechanism (recipes/adarefiner/mechanism.yaml; 3 seeds, 3 stages): a scripted player that carries out
   six sub-goals well and the rest at random follows the instructions. Arms: `none` (no adapter: the
   decision maker falls back to its rule), `frozen` (the warmed-up adapter, never refined), `self` (refined
   on all its records from the warmed-up adapter each stage: the recipe's schedule), `feedback` (refined on
   the records whose instruction the player then followed, weighted by that comprehension score), and
   both refined arms again on the reference code's schedule (`self_previous`, `feedback_previous`: stage
   i starts from stage i-1's adapter, the newest 10% of the records held out). Per stage, on 24 test
   episodes: mean comprehension score, sub-goals completed, achievements per episode, Crafter score, and
   their mean and standard error over the seeds. `none` and `frozen` do not change between stages: their
   per-stage numbers differ only by sampling.
2. End to end (recipes/adarefiner/tiny.yaml; 2 seeds): PPO alone (`ppo`), PPO with the decision maker and
   no adapter (`guided`), and AdaRefiner (`adarefiner`), at equal environment steps, each trained, saved,
   reloaded and evaluated on test worlds.

The `smollm2` arm (`--arm smollm2`, recipes/adarefiner/smollm2.yaml; seeds 0 and 1) runs the mechanism
with SmolLM2-135M-Instruct as the adapter, one stage: `base` (the model as it is, never refined),
`frozen` (warmed up on template analyses, never refined) and `feedback` (the warmed-up adapter refined
on the stage's records), each on the same 24 test episodes; the per-stage metrics above plus the share
of analyses that name an allowed sub-goal, and differences paired per test episode (the same worlds).

    OMP_NUM_THREADS=1 python benchmarks/adarefiner_crafter.py --out bench_out/adarefiner
    OMP_NUM_THREADS=1 python benchmarks/adarefiner_crafter.py --out bench_out/adarefiner --arm smollm2
    python benchmarks/adarefiner_crafter.py --quick --out /tmp/smoke     # CI smoke test, about 1 minute

Writes DIR/result.json (the tiny arm's keys, and a `smollm2` section; a rerun of one arm keeps the
other's) and DIR/adarefiner_crafter.png (DIR/adarefiner_smollm2.png). Runs in two worker processes, one
torch thread each.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

from feedlearn.data.jsonl import update_json_sections
from feedlearn.resources import peak_rss_mb

MECHANISM_ARMS = ("none", "frozen", "self", "feedback", "self_previous", "feedback_previous")
SMOLLM2_ARMS = ("base", "frozen", "feedback")
PAIRS = (("feedback", "frozen"), ("frozen", "base"), ("feedback", "base"))
"""The smollm2 arm's differences, paired per test episode."""
REFERENCE_SCHEDULE = ["refine.start=previous", "refine.holdout=0.1"]
"""The reference code's SFT schedule (sft.py): from the previous stage's adapter, the newest 10% held out."""
END_TO_END_ARMS = ("ppo", "guided", "adarefiner")
RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "adarefiner"
PAPER = {
    "adarefiner_1M_steps": 15.8,
    "adarefiner_5M_steps": 28.2,
    "ppo_resnet": 15.6,
    "ppo_sb3_cnn": 4.6,
    "random": 1.6,
    "human": 50.5,
}
"""Crafter scores published in the paper (see shared/methods/adarefiner.md)."""
QUICK_MECHANISM = [
    "adapter.warmup_steps=800",
    "adapter.warmup.epochs=4",
    "steps_per_iteration=800",
    "iterations=1",
    "env.length=100",
    "evaluate.episodes=4",
    "agent.envs=4",
    "refine.sft={learning_rate: 1.0e-3, epochs: 1, batch_size: 4, grad_accum: 1, max_length: 512}",
]
QUICK_SMOLLM2 = [
    "adapter.warmup_steps=120",
    "adapter.warmup.epochs=1",
    "steps_per_iteration=120",
    "env.length=60",
    "agent.envs=2",
    "evaluate.episodes=2",
]
QUICK_END_TO_END = [
    "adapter.warmup_steps=400",
    "adapter.warmup.epochs=2",
    "steps_per_iteration=512",
    "agent.n_steps=64",
    "agent.batch_size=64",
    "iterations=1",
    "env.length=100",
    "evaluate.episodes=2",
    "refine.threshold=0.0",
    "refine.sft={learning_rate: 1.0e-3, epochs: 1, batch_size: 4, grad_accum: 1, max_length: 512}",
]


def _method(recipe: str, run_dir: Path, run_id: str, overrides: list[str]):
    from feedlearn.config import load_recipe
    from feedlearn.data.store import open_run
    from feedlearn.methods.adarefiner.config import AdaRefinerConfig
    from feedlearn.methods.adarefiner.stages import AdaRefiner

    config = load_recipe(AdaRefinerConfig, RECIPES / recipe, [f"run_dir={run_dir}", *overrides])
    return AdaRefiner(config, open_run(run_dir, run_id, config.model_dump(mode="json")), progress=False)


def _worker_setup() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def warm(task: tuple) -> tuple:
    """The warmed-up adapter of one seed (shared by the arms that start from it)."""
    _worker_setup()
    seed, run_dir, extra, recipe = task
    method = _method(recipe, run_dir, f"warm-seed{seed}", [f"seed={seed}", *extra])
    method.warmup()
    return seed, method.initial_adapter()


def mechanism_arm(task: tuple) -> tuple:
    """Per-stage test metrics of one arm at one seed, and the last stage's test episodes (`episodes`)."""
    _worker_setup()
    seed, arm, adapter, run_dir, extra, recipe = task
    overrides = [f"seed={seed}", *extra, "adapter.warmup_steps=0"]
    if arm == "none":
        overrides += ["guidance=decision"]
    elif arm == "base":  # the recipe's pretrained adapter as it is
        overrides += ["refine.mode=frozen"]
    else:
        mode, _, schedule = arm.partition("_")
        overrides += [f"model.path={adapter}", f"refine.mode={mode}"]
        overrides += REFERENCE_SCHEDULE if schedule == "previous" else []
    method = _method(recipe, run_dir, f"{arm}-seed{seed}", overrides)
    # none and frozen do not change between stages: their stages differ only by the adapter's samples and
    # the player's draws, which shows how far apart two evaluations of one adapter fall; they play no
    # training stage (the scripted player learns nothing, their adapter is not refined)
    refines = method.config.guidance == "adapter" and method.config.refine.mode != "frozen"
    stages = []
    for stage in range(1, method.config.iterations + 1):
        if refines:
            method.train(stage)
            method.sft(stage)
        stages.append(method.evaluate(stage))
    return seed, arm, stages, test_episodes(method)


def test_episodes(method) -> dict[str, dict]:
    """Per test episode the last stage's evaluation counted ("env-episode": the same world in every arm),
    its achievements and the mean comprehension score of its queries (None: no query of it was scored)."""
    from feedlearn.data.jsonl import read_jsonl
    from feedlearn.methods.adarefiner.loop import CrafterEpisode, QueryRecord

    folder = method.layout.evaluation(method.config.iterations)
    scores: dict[str, list[float]] = {}
    for q in read_jsonl(folder / "queries.jsonl", QueryRecord):
        if q.score_after is not None:
            scores.setdefault(f"{q.env}-{q.episode}", []).append(q.score_after)
    out = {}
    for e in method.evaluated_episodes(read_jsonl(folder / "episodes.jsonl", CrafterEpisode)):
        key = f"{e.env}-{e.episode}"
        s = scores.get(key)
        out[key] = {"achievements": len(e.achievements), "comprehension": sum(s) / len(s) if s else None}
    return out


def end_to_end_arm(task: tuple) -> tuple:
    """One end-to-end arm at one seed: every stage trained, the last stage's agent evaluated."""
    _worker_setup()
    seed, arm, run_dir, extra = task
    overrides = [f"seed={seed}", *extra]
    if arm == "ppo":
        overrides += ["guidance=none", "adapter.warmup_steps=0"]
    elif arm == "guided":
        overrides += ["guidance=decision", "adapter.warmup_steps=0"]
    method = _method("tiny.yaml", run_dir, f"{arm}-seed{seed}", overrides)
    method.run()
    steps = method.config.iterations * method.updates * method.config.agent.n_steps * method.config.agent.envs
    return seed, arm, steps, method.evaluate(method.config.iterations)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def _se(values: list[float]) -> float:
    """The standard error of the mean (`feedlearn.stats.mean_se`), 0 for one value."""
    from feedlearn.stats import mean_se

    return 0.0 if len(values) < 2 else round(mean_se(values)[1], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/adarefiner_crafter", help="output folder")
    parser.add_argument("--arm", choices=["tiny", "smollm2"], default="tiny", help="tiny adapters or SmolLM2")
    parser.add_argument("--quick", action="store_true", help="one seed, one stage, tiny budgets (CI)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FEEDLEARN_CACHE", str(out / "cache"))
    if args.arm == "smollm2":
        smollm2_main(out, args.quick)
        return
    seeds = [0] if args.quick else [0, 1, 2]
    e2e_seeds = [0] if args.quick else [0, 1]
    mech_extra = QUICK_MECHANISM if args.quick else []
    e2e_extra = QUICK_END_TO_END if args.quick else []
    started = time.perf_counter()
    runs = out / "runs"

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        adapters = dict(pool.map(warm, [(s, runs, mech_extra, "mechanism.yaml") for s in seeds], chunksize=1))
        tasks = [
            (s, arm, adapters[s], runs, mech_extra, "mechanism.yaml")
            for arm in ("feedback", "self", "feedback_previous", "self_previous", "frozen", "none")
            for s in seeds
        ]
        e2e_tasks = [(s, arm, runs, e2e_extra) for arm in END_TO_END_ARMS for s in e2e_seeds]
        mech_async = pool.map_async(mechanism_arm, tasks, chunksize=1)
        e2e_rows = pool.map(end_to_end_arm, e2e_tasks, chunksize=1)
        mech_rows = mech_async.get()

    mechanism = {}
    for arm in MECHANISM_ARMS:
        by_seed = {seed: rows for seed, a, rows, _ in mech_rows if a == arm}
        mechanism[arm] = {"seeds": seeds}
        for key in ("comprehension", "achievements_per_episode", "score", "subgoals_completed"):
            mechanism[arm][key] = [[row[key] for row in by_seed[s]] for s in seeds]
            stages = range(len(mechanism[arm][key][0]))
            mechanism[arm][f"{key}_mean"] = [_mean([v[i] for v in mechanism[arm][key]]) for i in stages]
            mechanism[arm][f"{key}_se"] = [_se([v[i] for v in mechanism[arm][key]]) for i in stages]
    end_to_end = {}
    for arm in END_TO_END_ARMS:
        rows = [(steps, m) for seed, a, steps, m in e2e_rows if a == arm]
        scores = [m["score"] for _, m in rows]
        end_to_end[arm] = {
            "seeds": e2e_seeds,
            "steps": rows[0][0],
            "score": _mean(scores),
            "score_per_seed": scores,
            "success": {k: _mean([m["success"][k] for _, m in rows]) for k in rows[0][1]["success"]},
            "reward": _mean([m["reward"] for _, m in rows]),
            "achievements_per_episode": _mean([m["achievements_per_episode"] for _, m in rows]),
        }
    target = {
        f"seed {s}": mechanism["feedback"]["comprehension"][i][-1]
        > mechanism["frozen"]["comprehension"][i][-1]
        and mechanism["feedback"]["achievements_per_episode"][i][-1]
        > mechanism["frozen"]["achievements_per_episode"][i][-1]
        for i, s in enumerate(seeds)
    }
    result = {
        "mechanism": mechanism,
        "end_to_end": end_to_end,
        "target_feedback_beats_frozen": target,
        "paper_crafter_scores": PAPER,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    update_json_sections(out / "result.json", result)
    plot(result, out / "adarefiner_crafter.png")
    print(json.dumps({"target_feedback_beats_frozen": target, "seconds": result["seconds"]}))
    for arm in MECHANISM_ARMS:
        m = mechanism[arm]
        print(
            f"{arm:17s} comprehension {m['comprehension']}  achievements/episode "
            f"{m['achievements_per_episode']}"
        )
        for key in ("comprehension", "achievements_per_episode", "subgoals_completed"):
            pairs = ", ".join(f"{a} +- {b}" for a, b in zip(m[f"{key}_mean"], m[f"{key}_se"], strict=True))
            print(f"{'':17s} {key} per stage, mean +- se over seeds: {pairs}")
    for arm, e in end_to_end.items():
        print(f"{arm:10s} steps {e['steps']}  score {e['score']} {e['score_per_seed']}  reward {e['reward']}")


def smollm2_main(out: Path, quick: bool) -> None:
    """The smollm2 arm: warm-up per seed, then base, frozen and feedback; its section of result.json."""
    seeds = [0] if quick else [0, 1]
    extra = QUICK_SMOLLM2 if quick else []
    started = time.perf_counter()
    runs = out / "smollm2"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        adapters = dict(pool.map(warm, [(s, runs, extra, "smollm2.yaml") for s in seeds], chunksize=1))
        tasks = [
            (s, arm, adapters[s], runs, extra, "smollm2.yaml") for arm in SMOLLM2_ARMS[::-1] for s in seeds
        ]
        rows = pool.map(mechanism_arm, tasks, chunksize=1)
    result = smollm2_summary(rows, seeds)
    result.update(quick=quick, seconds=round(time.perf_counter() - started, 1), peak_rss_mb=peak_rss_mb())
    update_json_sections(out / "result.json", {"smollm2": result})
    plot_smollm2(result, out / "adarefiner_smollm2.png")
    for arm, m in result["arms"].items():
        print(f"{arm:9s} " + "  ".join(f"{k} {v['mean']} +- {v['se']} {v['per_seed']}" for k, v in m.items()))
    for pair, d in result["paired"].items():
        print(f"{pair:18s} " + "  ".join(f"{k} {v['mean']} +- {v['se']} (n {v['n']})" for k, v in d.items()))
    print(f"{result['seconds']} s -> {out / 'result.json'}")


SMOLLM2_METRICS = ("comprehension", "achievements_per_episode", "subgoals_completed", "score", "named")
"""Per arm: the tiny arm's test metrics, and `named`: the % of queries whose analysis named an allowed
sub-goal (the rest fell back to the decision maker's rule)."""


def smollm2_summary(rows: list[tuple], seeds: list[int]) -> dict:
    """Per arm and metric, mean and standard error over the seeds; per pair of arms, the difference of
    each test episode's achievements and comprehension, paired over seeds and episodes."""
    from feedlearn.stats import mean_se, paired_difference

    metrics = {(seed, arm): dict(stages[-1]) for seed, arm, stages, _ in rows}
    for m in metrics.values():
        m["named"] = round(100 * (1 - m["fallbacks"] / m["queries"]), 2)
    episodes = {(seed, arm): e for seed, arm, _, e in rows}
    arms = {}
    for arm in SMOLLM2_ARMS:
        arms[arm] = {}
        for key in SMOLLM2_METRICS:
            values = [metrics[s, arm][key] for s in seeds]
            mean, se = mean_se(values)
            arms[arm][key] = {"mean": round(mean, 4), "se": _rounded(se), "per_seed": values}
    paired = {}
    for a, b in PAIRS:
        paired[f"{a}-{b}"] = {}
        for key in ("achievements", "comprehension"):
            both = [
                (episodes[s, a][k][key], episodes[s, b][k][key])
                for s in seeds
                for k in episodes[s, a]
                if episodes[s, a][k][key] is not None and episodes[s, b][k][key] is not None
            ]
            mean, se = paired_difference(*zip(*both, strict=True))
            paired[f"{a}-{b}"][key] = {"mean": round(mean, 4), "se": _rounded(se), "n": len(both)}
    return {
        "seeds": seeds,
        "arms": arms,
        "paired": paired,
        "per_seed": {f"{s}-{a}": m for (s, a), m in metrics.items()},
    }


def _rounded(value: float) -> float | None:
    """`value` to 4 places; None for NaN (one seed: no standard error; JSON has no NaN)."""
    return None if value != value else round(value, 4)


def plot_smollm2(result: dict, path: Path) -> None:
    """The smollm2 arm's metrics per arm, mean over seeds with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "named": "analyses naming an allowed sub-goal (%)",
        "comprehension": "mean comprehension score",
        "achievements_per_episode": "achievements per episode",
        "subgoals_completed": "sub-goals carried out per episode",
    }
    fig, axes = plt.subplots(1, len(titles), figsize=(4 * len(titles), 3.8))
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        arms = result["arms"]
        ax.bar(
            list(arms),
            [m[key]["mean"] for m in arms.values()],
            yerr=[m[key]["se"] or 0 for m in arms.values()],
            capsize=4,
            color=["tab:gray", "tab:blue", "tab:orange"],
        )
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"AdaRefiner mechanism, SmolLM2-135M-Instruct adapter (seeds {result['seeds']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    """Per-stage comprehension and achievements of the mechanism arms (mean over seeds, min-max bars),
    and success per achievement of the end-to-end arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feedlearn.methods.plots import grouped_bars

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for ax, key, title in (
        (axes[0], "comprehension", "mean comprehension score"),
        (axes[1], "achievements_per_episode", "achievements per episode"),
    ):
        for arm, m in result["mechanism"].items():
            per_seed = m[key]  # the bars: min to max over seeds
            stages = range(1, len(per_seed[0]) + 1)
            mean = [sum(s[i] for s in per_seed) / len(per_seed) for i in range(len(per_seed[0]))]
            low = [mean[i] - min(s[i] for s in per_seed) for i in range(len(mean))]
            high = [max(s[i] for s in per_seed) - mean[i] for i in range(len(mean))]
            ax.errorbar(list(stages), mean, yerr=[low, high], marker="o", capsize=3, label=arm)
        ax.set_xticks(list(stages))
        ax.set_xlabel("stage")
        ax.set_title(f"mechanism: {title}")
        ax.legend()
    ax = axes[2]
    arms = result["end_to_end"]
    names = list(next(iter(arms.values()))["success"])
    grouped_bars(ax, names, {arm: [e["success"][n] for n in names] for arm, e in arms.items()}, rotation=90)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("success (%)")
    ax.set_title("end to end: success per achievement")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
