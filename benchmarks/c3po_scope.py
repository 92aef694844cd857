"""C3PO against SCD, SCD + negatives, DPO and in-context prompting: does the feedback apply where it
belongs, and nowhere else? Offline, on the tiny recipe (`recipes/c3po/tiny.yaml`).

The recipe's C3PO adds SFT on the revision to the paper's loss (`loss.chosen_sft`); the row
`c3po_paper_loss` is C3PO without it, trained on the same base model and samples.

A tiny model learns a synthetic instruction corpus, then each built-in feedback ("sign off emails to
Jared with 'Best, Alex'", "number the items of lists of fruits") with an offline teacher that writes
prompts from templates and applies the feedback's effect programmatically, so adherence is measured by
the feedback's metric, not guessed. Per method, averaged over the feedbacks: in-scope adherence, and the
share of near- and out-of-scope responses whose behaviour changed versus the base model (greedy).

    python benchmarks/c3po_scope.py --out bench_out/c3po        # about 7 minutes on 2 cores
    python benchmarks/c3po_scope.py --out /tmp/smoke --quick    # a smoke test

Writes `OUT/result.json` ({"<method>": {"in_scope_adherence": %, "near_scope_changed": %,
"out_scope_changed": %}, ..., "per_feedback": {...}}) and `OUT/scope.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from importlib.resources import files
from pathlib import Path

from feedlearn.config import load_recipe
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.c3po import C3PO, C3POConfig
from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS

RECIPE = files("feedlearn") / "recipes" / "c3po" / "tiny.yaml"
QUICK = [
    "tiny={hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, vocab_size: 400}",
    "sft.chats=256",
    "sample.prompts_per_scope=16",
    "sample.prompts_per_category=8",
    "sample.test_fraction=0.25",
    "sample.max_new_tokens=16",
    "evaluate.prompts_per_scope=4",
    "evaluate.max_new_tokens=16",
    "train.batch_size=2",
    "train.epochs=1",
    f"feedback_ids=[{BUILTIN_FEEDBACKS['jared-signoff'].feedback.short_id}]",  # its revision always applies
]
PAPER = "c3po_paper_loss"
KEYS = {"in_scope_adherence": "in", "near_scope_changed": "near", "out_scope_changed": "out"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, scope.png and the run")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    overrides = [f"run_dir={out / 'runs'}", f"seed={args.seed}", *(QUICK if args.quick else []), *args.set]
    config = load_recipe(C3POConfig, str(RECIPE), overrides)
    c3po = C3PO(config, open_run(config.run_dir, "c3po-tiny", config.model_dump(mode="json")))
    per_feedback = c3po.run()
    if config.loss.chosen_sft > 0:
        paper = paper_loss(config, c3po)
        per_feedback = {
            fid: {"c3po": m["c3po"], PAPER: paper[fid]["c3po"], **m} for fid, m in per_feedback.items()
        }
    methods = next(iter(per_feedback.values())).keys()
    result = {
        method: {
            key: round(sum(f[method][key] for f in per_feedback.values()) / len(per_feedback), 2)
            for key in KEYS
        }
        for method in methods
    }
    result["per_feedback"] = per_feedback
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "result.json", result)
    plot(result, out / "scope.png")
    print(json.dumps(result, indent=2))


def paper_loss(config: C3POConfig, run: C3PO) -> dict[str, dict]:
    """C3PO with the paper's loss (no SFT on the revision), on the run's base model and samples."""
    config = config.model_copy(
        update={"methods": ["c3po"], "loss": config.loss.model_copy(update={"chosen_sft": 0.0})}
    )
    paper = C3PO(config, open_run(config.run_dir, f"c3po-tiny-{PAPER}", config.model_dump(mode="json")))
    stages = ["sft", *(f"{f.short_id}/sample" for f in run.feedbacks())]
    for stage in stages:
        shutil.copytree(run.store.stage(stage), paper.store.stage(stage), dirs_exist_ok=True)
    paper.train()
    return paper.evaluate()


def plot(result: dict, path: Path) -> None:
    """Grouped bars: in-scope adherence and near / out-of-scope change per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in result if isinstance(result[m], dict) and "in_scope_adherence" in result[m]]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.27
    for i, (key, label) in enumerate(
        [
            ("in_scope_adherence", "in scope: follows"),
            ("near_scope_changed", "near scope: changed"),
            ("out_scope_changed", "out of scope: changed"),
        ]
    ):
        xs = [j + (i - 1) * width for j in range(len(methods))]
        ax.bar(xs, [result[m][key] for m in methods], width, label=label, color=f"C{i}")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("% of held-out prompts")
    ax.set_ylim(0, 105)
    ax.set_title("Verbal feedback: applied in scope, unchanged elsewhere")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
