"""RISE's collection at turn 2 (best-of-16 on a fixed set of problems) generated three or four ways from the
same prompts: a naive loop (one `generate` call per conversation with 16 return sequences, as the seed
repositories do), feedlearn's batched local backend (its default static KV cache, and the dynamic one), and
vLLM where it is installed. Generated tokens/s, the ratios, and how far each way is from the machine's limit.

    OMP_NUM_THREADS=2 python benchmarks/generation_throughput.py --out bench_out/generation   # CPU, ~15 min
    .venv-vllm/bin/python benchmarks/generation_throughput.py --out DIR                    # with vLLM (CPU)
    python benchmarks/generation_throughput.py --models qwen2-0.5b --out DIR               # a bigger shape
    python benchmarks/generation_throughput.py --quick --out /tmp/smoke                    # CI smoke test

Shapes (`--models`): `tiny` (the RISE tiny recipe's shape, random weights), `smollm2` (SmolLM2-135M-Instruct,
the real offline model with its own weights and tokenizer: replies end where the model ends them), and
`qwen2-0.5b` (Qwen2-0.5B's shape with the tiny tokenizer, random weights); or a model folder (its config,
random weights). Random weights make every reply run to the token limit, so each way generates the same
tokens.

Each way's achieved FLOP/s counts the work the task needs, the same for every way: each prompt prefilled
once, then every generated token at its context (2 FLOPs per weight of each matmul, the LM head included,
and attention's two products over the context), divided by the way's seconds; as a share of the machine's
dense matmul rate measured in the same run (a square float32 matmul on the same threads). Peak resident
memory is the process's (every way of every shape run in it). Writes DIR/result.json ({shape: {...}},
"matmul_flops_per_s", "peak_rss_mb") and DIR/throughput.png.
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
from feedlearn.methods.plots import grouped_bars
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import ModelSettings, load_policy, load_tokenizer
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.resources import peak_rss_mb
from feedlearn.tasks.synthetic_math import generate_problems

SAMPLES = 16
TINY = TinyModelConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=2)
"""The RISE tiny recipe's shape (head size 64, which vLLM's CPU attention supports)."""
SIZES = {"tiny": (32, 64), "smollm2": (4, 32), "qwen2-0.5b": (4, 16)}
"""Problems (best-of-16 each) and tokens per reply per shape (a model folder: 4 and 16)."""
QUICK = (4, 8)


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


def load_shape(name: str, cache: Path, dtype: torch.dtype):
    """The shape's model (in eval mode, on the GPU when there is one) and tokenizer."""
    if name == "smollm2":
        model, tokenizer = load_policy(ModelSettings(path="smollm2-135m-instruct", dtype="float32"))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return model.to(device, dtype).eval(), tokenizer
    folder = Path(name)
    if name in ("tiny", "qwen2-0.5b"):
        folder = tiny = build_tiny_model(TINY, [c[0]["content"] for c in conversations(64)], cache=cache)
    if name == "qwen2-0.5b":  # Qwen2-0.5B's shape; its vocabulary is the tiny tokenizer's
        folder = cache / "qwen2-0.5b"
        config = Qwen2Config(
            vocab_size=TINY.vocab_size, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True,
        )  # fmt: skip
        config.save_pretrained(folder)
        load_tokenizer(str(tiny)).save_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), load_tokenizer(str(folder))


