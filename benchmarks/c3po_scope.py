"""C3PO against SCD, SCD + negatives, DPO and in-context prompting: does the feedback apply where it
belongs, and nowhere else? Offline, on the tiny recipe (`recipes/c3po/tiny.yaml`), at several seeds.

A tiny model learns a synthetic instruction corpus, then each built-in feedback ("sign off emails to
Jared with 'Best, Alex'", "number the items of lists of fruits") with an offline teacher that writes
prompts from templates and applies the feedback's effect programmatically, so adherence is measured by
the feedback's metric, not guessed. Two tasks share each seed's base model and samples:

- `clean`: every in-scope revision applies the feedback (the offline teacher's, as in the recipe);
- `missed`: only 1 in 4 does; the other in-scope training revisions are the baseline unchanged, as from
  a reviser that missed the feedback (the paper's policy revising itself, whose failed revisions the
  reference trains on: `filter_relevant_feedback` is off in its configs). Imitating the revisions (SFT)
  then learns mostly the old behaviour, while a pair whose revision equals its baseline gives DPO no
  gradient: the task on which C3PO and SCD + negatives can differ. The share 1/4 was fixed before any run
  of it: below 1/2, so that imitation cannot make following the likeliest answer.

Per method, averaged over the feedbacks: in-scope adherence, the share of near- and out-of-scope responses
whose behaviour changed, all against the sampled baseline (`evaluate.baseline: sampled`, the paper's;
`base` is the base model's own greedy answers against it: the noise floor), and answer quality: a
rule-based judge (`feedlearn.tasks.instructions.answers_prompt`: the right addressee and topic, the asked
number of things of the asked kind), not a model, asked through feedlearn's Likert judge, 1-5 against the
baseline (3 = as good). The recipe's C3PO adds SFT on the revision to the paper's loss (`loss.chosen_sft`
1); `c3po_paper_loss` is C3PO without it, on the same base model and samples. Mean and standard error
over the seeds (another initial model, other samples, another data order each).

    OMP_NUM_THREADS=1 python benchmarks/c3po_scope.py --out bench_out/c3po --seeds 0 1 --jobs 2
    python benchmarks/c3po_scope.py --out /tmp/smoke --quick                       # a smoke test, ~30 s

The full run takes 73 CPU-minutes, one thread per seed: about 37 minutes on 2 free cores.

Writes `OUT/result.json` ({"tasks": {task: {method: {metric: {"mean", "se", "per_seed"}}}},
"per_seed": {seed: {task: {feedback: {method: metrics}}}}, ...}), `OUT/seed-N/result.json`, and
`OUT/scope.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files
from pathlib import Path

from feedlearn.backends.base import ParsedAsker, SamplingParams
from feedlearn.config import load_recipe
from feedlearn.data.jsonl import read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.c3po import C3PO, C3POConfig
from feedlearn.methods.c3po_data import C3POSample
from feedlearn.seeds import derive_seed
from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS, answers_prompt

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
MISSED_SHARE = 0.25
"""The `missed` task's share of in-scope revisions that apply the feedback (fixed before any run of it)."""
KEYS = ["in_scope_adherence", "near_scope_changed", "out_scope_changed"]
QUALITY = ["in_scope_answer_quality", "near_scope_answer_quality", "out_scope_answer_quality"]
REPORTED = ["c3po", PAPER, "combined", "scd", "scd_negatives", "dpo", "in_context", "cot", "base"]
"""The rows, in the order the table and the figure show them."""


class RuleJudge:
    """A backend that answers feedlearn's answer-quality question by rule, not by a model: 5 when only
    Response 2 answers the prompt as the corpus does (`answers_prompt`), 1 when only Response 1 does, 3
    when both or neither do; no verdict for a prompt the rules do not know."""

    def generate(self, conversations, n, sampling, keys=None):
        replies = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            prompt = text.split("[Prompt]\n", 1)[1].split("\n\n[Response 1]\n", 1)[0]
            first = text.split("\n\n[Response 1]\n", 1)[1].split("\n\n[Response 2]\n", 1)[0]
            second = text.split("\n\n[Response 2]\n", 1)[1].rsplit("\n\nFirst say", 1)[0]
            a, b = answers_prompt(prompt, first), answers_prompt(prompt, second)
            score = None if a is None else 3 + 2 * (int(b) - int(a))
            replies.append(["no rule for this prompt" if score is None else f"BETTER_RESPONSE: {score}"] * n)
        return replies


