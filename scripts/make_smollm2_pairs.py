"""The preference pairs of Active DPO's real-model arm: SmolLM2-135M-Instruct's own answers to requests a
person would write, two sampled answers per request, labeled by a preference a user holds and a program
can check: the shorter answer is preferred (a user who wants brief answers).

An answer's length is its token count; an answer cut at `MAX_NEW_TOKENS` counts as longer than any that
ended. A pair is kept when the longer answer is at least `MIN_RATIO` times the shorter (a clear preference);
both cut: left out. The requests are drawn from templates x topics in a fixed order and split into train
(the labeling pool), validation (to choose settings on) and test (reported) requests, no request in two
splits. The files ship in `recipes/active-dpo/smollm2/` so the recipe runs on a fresh clone without this
script (sampling depends on the CPU's float order: a rerun elsewhere may write other answers).

    OMP_NUM_THREADS=2 python scripts/make_smollm2_pairs.py     # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.data.jsonl import write_jsonl_atomic
from feedlearn.data.records import Message, PreferencePair
from feedlearn.models.loading import ModelSettings, load_policy

TEMPLATES = [
    "In a sentence or two, what is {}?",
    "Quick question: why do people care about {}?",
    "Give me a quick tip about {}.",
    "Briefly, how would you describe {} to a child?",
    "One fun fact about {}, please.",
    "Short answer: is {} worth learning about?",
    "In a few words, how does {} affect everyday life?",
    "Briefly, what is one common mistake people make with {}?",
    "Summarize {} in one sentence.",
    "Name one thing a beginner should know about {}.",
    "Keep it short: what is {} good for?",
    "Write a one-line note to a friend about {}.",
]
TOPIC_TEXT = (
    "photosynthesis, the moon, coffee, bicycles, volcanoes, the internet, chess, bread baking, rainbows, "
    "honeybees, saving money, sleep, the ocean, jazz music, recycling, gravity, houseplants, running, "
    "electric cars, the Roman Empire, vaccines, cats, gardening, public speaking, clouds, libraries, "
    "solar panels, dinosaurs, tea, learning a language, maps, football, earthquakes, birthdays, the human "
    "heart, trains, penguins, poetry, budgeting, mountains, owls, pizza, the stock market, yoga, snow, "
    "museums, bridges, frogs, camping, rivers, chocolate, robots, painting, deserts, tomatoes, kites, the "
    "piano, lighthouses, soap, bats, glaciers, swimming, spiders, cheese, telescopes, origami, wind "
    "turbines, elephants, podcasts, knitting, coral reefs, umbrellas, maple syrup, fireflies, board "
    "games, the alphabet, sunflowers, hiking boots, dolphins, rice"
)
TOPICS = TOPIC_TEXT.split(", ")
"""The topics the templates are filled with (one string, so that 80 topics take 10 lines)."""
SPLITS = {"train": 160, "validation": 64, "test": 128}
"""Pairs per split (train is the labeling pool)."""
MAX_NEW_TOKENS = 64
MIN_RATIO = 1.2
SAMPLING = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=MAX_NEW_TOKENS)
OUT = Path(__file__).resolve().parent.parent / "feedlearn" / "recipes" / "active-dpo" / "smollm2"


def length(ids: list[int]) -> int:
    """An answer's length for the preference: its tokens, one more than the limit when it was cut."""
    return len(ids) + (len(ids) >= MAX_NEW_TOKENS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for train/validation/test.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="the requests' order and the sampling")
    args = parser.parse_args()
    requests = [t.format(topic) for t in TEMPLATES for topic in TOPICS]
    random.Random(args.seed).shuffle(requests)
    model, tokenizer = load_policy(ModelSettings(path="smollm2-135m-instruct"))
    backend = LocalBackend(model, tokenizer, 32, seed=args.seed)
    pairs: list[PreferencePair] = []
    needed, start = sum(SPLITS.values()), 0
    while len(pairs) < needed and start < len(requests):
        chunk = requests[start : start + 64]
        conversations = [[{"role": "user", "content": r}] for r in chunk]
        keys = [f"brevity-{start + i}" for i in range(len(chunk))]
        for i, (request, ids) in enumerate(
            zip(chunk, backend.generate_ids(conversations, 2, SAMPLING, keys), strict=True)
        ):
            short, long_ = sorted(ids, key=length)
            if length(short) >= MAX_NEW_TOKENS or length(long_) < MIN_RATIO * length(short):
                continue
            short_first = random.Random(f"{args.seed}-{start + i}").random() < 0.5
            first, second = (short, long_) if short_first else (long_, short)
            pairs.append(
                PreferencePair(
                    id=f"brevity-{start + i}",
                    prompt=[Message(role="user", content=request)],
                    a=[Message(role="assistant", content=tokenizer.decode(first, skip_special_tokens=True))],
                    b=[Message(role="assistant", content=tokenizer.decode(second, skip_special_tokens=True))],
                    label=1 if first is short else -1,
                )
            )
        start += len(chunk)
        print(f"{start} requests, {len(pairs)} pairs", flush=True)
    if len(pairs) < needed:
        raise SystemExit(f"only {len(pairs)} pairs from {len(requests)} requests; {needed} needed")
    args.out.mkdir(parents=True, exist_ok=True)
    at = 0
    for split, n in SPLITS.items():
        write_jsonl_atomic(args.out / f"{split}.jsonl", pairs[at : at + n])
        at += n


if __name__ == "__main__":
    main()
