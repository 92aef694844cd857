"""Reflect-RL offline: SFT only, SFT + RL, with and without reflection, on DangerousTaxi (dropoff level) and
on AutoExplore over a small synthetic repository with held-out questions, at several seeds.

Tiny models learn from the scripted teacher (oracle moves, template reflections, recovery steps), then the
policy learns online with REINFORCE (`recipes/reflect-rl/tiny.yaml`, `tiny_autoexplore.yaml`), under the
reference code's rules (docs/deviations.md). Every configuration of a seed plays the same held-out
episodes, greedy and sampled (the reference's evaluation), so each effect (RL over SFT, reflection over
none) is a paired difference per episode; its standard error is over the episodes of every seed. That
error is the evaluation's noise only: each seed trains its own models, and where seeds disagree (one weak
SFT policy) the per-seed effects and their standard error between seeds say how much of an effect is the
training's luck.

`--env taxi_smollm2` runs the same four arms on Taxi with a real model, SmolLM2-135M-Instruct, as both the
policy and the reflection model (`recipes/reflect-rl/smollm2.yaml`: a CPU's scale, greedy evaluation only).
`--env textworld` runs them on TextWorld coin collector games at three difficulty levels
(`recipes/reflect-rl/tiny_textworld.yaml`; the textworld extra), reported per level as well.

    python benchmarks/reflect_rl_taxi.py --out bench_out/reflect_rl                # about 35 min on 2 cores
    python benchmarks/reflect_rl_taxi.py --out /tmp/smoke --quick                  # a smoke test
    python benchmarks/reflect_rl_taxi.py --out bench_out/rl_lr --env taxi --set rl.learning_rate=1e-3
    OMP_NUM_THREADS=1 python benchmarks/reflect_rl_taxi.py --out bench_out/reflect_rl --env taxi_smollm2 \
        --seeds 0 --jobs 2                                                         # about 30 minutes
    OMP_NUM_THREADS=1 python benchmarks/reflect_rl_taxi.py --out bench_out/reflect_rl --env textworld --jobs 2

Writes `OUT/result.json` (a rerun keeps the sections of the environments it did not run): per environment
("taxi", "autoexplore", "taxi_smollm2", "textworld") its seeds and overrides, per arm ("sft", "sft_rl",
"reflect_sft", "reflect_rl") and evaluation ("greedy", "sampled"), the success per seed and its mean
(with several evaluated levels, also per level: success and steps per episode);
the effects ("rl": sft_rl - sft, "reflect_rl": reflect_rl - reflect_sft, "reflection": reflect_rl -
sft_rl) as paired differences in points with standard errors, and per seed with their standard error
between seeds (`se_between_seeds`); on Taxi, per arm and seed, the share of
held-out moves that were the BFS oracle's; the training curves; and `OUT/curve.png`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files
from pathlib import Path

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.envs.catalog import EnvFactory
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.methods.reflect_rl.stages import ReflectRL
from feedlearn.resources import peak_rss_mb
from feedlearn.stats import mean_se, paired_difference

RECIPES = {
    "taxi": files("feedlearn") / "recipes" / "reflect-rl" / "tiny.yaml",
    "autoexplore": files("feedlearn") / "recipes" / "reflect-rl" / "tiny_autoexplore.yaml",
    "taxi_smollm2": files("feedlearn") / "recipes" / "reflect-rl" / "smollm2.yaml",
    "textworld": files("feedlearn") / "recipes" / "reflect-rl" / "tiny_textworld.yaml",
}
TINY = ["taxi", "autoexplore"]
"""The environments `--env both` runs (the tiny models')."""
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
ARMS = {
    "sft": (False, "sft"),
    "sft_rl": (False, "rl"),
    "reflect_sft": (True, "sft"),
    "reflect_rl": (True, "rl"),
}
"""Arm -> (with reflection, after which stage)."""
EFFECTS = {
    "rl": ("sft_rl", "sft"),
    "reflect_rl": ("reflect_rl", "reflect_sft"),
    "reflection": ("reflect_rl", "sft_rl"),
}
"""Effect -> (arm, the arm it is measured against)."""
EVALUATIONS = {"greedy": "", "sampled": "sampled-"}
"""Evaluation -> the prefix of its episodes' ids."""


def run(out: Path, env: str, reflection: bool, overrides: list[str]) -> ReflectRL:
    """SFT, evaluate, RL, evaluate one configuration; the finished method."""
    name = f"{env}-{'reflection' if reflection else 'no-reflection'}"
    config = load_recipe(
        ReflectRLConfig,
        str(RECIPES[env]),
        [f"run_dir={out / 'runs'}", f"reflection={reflection}", *overrides],
    )
    method = ReflectRL(config, open_run(config.run_dir, name, config.model_dump(mode="json")))
    method.run()
    return method


def prepare(out: Path, env: str, common: list[str]) -> None:
    """Generate the environment's games once, before the configurations run (TextWorld: every game of
    every curriculum and test level; the runs then read them from the cache)."""
    config = load_recipe(ReflectRLConfig, str(RECIPES[env]), [f"run_dir={out / 'runs'}", *common])
    if config.env.name == "textworld":
        factory = EnvFactory(config.env)
        for level in {*(config.rl.curriculum or [config.env.level]), *(config.evaluate.levels or [])}:
            factory.make("train", level), factory.make("test", level)


def run_only(out: Path, env: str, reflection: bool, overrides: list[str]) -> None:
    """`run` in a worker process; the main process then reads the finished run (every stage skipped)."""
    run(out, env, reflection, overrides)


def _records(method: ReflectRL, stage: str, evaluation: str) -> list[dict]:
    """The held-out episodes of `stage`'s evaluation (greedy or sampled, with reflection where it ran)."""
    prefix = EVALUATIONS[evaluation]
    path = method.layout.evaluation(stage) / "episodes.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    others = tuple(p for p in ("without-reflection-", *EVALUATIONS.values()) if p and p != prefix)
    return [r for r in records if r["id"].startswith(prefix) and not r["id"].startswith(others)]


def successes(method: ReflectRL, stage: str, evaluation: str) -> list[float]:
    """1 or 0 per held-out episode of `stage`'s evaluation, in the episodes' order."""
    return [float(r["success"]) for r in _records(method, stage, evaluation)]


def by_level(method: ReflectRL, stage: str, evaluation: str) -> dict[str, dict]:
    """Per evaluated level: held-out success (%) and mean steps per episode."""
    levels: dict[str, list[dict]] = {}
    for r in _records(method, stage, evaluation):
        levels.setdefault(r["level"], []).append(r)
    return {
        level: {
            "success": round(100 * sum(r["success"] for r in rs) / len(rs), 2),
            "steps": round(sum(len(r["actions"]) for r in rs) / len(rs), 2),
        }
        for level, rs in levels.items()
    }


def oracle_agreement(method: ReflectRL, stage: str, evaluation: str) -> float:
    """Taxi: the share (%) of held-out steps whose move was the BFS oracle's, replayed from the logged
    episodes (how sharp and how right the policy is, beyond success)."""
    agree = steps = 0
    for record in _records(method, stage, evaluation):
        env = method.envs.make("test", method.config.env.level)
        env.reset(seed=record["seed"])
        for action in record["actions"]:
            agree += action == env.oracle_action()
            steps += 1
            env.step(action)
    return round(100 * agree / steps, 2)


def seed_run(out: Path, env: str, seed: int, common: list[str]) -> tuple[dict, list[dict]]:
    """Per arm and evaluation, each held-out episode's success at one seed; the training curve."""
    methods = {r: run(out / f"seed{seed}", env, r, [f"seed={seed}", *common]) for r in (False, True)}
    evaluations = [ev for ev in EVALUATIONS if ev == "greedy" or methods[False].config.evaluate.sampled]
    episodes = {
        arm: {ev: successes(methods[r], stage, ev) for ev in evaluations} for arm, (r, stage) in ARMS.items()
    }
    if len(methods[False].config.evaluate.levels or []) > 1:
        for arm, (r, stage) in ARMS.items():
            episodes[arm]["levels"] = {ev: by_level(methods[r], stage, ev) for ev in evaluations}
    if methods[False].config.env.name == "taxi":
        for arm, (r, stage) in ARMS.items():
            episodes[arm]["oracle_agreement"] = {
                ev: oracle_agreement(methods[r], stage, ev) for ev in evaluations
            }
    curves = {}
    for r, method in methods.items():
        rows = [json.loads(line) for line in (method.store.path / "metrics.jsonl").read_text().splitlines()]
        curves["reflect_rl" if r else "sft_rl"] = [
            100.0 * x["charts/success"] for x in rows if x["stage"] == "rl"
        ]
    curve = [
        {"iteration": i + 1, **{k: v[i] for k, v in curves.items()}} for i in range(len(curves["sft_rl"]))
    ]
    return episodes, curve


def _success(per_seed: dict[int, dict], arm: str, evaluation: str) -> dict:
    """An arm's success (%) over every seed's episodes, its standard error, and the success per seed."""
    mean, se = mean_se([x for s in per_seed for x in per_seed[s][arm][evaluation]])
    per = {str(s): round(100 * mean_se(per_seed[s][arm][evaluation])[0], 2) for s in per_seed}
    return {"success": round(100 * mean, 2), "se": round(100 * se, 2), "per_seed": per}


def _level_means(per_seed: dict[int, dict], arm: str, evaluation: str) -> dict:
    """Per level, the success and steps of `arm` averaged over the seeds, and per seed."""
    levels = per_seed[next(iter(per_seed))][arm]["levels"][evaluation]
    out = {}
    for level in levels:
        rows = {str(s): per_seed[s][arm]["levels"][evaluation][level] for s in per_seed}
        out[level] = {
            key: round(sum(r[key] for r in rows.values()) / len(rows), 2) for key in ("success", "steps")
        }
        out[level]["per_seed"] = rows
    return out


def summarize(per_seed: dict[int, dict], curves: dict[int, list]) -> dict:
    """Success per arm, evaluation and seed with its mean, and each effect as a paired difference (points)
    with its standard error over every seed's episodes."""
    first = per_seed[next(iter(per_seed))]
    evaluations = [ev for ev in EVALUATIONS if ev in first["sft"]]  # greedy, and sampled where played
    arms = {arm: {ev: _success(per_seed, arm, ev) for ev in evaluations} for arm in ARMS}
    for arm in ARMS:
        if "oracle_agreement" in first[arm]:  # Taxi: % of steps on the oracle's move
            arms[arm]["oracle_agreement"] = {
                ev: {str(s): per_seed[s][arm]["oracle_agreement"][ev] for s in per_seed} for ev in evaluations
            }
        if "levels" in first[arm]:  # per curriculum level: success (%) and steps, mean over seeds
            arms[arm]["levels"] = {ev: _level_means(per_seed, arm, ev) for ev in evaluations}
    effects = {}
    for effect, (arm, base) in EFFECTS.items():
        effects[effect] = {}
        for ev in evaluations:
            a = [x for s in per_seed for x in per_seed[s][arm][ev]]
            b = [x for s in per_seed for x in per_seed[s][base][ev]]
            diff, se = paired_difference(a, b)
            seeds = {
                s: 100 * paired_difference(per_seed[s][arm][ev], per_seed[s][base][ev])[0] for s in per_seed
            }
            effects[effect][ev] = {
                "points": round(100 * diff, 2),
                "se": round(100 * se, 2),
                "per_seed": {str(s): round(d, 2) for s, d in seeds.items()},
                "se_between_seeds": round(mean_se(list(seeds.values()))[1], 2) if len(seeds) > 1 else None,
            }
    return {"arms": arms, "effects": effects, "curves": {str(s): c for s, c in curves.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, curve.png and the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the recipes' seeds")
    parser.add_argument(
        "--env",
        choices=["both", *RECIPES],
        default="both",
        help="which environments (both: the tiny models' two; taxi_smollm2: Taxi with SmolLM2)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipes"
    )
    parser.add_argument("--jobs", type=int, default=1, help="configurations run at once, one process each")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    common = [*(QUICK if args.quick else []), *args.set]
    path = out / "result.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}  # seeds were once a top-level key
    result = {env: {"seeds": earlier.get("seeds"), **r} for env, r in earlier.items() if env in RECIPES}
    for env in TINY if args.env == "both" else [args.env]:
        prepare(out, env, common)
        if args.jobs > 1:
            jobs = [
                (out / f"seed{seed}", env, r, [f"seed={seed}", *common])
                for seed in args.seeds
                for r in (False, True)
            ]
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(run_only, *zip(*jobs, strict=True)))
        runs = {seed: seed_run(out, env, seed, common) for seed in args.seeds}
        result[env] = {
            "seeds": args.seeds,
            "overrides": args.set,
            **summarize({s: r[0] for s, r in runs.items()}, {s: r[1] for s, r in runs.items()}),
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": peak_rss_mb(),
        }
    write_json_atomic(path, result)  # every environment's section, those of an earlier run kept
    plot(result, out / "curve.png")
    for env in RECIPES:
        if env in result:
            print(env, json.dumps({k: v for k, v in result[env].items() if k != "curves"}, indent=2))


def plot(result: dict, path: Path) -> None:
    """Per environment: held-out success of each arm (greedy and sampled, mean over seeds), and training
    success per RL iteration averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = [env for env in RECIPES if env in result]
    fig, axes = plt.subplots(len(envs), 2, figsize=(11, 3.8 * len(envs)), squeeze=False)
    titles = {
        "taxi": "DangerousTaxi (dropoff)",
        "autoexplore": "AutoExplore (held-out questions)",
        "taxi_smollm2": "DangerousTaxi (dropoff), SmolLM2-135M-Instruct",
        "textworld": "TextWorld coin collector (levels 5, 10, 15)",
    }
    for row, env in zip(axes, envs, strict=True):
        r = result[env]
        bars, curve = row
        width = 0.38
        for k, (ev, color) in enumerate([("greedy", "C0"), ("sampled", "C1")]):
            if ev not in r["arms"]["sft"]:
                continue
            xs = [i + (k - 0.5) * width for i in range(len(ARMS))]
            values = [r["arms"][a][ev] for a in ARMS]
            errors = [v["se"] for v in values]
            bars.bar(xs, [v["success"] for v in values], width, yerr=errors, color=color, label=ev, capsize=3)
        bars.set_xticks(range(len(ARMS)), ["SFT", "SFT + RL", "SFT\nreflection", "SFT + RL\nreflection"])
        bars.set_ylabel("held-out success (%)")
        bars.set_ylim(0, 105)
        bars.set_title(f"{titles[env]}, seeds {', '.join(map(str, r['seeds']))}")
        bars.legend(fontsize=8)
        seeds = list(r["curves"])
        its = [c["iteration"] for c in r["curves"][seeds[0]]]
        for key, label, color in [("sft_rl", "no reflection", "C0"), ("reflect_rl", "reflection", "C1")]:
            mean = [sum(r["curves"][s][i][key] for s in seeds) / len(seeds) for i in range(len(its))]
            curve.plot(its, mean, "-", color=color, label=f"RL, {label}")
        curve.set_xlabel("RL iteration")
        curve.xaxis.get_major_locator().set_params(integer=True)
        curve.set_ylabel("training success (%), mean of seeds")
        curve.set_ylim(-5, 105)
        curve.grid(alpha=0.3)
        curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
