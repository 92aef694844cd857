"""feedlearn DPO against TRL's DPOTrainer: same model on disk, same data, batch, steps, seed, CPU.

Two measurements, in one process, one after the other:
1. First-step loss from the same weights and batch (one batch is the whole data set, so the sampling order
   cannot matter). The reference is a perturbed copy of the policy, so the loss depends on both models'
   log-probs of every token and checks the tokenization, masking and math, not just log(2).
2. Training throughput over the same number of steps, end to end (tokenization, the reference's
   log-probs, the optimization), in float32, median of interleaved repeats: feedlearn precomputes the
   reference's log-probs once and batches pairs of similar length together; TRL computes the reference
   live. TRL with `precompute_ref_log_probs=True` is timed too, so the gain from that one switch can be
   told apart, and TRL with its default bf16 autocast (different math, shown for information).

Two shapes (`--model`): `tiny` (a tiny model trained in full) and `smollm2` (SmolLM2-135M-Instruct, the
real offline model, with a LoRA adapter on every linear layer in both trainers: the setting users run;
the bf16 arm is left out there).

    python benchmarks/dpo_vs_trl.py --out bench_out/dpo_vs_trl                   # a few minutes on 2 cores
    python benchmarks/dpo_vs_trl.py --out bench_out/dpo_vs_trl --model smollm2   # about 10 minutes
    python benchmarks/dpo_vs_trl.py --out /tmp/smoke --quick                     # a smoke test

Writes `OUT/result.json` ({model: {...}}, a rerun keeps the other model's section; the process's peak
resident memory included) and `OUT/throughput.png`. TRL is a benchmark dependency only (`pip install trl`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from feedlearn.data.jsonl import update_json_sections, write_text_atomic
from feedlearn.data.store import open_run
from feedlearn.methods.dpo.config import DPOConfig
from feedlearn.methods.dpo.stages import PreferenceLearning
from feedlearn.models.gguf import converted_folder, named_gguf
from feedlearn.models.loading import LoraSettings, ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.resources import peak_rss_mb
from feedlearn.tasks.word_preferences import TOPICS, WORDS

FULL = {
    "repeats": 3,
    "steps": 60,
    "batch_size": 8,
    "max_words": 48,
    "tiny": TinyModelConfig(
        hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, vocab_size=512
    ),
}
QUICK = {
    "repeats": 1,
    "steps": 3,
    "batch_size": 4,
    "max_words": 12,
    "tiny": TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=300),
}
SMOLLM2 = {"repeats": 2, "steps": 10, "batch_size": 4, "max_words": 24}
"""SmolLM2 with LoRA: a step is about a thousand times the tiny model's work, so fewer and smaller steps."""
LORA = LoraSettings()  # r 16, alpha 32, every linear layer; both trainers turn its dropout off
LEARNING_RATE, BETA, SEED = 1e-4, 0.1, 0


def make_pairs(n: int, max_words: int, seed: int) -> list[dict]:
    """Standard-form pairs (prompt / chosen / rejected text) of varied lengths, as TRL users have them."""
    rng = random.Random(seed)

    def response() -> str:
        return " " + " ".join(rng.choices(WORDS, k=rng.randint(2, max_words)))

    return [
        {"prompt": f"Topic: {rng.choice(TOPICS)}. Words:", "chosen": response(), "rejected": response()}
        for _ in range(n)
    ]


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    write_text_atomic(path, "".join(json.dumps(p) + "\n" for p in pairs))
    return path


def perturbed_copy(model_path: str, out: Path) -> str:
    """The policy with seeded noise added to every weight: a reference that differs from it."""
    model, tokenizer = load_policy(ModelSettings(path=model_path))
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def feedlearn_run(
    out: Path, run_id: str, model: str, data: Path, batch: int, reference: str | None, lora: bool
) -> dict:
    """Train with feedlearn; wall time, samples and the logged first-step loss."""
    config = DPOConfig.model_validate(
        {
            "seed": SEED,
            "run_dir": str(out / "runs"),
            "model": {"path": model, "lora": LORA.model_dump() if lora else None},
            "train_data": {"path": str(data)},
            "dpo": {"beta": BETA, "reference_model": reference},
            "train": {
                "learning_rate": LEARNING_RATE,
                "lr_schedule": "constant",
                "warmup_ratio": 0.0,
                "batch_size": batch,
                "grad_accum": 1,
                "epochs": 1,
                "max_length": 1024,
                "checkpoint_every": 1_000_000,
            },
        }
    )
    store = open_run(config.run_dir, run_id, config.model_dump(mode="json"))
    started = time.perf_counter()
    PreferenceLearning(config, store, progress=False).train()
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (store.path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["stage"] == "train"]
    return {"seconds": seconds, "samples": len(steps) * batch, "first_loss": steps[0]["losses/loss"]}


