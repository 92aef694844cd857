"""RISE's collection at turn 2 (best-of-16 on a fixed set of problems) generated three ways from the same
prompts: a naive loop (one `generate` call per conversation, as the seed repositories do), feedlearn's
batched local backend, and vLLM where it is installed. Problems/s, generated tokens/s, and the ratios.

    python benchmarks/generation_throughput.py --out bench_out/throughput        # CPU, a few minutes
    .venv-vllm/bin/python benchmarks/generation_throughput.py --out DIR           # with vLLM (CPU build)
    python benchmarks/generation_throughput.py --model qwen2-0.5b --out DIR       # a real shape (a GPU)
    python benchmarks/generation_throughput.py --quick --out /tmp/smoke           # CI smoke test

The model has random weights (throughput needs no trained ones), so every reply runs to `--max-new-tokens`:
each way generates the same number of tokens. `--model` takes a model folder (its config, random weights)
or `qwen2-0.5b` (Qwen2-0.5B's shape with the tiny tokenizer). Writes DIR/result.json and DIR/throughput.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.envs.math_env import MathPrompt
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import load_tokenizer
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.report import grouped_bars
from feedlearn.tasks.synthetic_math import generate_problems

SAMPLES = 16
TINY = TinyModelConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=2)
"""The RISE tiny recipe's shape (head size 64, which vLLM's CPU attention supports)."""


def conversations(n: int) -> list[list[dict]]:
    """Turn 2 of RISE on `n` synthetic problems: the question, a wrong first attempt, the retry message."""
    prompt = MathPrompt()
    return [
        [
            {"role": "user", "content": prompt.first_message(p.question)},
            {"role": "assistant", "content": "The answer is 0."},
            {"role": "user", "content": prompt.retry(p.question)},
        ]
        for p in generate_problems(n, seed=3, levels=[1, 2, 3])
    ]


def model_folder(name: str | None, cache: Path) -> Path:
    """A folder with the model's config and a tokenizer: the tiny shape, a preset, or the given folder."""
    texts = [c[0]["content"] for c in conversations(64)]
    tiny = build_tiny_model(TINY, texts, cache=cache)
    if name is None:
        return tiny
    if name == "qwen2-0.5b":  # Qwen2-0.5B's shape; its vocabulary is the tiny tokenizer's
        folder = cache / "qwen2-0.5b"
        config = Qwen2Config(
            vocab_size=TINY.vocab_size, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True,
        )  # fmt: skip
        config.save_pretrained(folder)
        load_tokenizer(str(tiny)).save_pretrained(folder)
        return folder
    return Path(name)


def random_model(folder: Path, dtype: torch.dtype):
    """The folder's architecture with random weights, on the GPU when there is one, in eval mode."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def naive(model, tokenizer, chats, sampling: SamplingParams) -> int:
    """One `generate` call per conversation with `SAMPLES` sequences; returns the tokens generated."""
    tokens = 0
    for chat in chats:
        ids = torch.tensor([prompt_ids(tokenizer, chat)], device=model.device)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=SAMPLES,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = out[:, ids.shape[1] :]
        tokens += int((generated != tokenizer.pad_token_id).sum())
    return tokens


def measure(run, problems: int) -> dict:
    started = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "problems_per_s": round(problems / seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/throughput", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a few problems and tokens (CI)")
    parser.add_argument("--model", help="a model folder (random weights from its config) or qwen2-0.5b")
    parser.add_argument("--problems", type=int, default=32, help="problems (best-of-16 each)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply")
    parser.add_argument("--batch-size", type=int, default=256, help="the local backend's rows per call")
    args = parser.parse_args()
    problems, max_new = (4, 8) if args.quick else (args.problems, args.max_new_tokens)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache = Path(tempfile.mkdtemp(prefix="throughput-"))
    folder = model_folder(args.model, cache)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model, tokenizer = random_model(folder, dtype), load_tokenizer(str(folder))
    chats = conversations(problems)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new)
    keys = [f"collect/{i}/turn2" for i in range(problems)]

    def local() -> int:
        backend = LocalBackend(model, tokenizer, args.batch_size, progress=False)
        return sum(len(r) for rows in backend.generate_ids(chats, SAMPLES, sampling, keys) for r in rows)

    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model or "tiny (RISE tiny recipe shape)",
        "problems": problems,
        "samples": SAMPLES,
        "max_new_tokens": max_new,
        "naive": measure(lambda: naive(model, tokenizer, chats, sampling), problems),
        "local": measure(local, problems),
        "vllm": None,
    }
    if importlib.util.find_spec("vllm") is not None:
        from feedlearn.backends.vllm_backend import VLLMBackend, VLLMSettings

        model.save_pretrained(cache / "weights")  # vLLM loads the same random weights from a folder
        tokenizer.save_pretrained(cache / "weights")
        dtype_name = "bfloat16" if dtype == torch.bfloat16 else "float32"
        del model  # vLLM loads its own copy of the weights
        share = 0.5 if torch.cuda.is_available() else 0.4  # on the CPU build: the share of CPU memory
        settings = VLLMSettings(
            max_model_len=1024,
            dtype=dtype_name,
            gpu_memory_utilization=share,
            max_num_batched_tokens=None if torch.cuda.is_available() else 65536,  # no chunked prefill
        )
        engine = VLLMBackend(str(cache / "weights"), settings)
        engine.generate(chats[:1], 1, sampling)  # warm-up: the first call compiles
        result["vllm"] = measure(
            lambda: sum(len(r) for rows in engine.generate_ids(chats, SAMPLES, sampling, keys) for r in rows),
            problems,
        )
    ways = [w for w in ("naive", "local", "vllm") if result[w] is not None]
    result["ratios"] = {
        "local_over_naive": round(result["local"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2),
        **(
            {"vllm_over_local": round(result["vllm"]["tokens_per_s"] / result["local"]["tokens_per_s"], 2)}
            if result["vllm"]
            else {}
        ),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, ways, out / "throughput.png")
    print(json.dumps(result, indent=2))


def plot(result: dict, ways: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    grouped_bars(ax, ["tokens/s"], {w: [result[w]["tokens_per_s"]] for w in ways})
    ax.set_title(f"RISE turn 2, best-of-{SAMPLES}, {result['problems']} problems ({result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
