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

The `smollm2` arm (`--arm smollm2`, `recipes/c3po/smollm2.yaml`) runs the `clean` task on a real model,
SmolLM2-135M-Instruct: its own sampled answers to the same requests, revised by rule (the offline
teacher's revisions handle a real model's forms: a preface, bullets, a closing line, an answer cut at the
token limit), the reference's loss (no SFT on the revision); no rule judge (its rules know the corpus's
answers only). Beside the seed means it reports C3PO against each method paired per held-out prompt (the
same prompts and baselines), pooled over feedbacks and seeds.

Per method, averaged over the feedbacks: in-scope adherence, the share of near- and out-of-scope responses
whose behaviour changed, all against the sampled baseline (`evaluate.baseline: sampled`, the paper's;
`base` is the base model's own greedy answers against it: the noise floor), and answer quality: a
rule-based judge (`feedlearn.tasks.instructions.answers_prompt`: the right addressee and topic, the asked
number of things of the asked kind), not a model, asked through feedlearn's Likert judge, 1-5 against the
baseline (3 = as good). The recipe's C3PO adds SFT on the revision to the paper's loss (`loss.chosen_sft`
1); `c3po_paper_loss` is C3PO without it, on the same base model and samples. Mean and standard error
over the seeds (another initial model, other samples, another data order each).

    OMP_NUM_THREADS=1 python benchmarks/c3po_scope.py --out bench_out/c3po --seeds 0 1 --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/c3po_scope.py --out bench_out/c3po --jobs 2 --arm smollm2
    python benchmarks/c3po_scope.py --out /tmp/smoke --quick                       # a smoke test, ~30 s

The tiny arm takes 73 CPU-minutes, one thread per seed: about 37 minutes on 2 free cores; the smollm2 arm
about 35 minutes per seed.

Writes the arm's section of `OUT/result.json` ({arm: {"tasks": {task: {method: {metric: {"mean", "se",
"per_seed"}}}}, "per_seed": {seed: {task: {feedback: {method: metrics}}}}, ...}}, and for smollm2
"feedbacks" (the summary per feedback) and "paired" ({method: {metric: {"mean", "se", "prompts"}}}); a
rerun keeps the other arm's), `OUT/<arm>/seed-N/result.json`, and `OUT/scope.png` (`OUT/scope-smollm2.png`,
a panel per feedback).
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
from feedlearn.data.jsonl import read_jsonl, update_json_sections, write_json_atomic, write_jsonl_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.data import C3POSample
from feedlearn.methods.c3po.stages import C3PO
from feedlearn.resources import peak_rss_mb
from feedlearn.seeds import derive_seed
from feedlearn.stats import paired_difference
from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS, answers_prompt
from feedlearn.verifiers.verbal import Feedback, scope_scores