def trl_run(
    out: Path,
    model: str,
    data: Path,
    batch: int,
    reference: str | None,
    precompute: bool,
    lora: bool,
    bf16: bool = False,
) -> dict:
    """Train with TRL's DPOTrainer; wall time (trainer set-up included), samples and first-step loss."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    args = TRLConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=1024,
        precompute_ref_log_probs=precompute,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        disable_tqdm=True,
        use_cpu=True,
        bf16=bf16,  # transformers turns bf16 autocast on by default where the CPU has it; feedlearn is fp32
    )
    started = time.perf_counter()
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32) if reference else None
    tokenizer = AutoTokenizer.from_pretrained(model)
    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=LORA.r,
            lora_alpha=LORA.alpha,
            lora_dropout=LORA.dropout,
            target_modules=LORA.target_modules,
            task_type="CAUSAL_LM",
        )
        if lora
        else None,
    )
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "samples": trainer.state.global_step * batch, "first_loss": losses[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for result.json, throughput.png and the runs")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny", help="the shape (see above)")
    parser.add_argument("--quick", action="store_true", help="a smoke test on the tiny shape")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one more feedlearn run (OUT/MODEL/profile.txt)"
    )
    parser.add_argument(
        "--repeats", type=int, help="interleaved repeats of each trainer (default: the shape's)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.quick:
        args.model = "tiny"
    s = QUICK if args.quick else FULL if args.model == "tiny" else SMOLLM2
    s = {**s, "repeats": args.repeats or s["repeats"]}
    lora = args.model == "smollm2"
    torch.manual_seed(SEED)

    pairs = make_pairs(s["steps"] * s["batch_size"], s["max_words"], SEED)
    texts = [p["prompt"] + p[side] for p in pairs for side in ("chosen", "rejected")]
    if lora:
        model = str(converted_folder(*named_gguf("smollm2-135m-instruct")))
    else:
        model = str(build_tiny_model(s["tiny"], texts))
    out = out / args.model
    shutil.rmtree(out / "runs", ignore_errors=True)  # a finished feedlearn run is not trained again
    reference = perturbed_copy(model, out / "reference")

    one_batch = write_pairs(out / "data" / "one_batch.jsonl", pairs[: s["batch_size"]])
    fl_first = feedlearn_run(out, "first-loss", model, one_batch, s["batch_size"], reference, lora)[
        "first_loss"
    ]
    trl_first = trl_run(out, model, one_batch, s["batch_size"], reference, False, lora)["first_loss"]

    data = write_pairs(out / "data" / "train.jsonl", pairs)
    trainers = ["feedlearn", "trl", "trl_precompute", *([] if lora else ["trl_bf16"])]
    runs: dict[str, list[dict]] = {name: [] for name in trainers}
    for repeat in range(s["repeats"]):  # interleaved, so a slow spell of the machine hits every trainer
        runs["trl"].append(trl_run(out, model, data, s["batch_size"], None, False, lora))
        runs["trl_precompute"].append(trl_run(out, model, data, s["batch_size"], None, True, lora))
        if "trl_bf16" in runs:
            runs["trl_bf16"].append(trl_run(out, model, data, s["batch_size"], None, False, lora, bf16=True))
        runs["feedlearn"].append(
            feedlearn_run(out, f"throughput-{repeat}", model, data, s["batch_size"], None, lora)
        )

    rates = {name: [r["samples"] / r["seconds"] for r in done] for name, done in runs.items()}

    def rate(name: str) -> float:
        """Median samples per second over the repeats."""
        return sorted(rates[name])[len(rates[name]) // 2]

    result = {
        "feedlearn_samples_per_s": round(rate("feedlearn"), 3),
        "trl_samples_per_s": round(rate("trl"), 3),
        "ratio": round(rate("feedlearn") / rate("trl"), 3),
        "first_loss_feedlearn": fl_first,
        "first_loss_trl": trl_first,
        "first_loss_abs_diff": abs(fl_first - trl_first),
        "trl_precompute_samples_per_s": round(rate("trl_precompute"), 3),
        "ratio_vs_trl_precompute": round(rate("feedlearn") / rate("trl_precompute"), 3),
        **({"trl_bf16_autocast_samples_per_s": round(rate("trl_bf16"), 3)} if "trl_bf16" in runs else {}),
        "samples_per_s_per_repeat": {name: [round(r, 3) for r in done] for name, done in rates.items()},
        "ratio_per_repeat": [  # each repeat's runs are back to back: a ratio per spell of the machine
            round(f / t, 3) for f, t in zip(rates["feedlearn"], rates["trl"], strict=True)
        ],
        "peak_rss_mb": peak_rss_mb(),
        "settings": {
            "model": "SmolLM2-135M-Instruct with LoRA" if lora else "tiny, full weights",
            "steps": s["steps"],
            "batch_size": s["batch_size"],
            "repeats": s["repeats"],
            "precision": "float32 for both (TRL's bf16 autocast default turned off); trl_bf16 keeps it on",
            **({"lora": LORA.model_dump()} if lora else {"tiny": s["tiny"].model_dump()}),
            "torch_threads": torch.get_num_threads(),
        },
    }
    update_json_sections(Path(args.out) / "result.json", {args.model: result})
    if args.profile:
        profile(
            lambda: feedlearn_run(out, "profile", model, data, s["batch_size"], None, lora),
            out / "profile.txt",
        )
    plot(result, out / "throughput.png")
    print(json.dumps(result, indent=2))


def profile(run, path: Path) -> None:
    """Where `run`'s time goes: its wall time and torch's profiler table of operators by their own CPU
    time, written to `path`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    started = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    wall = time.perf_counter() - started
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    write_text_atomic(path, f"feedlearn DPO run, {wall:.1f} s wall under the profiler\n{table}\n")


def plot(result: dict, path: Path) -> None:
    """Training samples per second of each trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["feedlearn", "TRL", "TRL\nprecompute", "TRL bf16\n(other math)"]
    keys = ["feedlearn", "trl", "trl_precompute", "trl_bf16_autocast"]
    names = [n for n, k in zip(names, keys, strict=True) if f"{k}_samples_per_s" in result]
    values = [result[f"{k}_samples_per_s"] for k in keys if f"{k}_samples_per_s" in result]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, values, color=["C1", "C0", "C0", "C7"][: len(values)])
    bars[2].set_alpha(0.6)
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylabel("training samples / s (end to end)")
    ax.set_title(f"DPO, {result['settings']['model']}, CPU\nfeedlearn / TRL = {result['ratio']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
