"""Build the bundled RISE base, `feedlearn/models/bundled/rise-tiny-base`, that `feedlearn demo` starts from.

It is the warm start (the `sft` stage) of `recipes/rise/tiny-from-scratch.yaml` at seed 10: a tiny model and
tokenizer built on the task's text, trained on 45,000 worked one-operation problems. Shipping it means every
CPU starts the demo from the same weights (a warm start's outcome moves with the CPU's float order), and the
demo skips its longest stage. This script rebuilds it (about 7-12 minutes on 2 cores; a finished `sft` stage
in `--run-dir` is reused) and writes `provenance.json` beside the weights.

    python scripts/build_rise_tiny_base.py [--run-dir runs/rise-base] [--seed 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path

import torch
import transformers

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.methods.rise.stages import Rise
from feedlearn.models.loading import BUNDLED

RECIPE = "rise/tiny-from-scratch.yaml"
NAME = "rise-tiny-base"
FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def commit() -> str:
    """The checkout's commit, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/rise-base", help="where the warm-start run goes")
    parser.add_argument("--seed", type=int, default=10, help="the recipe's seed (the bundled base: 10)")
    parser.add_argument("--out", default=str(BUNDLED / NAME), help="the model folder to write")
    args = parser.parse_args()
    recipe = files("feedlearn") / "recipes" / RECIPE
    config = load_recipe(RiseConfig, str(recipe), [f"run_dir={args.run_dir}", f"seed={args.seed}"])
    store = open_run(config.run_dir, "warm-start", config.model_dump(mode="json"))
    model = Rise(config, store).sft()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(model / name, out / name)
    weights = (out / "model.safetensors").read_bytes()
    provenance = {
        "built_by": f"python scripts/build_rise_tiny_base.py --seed {args.seed}",
        "recipe": f"recipes/{RECIPE}",
        "stage": "sft",
        "seed": args.seed,
        "commit": commit(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "built": datetime.now(UTC).date().isoformat(),
        "model.safetensors sha256": hashlib.sha256(weights).hexdigest(),
    }
    write_json_atomic(out / "provenance.json", provenance)
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