RECIPES = {arm: files("feedlearn") / "recipes" / "c3po" / f"{arm}.yaml" for arm in ("tiny", "smollm2")}
TASKS = {"tiny": ("clean", "missed"), "smollm2": ("clean",)}
"""The tasks each arm runs."""
QUICK_SMOLLM2 = [
    "sample.prompts_per_scope=4",
    "sample.prompts_per_category=4",
    "sample.max_new_tokens=8",
    "evaluate.prompts_per_scope=1",
    "evaluate.max_new_tokens=8",
    "train={learning_rate: 2.0e-4, epochs: 1, batch_size: 1, grad_accum: 1, max_length: 128}",
    "methods=[c3po, scd]",
]
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
    parser.add_argument("--arm", choices=list(RECIPES), default="tiny", help="tiny models or SmolLM2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the recipe's seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    seeds = args.seeds[:1] if args.quick else args.seeds
    quick = QUICK if args.arm == "tiny" else QUICK_SMOLLM2
    overrides = [*(quick if args.quick else []), *args.set]
    folder = out if args.arm == "tiny" else out / args.arm
    runs = [(folder / f"seed-{seed}", seed, overrides, args.arm) for seed in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(run_seed, *zip(*runs, strict=True)))
    else:
        per_seed = [run_seed(*run) for run in runs]
    result = {
        "seeds": seeds,
        "tasks": {task: summarize([p[task] for p in per_seed]) for task in TASKS[args.arm]},
        "per_seed": dict(zip(map(str, seeds), per_seed, strict=True)),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.arm == "smollm2":
        result["feedbacks"] = per_feedback(per_seed)
        result["paired"] = paired_against_c3po(per_seed)
    update_json_sections(out / "result.json", {args.arm: result}, legacy="tasks")
    plot(result, out / ("scope.png" if args.arm == "tiny" else f"scope-{args.arm}.png"), args.arm)
    print(json.dumps({k: result[k] for k in ("tasks", "paired") if k in result}, indent=2))


def run_seed(folder: Path, seed: int, overrides: list[str], arm: str = "tiny") -> dict[str, dict]:
    """The arm's tasks at one seed: {task: {feedback: {method: metrics}}}; also written to `folder`."""
    started = time.perf_counter()
    config = load_recipe(
        C3POConfig, str(RECIPES[arm]), [f"run_dir={folder / 'runs'}", f"seed={seed}", *overrides]
    )
    if arm == "smollm2":
        clean = C3PO(config, open_run(config.run_dir, "c3po-smollm2", config.model_dump(mode="json")))
        results = {"clean": clean.run()}
        results["per_prompt"] = {f.short_id: scores_per_prompt(clean, f) for f in clean.feedbacks()}
    else:
        results = tiny_tasks(config, seed)
    write_json_atomic(folder / "result.json", {**results, "seconds": round(time.perf_counter() - started, 1)})
    return results


def tiny_tasks(config: C3POConfig, seed: int) -> dict[str, dict]:
    """The tiny arm's `clean` and `missed` tasks, judged by rule, with C3PO's paper-loss variant."""
    config = config.model_copy(
        update={"evaluate": config.evaluate.model_copy(update={"answer_quality": True})}
    )
    clean = RuleJudged(config, open_run(config.run_dir, "c3po-tiny", config.model_dump(mode="json")))
    results = {"clean": with_paper_loss(clean, clean.run())}
    missed = derived_run(clean, "missed", config)
    for feedback in missed.feedbacks():
        path = missed.layout.samples(feedback.short_id)
        write_jsonl_atomic(path, miss_revisions(read_jsonl(path, C3POSample), seed, feedback.id))
    missed.train()
    results["missed"] = with_paper_loss(missed, missed.evaluate())
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
    for folder in [run.layout.sft(), *(run.layout.sample(f.short_id) for f in run.feedbacks())]:
        name = run.layout.name(folder)
        shutil.copytree(folder, derived.layout.folder(name), dirs_exist_ok=True)
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


def per_feedback(per_seed: list[dict]) -> dict[str, dict]:
    """The `clean` task's summary for each feedback apart, by its built-in name."""
    names = {task.feedback.short_id: name for name, task in BUILTIN_FEEDBACKS.items()}
    return {
        names[fid]: summarize([{fid: seed["clean"][fid]} for seed in per_seed])
        for fid in per_seed[0]["clean"]
    }


def paired_against_c3po(per_seed: list[dict]) -> dict[str, dict]:
    """C3PO minus each other row, per held-out prompt (the same prompts and baselines), pooled over the
    feedbacks and seeds: in-scope adherence and near / out-of-scope change, in points, with the standard
    error of the per-prompt differences and the number of prompts."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for seed in per_seed:
        for rows in seed["per_prompt"].values():
            for name, scores in rows.items():
                for key, values in scores.items():
                    pooled.setdefault(name, {}).setdefault(key, []).extend(values)
    out = {}
    for name, scores in pooled.items():
        if name != "c3po":
            out[name] = {}
            for key, values in scores.items():
                mean, se = paired_difference(pooled["c3po"][key], values)
                out[name][key] = {
                    "mean": round(100 * mean, 1),
                    "se": round(100 * se, 1),
                    "prompts": len(values),
                }
    return out


def scores_per_prompt(method: C3PO, feedback: Feedback) -> dict[str, dict[str, list[float]]]:
    """Per row of the evaluation (method, base, in-context, CoT), 1 or 0 per held-out prompt: in scope
    whether it follows the feedback, near and out of scope whether it changed, against the sampled
    baseline (as `evaluate` scores them)."""
    path = method.layout.evaluation(feedback.short_id) / "responses.json"
    baseline = {scope: [s.baseline for s in rows] for scope, rows in method.test_samples(feedback).items()}
    scores = {}
    for name, responses in json.loads(path.read_text()).items():
        per_prompt = scope_scores(feedback, responses, baseline)
        scores[name] = {key: per_prompt[key] for key in KEYS}
    return scores


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


def plot(result: dict, path: Path, arm: str) -> None:
    """Per task (the smollm2 arm: per feedback), grouped bars with standard errors: in-scope adherence and
    near / out-of-scope change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"] if arm == "tiny" else result["feedbacks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
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
        if arm == "tiny":
            share = "all" if task == "clean" else f"{MISSED_SHARE:.0%}"
            ax.set_title(f"{task}: {share} of the revisions apply the feedback")
        else:
            ax.set_title(f"{task} (every revision applies it)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"% of held-out prompts (mean ± s.e., {len(result['seeds'])} seeds)")
    axes[0].set_ylim(0, 105)
    axes[0].legend(fontsize=8)
    model = "tiny models" if arm == "tiny" else "SmolLM2-135M-Instruct"
    fig.suptitle(f"Verbal feedback: applied in scope, unchanged elsewhere?\n{model}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
