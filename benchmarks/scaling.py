"""One process against two (`torchrun`, gloo on CPUs): RISE's collection (generation) and DPO's training
on tiny recipes, the same records / the same weights asserted, wall time of each and the ratio.

    python benchmarks/scaling.py --out bench_out/scaling          # about 1 minute on 2 cores
    python benchmarks/scaling.py --quick --out /tmp/smoke         # CI smoke test

On a 2-core CPU two processes share the two cores that one process's torch threads used, so the ratio is
modest; the point is equality, and where the time goes. Each timing is a whole command (interpreter and
model start included). Writes DIR/result.json and DIR/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from feedlearn.resources import peak_rss_mb

RECIPES = Path(__file__).resolve().parent.parent / "feedlearn" / "recipes"
TINY = ["tiny.hidden_size=64", "tiny.intermediate_size=192", "tiny.num_layers=2", "tiny.num_heads=4"]


def timed(processes: int, method: str, stage: str, recipe: str, sets: list[str], run_id: str, env) -> float:
    """Seconds one CLI stage takes in `processes` processes (plain python, or torchrun)."""
    args = ["-m", "feedlearn.cli", method, stage, str(RECIPES / recipe), "--run-id", run_id]
    args += [x for s in sets for x in ("--set", s)]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command = [*launcher, *args] if processes > 1 else [sys.executable, *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} {stage} in {processes} processes failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/scaling", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small stages (CI)")
    args = parser.parse_args()
    out = Path(args.out)
    runs = out / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FEEDLEARN_CACHE": str(out / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = {}

    # RISE collect (generation): a warm-started tiny policy rolls out the training problems
    n, warm = (24, 400) if args.quick else (192, 2000)
    rise = [
        *TINY,
        f"sft.problems.synthetic.n={warm}",
        f"train_problems.synthetic.n={n}",
        "collect.chunk_size=32",
    ]
    rise += ["collect.turns=[{n: 1}, {n: 8}]", "collect.max_new_tokens=32", f"run_dir={runs}"]
    timed(1, "rise", "sft", "rise/tiny-from-scratch.yaml", rise, "rise-1", env)
    shutil.copytree(runs / "rise-1", runs / "rise-2")
    seconds = {
        p: timed(p, "rise", "collect", "rise/tiny-from-scratch.yaml", rise, f"rise-{p}", env) for p in (1, 2)
    }
    episodes = [(runs / f"rise-{p}/iter1/collect/episodes.jsonl").read_text() for p in (1, 2)]
    result["rise/collect"] = _row(seconds, episodes[0] == episodes[1], f"{n} problems, 1 + 8 samples each")

    # DPO train: the same global batch of 16 pairs, split over the processes. 64 steps: over hundreds of
    # steps float noise grows into visible differences (weights 4e-3 apart after 256 steps), as much as
    # between batch 16 and batch 8 x 2 accumulated in one process (5e-3): the order of float sums, not
    # the processes
    pairs = 128 if args.quick else 1024
    dpo = [*TINY, f"train_data.synthetic.n={pairs}", "eval_data.synthetic.n=64", f"run_dir={runs}"]
    seconds = {
        p: timed(p, "dpo", "train", "dpo/tiny.yaml", [*dpo, f"train.batch_size={16 // p}"], f"dpo-{p}", env)
        for p in (1, 2)
    }
    wa, wb = (load_file(runs / f"dpo-{p}/train/model/model.safetensors") for p in (1, 2))
    same = all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)
    result["dpo/train"] = _row(seconds, same, f"{pairs} pairs, global batch 16")

    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb"] = peak_rss_mb()
    result["quick"] = args.quick
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "scaling.png")
    print(json.dumps(result, indent=2))
    if not all(v["same_result"] for v in result.values() if isinstance(v, dict)):
        raise SystemExit("two processes did not give one process's result")


def _row(seconds: dict[int, float], same: bool, what: str) -> dict:
    return {
        "what": what,
        "processes": {str(p): {"seconds": round(s, 2)} for p, s in seconds.items()},
        "speedup": round(seconds[1] / seconds[2], 3),
        "same_result": same,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feedlearn.methods.plots import grouped_bars

    stages = [k for k, v in result.items() if isinstance(v, dict)]
    fig, ax = plt.subplots(figsize=(6, 4))
    series = {f"{p} process(es)": [result[s]["processes"][p]["seconds"] for s in stages] for p in ("1", "2")}
    grouped_bars(ax, stages, series)
    ax.set_ylabel("seconds (whole command)")
    ax.set_title("1 vs 2 processes (same results asserted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