def token_flops(model):
    """FLOPs of one token's forward pass as a function of its context length: 2 per weight of every matmul
    (the LM head included, tied or not) and 4 per attention dimension per earlier token per layer."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    weights = sum(p.numel() for p in model.parameters() if p.ndim == 2 and p is not embedding)
    weights += head.numel() if head is embedding else 0
    config = model.config
    attention = (
        config.num_hidden_layers
        * config.num_attention_heads
        * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    )
    return lambda context: 2 * weights + 4 * attention * context


def useful_flops(model, prompts: list[int], replies: list[list[int]]) -> float:
    """The task's work: each prompt (of the given lengths) prefilled once, and every generated token of
    its replies (their lengths) at its context."""
    per_token = token_flops(model)
    total = 0.0
    for length, lengths in zip(prompts, replies, strict=True):
        total += sum(per_token(c) for c in range(1, length + 1))
        total += sum(per_token(length + t) for n in lengths for t in range(1, n + 1))
    return total


def matmul_rate(dtype: torch.dtype) -> float:
    """The machine's dense matmul rate in FLOP/s: a 2048-square matmul in `dtype`, best of 5."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(2048, 2048, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(6):  # the first one warms up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def naive(model, tokenizer, chats, sampling: SamplingParams) -> list[list[int]]:
    """One `generate` call per conversation with `SAMPLES` sequences; each reply's length."""
    lengths = []
    for chat in chats:
        ids = torch.tensor([prompt_ids(tokenizer, chat)], device=model.device)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=SAMPLES,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        lengths.append(
            [len(r[: r.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in r else r) for r in
             out[:, ids.shape[1] :].tolist()]
        )  # fmt: skip
    return lengths


def measure(run, model, prompts: list[int], peak: float) -> dict:
    """One way's seconds, generated tokens, tokens/s and achieved FLOP/s (and its share of `peak`)."""
    started = time.perf_counter()
    replies = run()
    seconds = time.perf_counter() - started
    tokens = sum(sum(r) for r in replies)
    flops = useful_flops(model, prompts, replies) / seconds
    return {
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "problems_per_s": round(len(prompts) / seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "flops_per_s": round(flops),
        "share_of_matmul_rate": round(flops / peak, 4),
    }


def run_shape(name: str, quick: bool, batch_size: int, cache: Path, dtype: torch.dtype, peak: float) -> dict:
    """Every way on one shape, side by side."""
    problems, max_new = QUICK if quick else SIZES.get(name, (4, 16))
    model, tokenizer = load_shape(name, cache, dtype)
    chats = conversations(problems)
    prompts = [len(prompt_ids(tokenizer, c)) for c in chats]
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=max_new)
    keys = [f"collect/{i}/turn2" for i in range(problems)]

    def local(kv_cache: str):
        backend = LocalBackend(model, tokenizer, batch_size, progress=False, kv_cache=kv_cache)
        return lambda: [
            [len(r) for r in rows] for rows in backend.generate_ids(chats, SAMPLES, sampling, keys)
        ]

    local("static")()  # warm-up: the first call pays for one-time setup
    result = {
        "model": {"tiny": "tiny (RISE tiny recipe shape)"}.get(name, name),
        "parameters": sum(p.numel() for p in model.parameters()),
        "problems": problems,
        "samples": SAMPLES,
        "max_new_tokens": max_new,
        "prompt_tokens_mean": round(sum(prompts) / len(prompts), 1),
        "naive": measure(lambda: naive(model, tokenizer, chats, sampling), model, prompts, peak),
        "local": measure(local("static"), model, prompts, peak),
        "local_dynamic_cache": measure(local("dynamic"), model, prompts, peak),
        "vllm": None,
    }
    if importlib.util.find_spec("vllm") is not None:
        result["vllm"] = measure_vllm(
            model, tokenizer, chats, sampling, keys, cache / name, dtype, prompts, peak
        )
    ratio = lambda a, b: round(result[a]["tokens_per_s"] / result[b]["tokens_per_s"], 2)  # noqa: E731
    result["ratios"] = {
        "local_over_naive": ratio("local", "naive"),
        "static_over_dynamic_cache": ratio("local", "local_dynamic_cache"),
        **({"vllm_over_local": ratio("vllm", "local")} if result["vllm"] else {}),
    }
    return result


def measure_vllm(model, tokenizer, chats, sampling, keys, folder: Path, dtype, prompts, peak) -> dict:
    """vLLM's CPU (or GPU) build on the same weights, saved to `folder`."""
    from feedlearn.backends.vllm_backend import VLLMBackend, VLLMSettings

    model.save_pretrained(folder)  # vLLM loads the same weights from a folder
    tokenizer.save_pretrained(folder)
    settings = VLLMSettings(
        max_model_len=1024,
        dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
        gpu_memory_utilization=0.5 if torch.cuda.is_available() else 0.4,  # CPU build: share of CPU memory
        max_num_batched_tokens=None if torch.cuda.is_available() else 65536,  # no chunked prefill
    )
    engine = VLLMBackend(str(folder), settings)
    engine.generate(chats[:1], 1, sampling)  # warm-up: the first call compiles
    run = lambda: [[len(r) for r in rows] for rows in engine.generate_ids(chats, SAMPLES, sampling, keys)]  # noqa: E731
    return measure(run, model, prompts, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/generation", help="output folder")
    parser.add_argument("--quick", action="store_true", help="the tiny shape, a few problems and tokens (CI)")
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "smollm2"], help="tiny, smollm2, qwen2-0.5b or a model folder"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="the local backend's rows per call")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="throughput-"))
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    peak = matmul_rate(dtype)
    shapes = ["tiny"] if args.quick else args.models
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "matmul_flops_per_s": round(peak),
        **{name: run_shape(name, args.quick, args.batch_size, cache, dtype, peak) for name in shapes},
        "peak_rss_mb": peak_rss_mb(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, shapes, out / "throughput.png")
    print(json.dumps(result, indent=2))


def plot(result: dict, shapes: list[str], path: Path) -> None:
    """Each way's tokens/s as a share of the naive loop's, per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = [w for w in ("naive", "local", "local_dynamic_cache", "vllm") if result[shapes[0]][w] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    grouped_bars(
        ax,
        [result[s]["model"] for s in shapes],
        {
            w: [result[s][w]["tokens_per_s"] / result[s]["naive"]["tokens_per_s"] for s in shapes]
            for w in ways
        },
    )
    ax.set_ylabel("tokens/s, x the naive loop")
    ax.set_title(f"RISE turn 2, best-of-{SAMPLES} ({result['device']}, {result['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