class RuleJudged(C3PO):
    """C3PO whose answer-quality judge is `RuleJudge`."""

    def judge_asker(self) -> ParsedAsker:
        return ParsedAsker(RuleJudge(), SamplingParams(temperature=0.0), max_attempts=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, scope.png and the runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke test (one seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the recipe's seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    seeds = args.seeds[:1] if args.quick else args.seeds
    overrides = [*(QUICK if args.quick else []), *args.set]
    runs = [(out / f"seed-{seed}", seed, overrides) for seed in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(run_seed, *zip(*runs, strict=True)))
    else:
        per_seed = [run_seed(*run) for run in runs]
    result = {
        "seeds": seeds,
        "tasks": {task: summarize([p[task] for p in per_seed]) for task in ("clean", "missed")},
        "per_seed": dict(zip(map(str, seeds), per_seed, strict=True)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "result.json", result)
    plot(result, out / "scope.png")
    print(json.dumps(result["tasks"], indent=2))


def run_seed(folder: Path, seed: int, overrides: list[str]) -> dict[str, dict]:
    """Both tasks at one seed: {task: {feedback: {method: metrics}}}; also written to `folder`."""
    started = time.perf_counter()
    config = load_recipe(C3POConfig, str(RECIPE), [f"run_dir={folder / 'runs'}", f"seed={seed}", *overrides])
    config = config.model_copy(
        update={"evaluate": config.evaluate.model_copy(update={"answer_quality": True})}
    )
    clean = RuleJudged(config, open_run(config.run_dir, "c3po-tiny", config.model_dump(mode="json")))
    results = {"clean": with_paper_loss(clean, clean.run())}
    missed = derived_run(clean, "missed", config)
    for feedback in missed.feedbacks():
        path = missed.store.stage(f"{feedback.short_id}/sample") / "samples.jsonl"
        write_jsonl_atomic(path, miss_revisions(read_jsonl(path, C3POSample), seed, feedback.id))
    missed.train()
    results["missed"] = with_paper_loss(missed, missed.evaluate())
    write_json_atomic(folder / "result.json", {**results, "seconds": round(time.perf_counter() - started, 1)})
    return results


def miss_revisions(samples: list[C3POSample], seed: int, feedback_id: str) -> list[C3POSample]:
    """The samples with all but `MISSED_SHARE` of the in-scope training revisions (a seeded choice) set to
    the baseline unchanged."""
    revised = sorted(s.id for s in samples if s.scope == "in" and s.split == "train" and s.revised)
    rng = random.Random(derive_seed(seed, "data", "missed-revisions", feedback_id))
    kept = set(rng.sample(revised, round(MISSED_SHARE * len(revised))))
    return [
        s.model_copy(update={"revised": s.baseline}) if s.id in revised and s.id not in kept else s
        for s in samples
    ]


def derived_run(run: C3PO, name: str, config: C3POConfig) -> C3PO:
    """A run named after `run` plus `name`, holding a copy of its base model and samples."""
    derived = RuleJudged(
        config, open_run(config.run_dir, f"{run.store.path.name}-{name}", config.model_dump(mode="json"))
    )
    for stage in ["sft", *(f"{f.short_id}/sample" for f in run.feedbacks())]:
        shutil.copytree(run.store.stage(stage), derived.store.stage(stage), dirs_exist_ok=True)
    return derived


def with_paper_loss(run: C3PO, per_feedback: dict[str, dict]) -> dict[str, dict]:
    """`per_feedback` with C3PO with the paper's loss (no SFT on the revision) trained and evaluated on the
    run's base model and samples, as `c3po_paper_loss`."""
    config = run.config
    if config.loss.chosen_sft == 0:
        return per_feedback
    config = config.model_copy(
        update={"methods": ["c3po"], "loss": config.loss.model_copy(update={"chosen_sft": 0.0})}
    )
    paper = derived_run(run, PAPER, config)
    paper.train()
    scores = paper.evaluate()
    return {fid: {**metrics, PAPER: scores[fid]["c3po"]} for fid, metrics in per_feedback.items()}


def summarize(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Per method and metric: the mean over feedbacks at each seed, then its mean and standard error over
    the seeds (None with one seed)."""
    methods = [m for m in REPORTED if all(m in f for p in per_seed for f in p.values())]
    out = {}
    for method in methods:
        out[method] = {}
        for key in KEYS + QUALITY:
            values = [
                sum(f[method][key] for f in p.values()) / len(p)
                for p in per_seed
                if all(key in f[method] for f in p.values())
            ]
            if len(values) < len(per_seed):
                continue  # a feedback without this metric at some seed (e.g. every judgment unparseable)
            mean = sum(values) / len(values)
            se = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
                if len(values) > 1
                else None
            )
            out[method][key] = {
                "mean": round(mean, 2 if key in KEYS else 3),
                "se": None if se is None else round(se, 2 if key in KEYS else 3),
                "per_seed": [round(v, 2 if key in KEYS else 3) for v in values],
            }
    return out


def plot(result: dict, path: Path) -> None:
    """Per task, grouped bars with standard errors: in-scope adherence and near / out-of-scope change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(12, 4.2), sharey=True)
    width = 0.27
    for ax, (task, methods) in zip(axes, tasks.items(), strict=True):
        names = [m for m in methods if all(k in methods[m] for k in KEYS)]
        for i, (key, label) in enumerate(
            zip(KEYS, ["in scope: follows", "near scope: changed", "out of scope: changed"], strict=True)
        ):
            xs = [j + (i - 1) * width for j in range(len(names))]
            means = [methods[m][key]["mean"] for m in names]
            errors = [methods[m][key]["se"] or 0 for m in names]
            ax.bar(xs, means, width, yerr=errors, capsize=2, label=label, color=f"C{i}")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        share = "all" if task == "clean" else f"{MISSED_SHARE:.0%}"
        ax.set_title(f"{task}: {share} of the revisions apply the feedback")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"% of held-out prompts (mean ± s.e., {len(result['seeds'])} seeds)")
    axes[0].set_ylim(0, 105)
    axes[0].legend(fontsize=8)
    fig.suptitle("Verbal feedback: applied in scope, unchanged elsewhere")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
