"""RISE: recursive introspection. A model learns to improve its own answer over several turns.

Stages (spec: shared/methods/rise.md):
- `sft`: optional warm start on the problems' worked solutions (needed by tiny models built from scratch);
- `collect`: multi-turn rollouts; each turn samples n actions from its model (the policy or a teacher),
  keeps the first best one, and stops at success;
- `convert`: trajectories -> weighted SFT examples (criteria all / better / best / success);
- `train`: reward-weighted regression on the final assistant turn of each example;
- `evaluate`: T sequential turns without an oracle, and n parallel first-turn samples.
Each stage reads the previous stage's files in the run folder, so any of them can be rerun or resumed.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field

from feedlearn.backends.base import Backend, SamplingParams
from feedlearn.backends.openai_compat import OpenAIBackend, OpenAIBackendConfig
from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Episode, Message, SFTExample, Turn
from feedlearn.envs.math_env import MathEnv, MathPrompt
from feedlearn.methods.common import GeneratingRecipe, Method, OneSource, Settings
from feedlearn.methods.rise_data import (
    Criterion,
    DedupeScope,
    best_sample,
    episode_examples,
    is_degenerate,
    percentages,
    rise_outcomes,
    solved_by_turn,
    windowed,
)
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import from_main, process_state, shared_map, total
from feedlearn.seeds import derive_seed
from feedlearn.tasks.math_data import MathProblem, ProblemFormat, load_problems
from feedlearn.tasks.reasoning_gym_data import ReasoningGymSettings, load_reasoning_gym
from feedlearn.tasks.synthetic_math import generate_problems
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, TrainSettings, is_trained
from feedlearn.verifiers.math_answers import grader_failures

log = logging.getLogger(__name__)


class SyntheticSettings(Settings):
    """Generated arithmetic word problems."""

    n: int = Field(gt=0, description="How many problems.")
    seed: int = Field(default=0, description="Same seed, same problems.")
    levels: list[int] = Field(default=[1, 2, 3], description="Difficulty levels (operations per problem).")


class ProblemSet(OneSource):
    """Where problems come from: a file, a data set, the synthetic generator or reasoning-gym."""

    path: str | None = Field(default=None, description="A JSONL file of problems.")
    dataset: DatasetSource | None = Field(
        default=None, description="A `datasets` split (hub id or save_to_disk folder) with rows in `format`."
    )
    format: ProblemFormat = Field(default="gsm8k", description="Row format of `path` or `dataset`.")
    synthetic: SyntheticSettings | None = Field(default=None, description="Generate problems instead.")
    reasoning_gym: ReasoningGymSettings | None = Field(
        default=None,
        description="Or a reasoning-gym task's problems, scored by its own check (the reasoning extra).",
    )
    limit: int | None = Field(default=None, gt=0, description="Use only the first `limit` problems.")

    def load(self, prefix: str, split: Literal["train", "test"] = "train") -> list[MathProblem]:
        """The problems, read or generated (generated test problems never share a question with generated
        training problems)."""
        if self.dataset is not None:
            problems = load_problems(export_rows(self.dataset), self.format)
        elif self.path is not None:
            problems = load_problems(self.path, self.format)
        elif self.reasoning_gym is not None:
            problems = load_reasoning_gym(self.reasoning_gym, split)
        else:
            s = self.synthetic
            problems = generate_problems(s.n, s.seed, s.levels, prefix, split)
        return problems[: self.limit]


class TurnSpec(Settings):
    """One collection turn: how many samples, from which model, sampled how."""

    n: int = Field(default=1, gt=0, description="Samples drawn; the first highest-reward one is kept.")
    teacher: OpenAIBackendConfig | None = Field(
        default=None, description="A remote OpenAI-compatible model for this turn; None = the policy."
    )
    temperature: float | None = Field(
        default=None, ge=0, description="This turn's sampling temperature; None = collect.temperature."
    )
    max_new_tokens: int | None = Field(
        default=None,
        gt=0,
        description="This turn's longest action, in tokens; None = collect.max_new_tokens.",
    )
    fresh: bool = Field(
        default=False,
        description="Draw this turn's samples on the opening alone, as a first attempt that never saw the "
        "earlier ones, and record the best as the answer to the retry message (a teacher that starts "
        "over). False: they see the dialogue so far (the reference's).",
    )


class CollectSettings(Settings):
    """Multi-turn data collection."""

    turns: list[TurnSpec] = Field(
        default_factory=lambda: [TurnSpec(n=1), TurnSpec(n=16)],
        description="One entry per turn; the default is self-distillation, best-of-16 at turn 2.",
    )
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature of every turn.")
    max_new_tokens: int = Field(default=512, gt=0, description="Longest action, in tokens.")
    redraws: int = Field(
        default=0,
        ge=0,
        description="When every sample of a turn is degenerate, draw the turn's n samples again, up to this "
        "many times; still none left: the action is empty (reward -1).",
    )
    chunk_size: int = Field(
        default=256, gt=0, description="Problems rolled out together; each finished chunk is saved."
    )


class ConvertSettings(Settings):
    """Turning trajectories into weighted SFT examples."""

    criterion: Criterion = Field(default="all", description="Which turns become examples.")
    temperature: float = Field(default=0.4, gt=0, description="Weight = exp(reward / temperature).")
    dedupe: bool = Field(default=True, description="Drop empty actions and repeats within a trajectory.")
    dedupe_scope: DedupeScope = Field(
        default="kept",
        description="kept: dedupe among the turns the criterion keeps, each example's context as collected; "
        "trajectory (the reference's): strip every action, drop the empty and repeated ones (and the retry "
        "message after each) from the whole trajectory, then apply the criterion to the turns left.",
    )
    only_successful: bool = Field(default=False, description="Keep only trajectories that end correct.")


class RiseEvaluateSettings(Settings):
    """Evaluation without an oracle: sequential turns and parallel samples."""

    turns: int = Field(
        default=5, gt=0, description="Sequential turns T; each is followed by the retry message."
    )
    context_window: int | None = Field(
        default=None, gt=1, description="At turn k >= w keep the question and only the last w-1 attempts."
    )
    parallel_samples: int = Field(
        default=5, gt=0, description="Independent first-turn samples n (mn@t1, pn@t1 when n > 1)."
    )
    temperature: float = Field(
        default=1.0, ge=0, description="Sampling temperature, sequential and parallel."
    )
    max_new_tokens: int = Field(default=512, gt=0, description="Longest answer, in tokens.")


class SFTSettings(Settings):
    """Optional warm start on worked solutions before RISE (a tiny model knows nothing yet)."""

    problems: ProblemSet = Field(description="Problems with worked solutions.")
    chat_turns: int = Field(
        default=1,
        ge=1,
        description="Each training row is a chat of 1 to chat_turns unrelated problems in a row, every "
        "answer trained, so the model also answers later turns of a chat as instruct models do (it never "
        "sees a correction).",
    )
    retries: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of warm-start problems asked again right after their solution, with the retry "
        "message, and solved again (the same worked solution): the base then re-answers a retried question "
        "as instruct models do, without ever seeing a correction. 0: a retry is new to the base.",
    )
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization.")


class RiseConfig(GeneratingRecipe):
    """A RISE recipe."""

    method: Literal["rise"] = "rise"
    prompt: MathPrompt = Field(default_factory=MathPrompt, description="Instruction and retry message.")
    train_problems: ProblemSet = Field(description="Problems to collect trajectories on.")
    test_problems: ProblemSet = Field(description="Held-out problems to evaluate on.")
    sft: SFTSettings | None = Field(default=None, description="Warm start before the first iteration.")
    iterations: int = Field(default=1, gt=0, description="Rounds of collect, convert, train, evaluate.")
    collect: CollectSettings = Field(default_factory=CollectSettings, description="Data collection.")
    convert: ConvertSettings = Field(default_factory=ConvertSettings, description="Conversion.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="RWR training.")
    evaluate: RiseEvaluateSettings = Field(default_factory=RiseEvaluateSettings, description="Evaluation.")


STAGES = {
    "sft": "warm-start the policy on solved problems (recipes with an `sft` section)",
    "collect": "roll out multi-turn episodes with the iteration's policy (and teacher turns)",
    "convert": "turn episodes into reward-weighted SFT examples",
    "train": "reward-weighted regression on the examples",
    "evaluate": "accuracy per turn on the test problems (--iteration 0: the base)",
}
"""Each stage, with what it does (shown by `feedlearn rise --help`)."""


def solution_text(problem: MathProblem) -> str:
    """A worked solution ending in `\\boxed{answer}` (GSM8K's `#### x` line becomes the boxed answer)."""
    text = re.sub(r"\n?####.*$", "", problem.solution or "", flags=re.S).strip()
    if "\\boxed" not in text:
        text = f"{text} The answer is \\boxed{{{problem.answer}}}.".strip()
    return text


class Rise(Method):
    """The stages of one RISE run, reading and writing `run_dir/<run_id>/`."""

    # ---- policies -------------------------------------------------------------------------------------

    def base_model_path(self) -> str:
        """The starting policy: the configured model, or a tiny model built on the task's text (the
        warm-start problems when there is a warm start, so the collection set can change without it)."""
        if self.config.model.path != "tiny":
            return self.config.model.path
        corpus = self.config.sft.problems if self.config.sft else self.config.train_problems
        problems = corpus.load("corpus")[:2000]
        prompt = self.config.prompt
        texts = [
            " ".join(m.content for m in prompt.opening(p.question)) + " " + solution_text(p) for p in problems
        ]
        texts.append(prompt.retry(""))
        return str(build_tiny_model(self.config.tiny, texts, self.config.seed))

    def policy_path(self, iteration: int) -> str:
        """The policy after `iteration` RISE rounds (0 = the base, after the optional SFT warm start)."""
        if iteration > 0:
            return str(self.store.stage(f"iter{iteration}/train") / "model")
        if self.config.sft is not None:
            return str(self.store.stage("sft") / "model")
        return self.base_model_path()

    # ---- stages ---------------------------------------------------------------------------------------

    def sft(self) -> Path:
        """Warm start: train the base model on worked solutions (plain SFT, weight 1), in chats. Each
        problem of a chat is asked in the prompt's layout; in the dialogue layout a chat opens once with the
        instruction and the worked example (whose answer is trained too) and asks each later problem with
        `next_question`; a share (`sft.retries`) is asked again with the retry message and solved again."""
        sft, folder = self.config.sft, self.store.stage("sft")
        if is_trained(folder):
            return folder / "model"
        model, tokenizer = load_policy(
            self._settings(self.base_model_path()), trainable=True, seed=self.config.seed
        )
        problems = sft.problems.load("sft")
        random.Random(derive_seed(self.config.seed, "order", "sft-problems")).shuffle(problems)
        sizes = random.Random(derive_seed(self.config.seed, "order", "sft-chat-sizes"))
        retried = random.Random(derive_seed(self.config.seed, "order", "sft-retries"))
        examples, start = [], 0
        while start < len(problems):
            chat = problems[start : start + sizes.randint(1, sft.chat_turns)]
            start += len(chat)
            messages = []
            for p in chat:
                opening = self.config.prompt.opening(p.question)
                messages += opening if not messages else opening[-1:]
                messages.append(Message(role="assistant", content=solution_text(p)))
                if sft.retries and retried.random() < sft.retries:
                    messages.append(Message(role="user", content=self.config.prompt.retry(p.question)))
                    messages.append(Message(role="assistant", content=solution_text(p)))
            examples.append(SFTExample(id=chat[0].id, messages=messages))
        rows = tokenize_sft(examples, tokenizer, sft.train.max_length, all_turns=True)
        return self.fit("sft", model, tokenizer, rows, SFTObjective(tokenizer.pad_token_id), sft.train)

    def collect(self, iteration: int = 1) -> Path:
        """Roll out the policy (and teachers) on the training problems; resumable by problem id.

        Under several processes (`accelerate launch`, `torchrun`) each rolls out its share of every chunk
        and the main process alone writes them, in the chunk's order; each episode's samples are seeded by
        its id, so the episodes are the ones one process makes (up to float noise in batched decoding).
        """
        state = process_state()
        before = grader_failures()
        path = self.store.stage(f"iter{iteration}/collect") / "episodes.jsonl"
        out = JsonlAppender(path, Episode) if state.is_main_process else None  # it repairs a torn line
        done = from_main(lambda: set(out.ids))
        problems = self.config.train_problems.load("train")
        if any(p.id not in done for p in problems):
            self._collect_missing(iteration, problems, done, out)
        state.wait_for_everyone()
        failed = total(grader_failures() - before)
        if out is not None:
            episodes = out.records()
            solved = sum(any(t.reward == 1.0 for t in e.turns) for e in episodes)
            counts = {"episodes": len(episodes), "solved_rate": solved / max(1, len(episodes))}
            self.store.log_metrics(
                f"iter{iteration}/collect", counts | ({"grader_failures": failed} if failed else {})
            )
        return path

    def _collect_missing(
        self, iteration: int, problems: list[MathProblem], done: set[str], out: JsonlAppender | None
    ) -> None:
        """Roll out the problems not in `done`, chunk by chunk, appending each chunk's episodes to `out`
        (the main process's) and logging its success by turn."""
        cfg = self.config.collect
        policy = self.generation_backend(self.policy_path(iteration - 1))
        backends: list[Backend] = [
            OpenAIBackend(t.teacher, self.config.seed, self.replies("teacher")) if t.teacher else policy
            for t in cfg.turns
        ]
        sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        stage = f"collect/iter{iteration}"
        # Chunks are fixed slices of the problem list, so a resumed collection batches what an
        # uninterrupted one did; each chunk's row (logged before its episodes are written) is
        # dropped and logged again when its chunk is redone.
        starts = range(0, len(problems), cfg.chunk_size)
        finished = next(
            (
                i
                for i, s in enumerate(starts)
                if any(p.id not in done for p in problems[s : s + cfg.chunk_size])
            ),
            len(starts),
        )
        self.store.drop_metrics(f"iter{iteration}/collect", after_step=finished)
        for number, start in enumerate(starts, start=1):
            chunk = [p for p in problems[start : start + cfg.chunk_size] if p.id not in done]
            if not chunk:
                continue
            began = time.perf_counter()
            episodes = shared_map(
                partial(self._rollout, backends=backends, sampling=sampling, stage=stage), chunk
            )
            samples = sum(len(t.sample_rewards or [1]) for e in episodes for t in e.turns)
            self.store.log_metrics(
                f"iter{iteration}/collect",
                {
                    **solved_by_turn(episodes, len(cfg.turns)),
                    "charts/samples_per_s": samples / (time.perf_counter() - began),
                },
                step=number,
            )
            if out is not None:
                out.append(*episodes)
                log.info("collected %d / %d problems", len(out.ids), len(problems))

    def _rollout(
        self, problems: list[MathProblem], backends: list[Backend], sampling: SamplingParams, stage: str
    ) -> list[Episode]:
        """One episode per problem; each turn's samples are seeded by the stage, the episode and the turn
        (a redraw's by the redraw's number too), and drawn with `sampling` unless the turn sets its own."""
        envs = [MathEnv(p, self.config.prompt, max_turns=len(backends)) for p in problems]
        episodes = []
        for p, env in zip(problems, envs, strict=True):
            env.reset()
            episodes.append(Episode(id=p.id, task_id=p.id, prompt=env.opening()))
        active = list(range(len(problems)))
        for turn, (spec, backend) in enumerate(zip(self.config.collect.turns, backends, strict=True)):
            seen = [episodes[i].prompt if spec.fresh else episodes[i].conversation() for i in active]
            convs = [[m.model_dump() for m in messages] for messages in seen]
            keys = [f"{stage}/{episodes[i].id}/turn{turn + 1}" for i in active]
            own = {"temperature": spec.temperature, "max_new_tokens": spec.max_new_tokens}
            turn_sampling = sampling.model_copy(update={k: v for k, v in own.items() if v is not None})
            samples = self._draw(backend, convs, spec.n, turn_sampling, keys)
            still = []
            for i, texts in zip(active, samples, strict=True):
                kept = [t for t in texts if not is_degenerate(t)] or [""]
                scored = [envs[i].score(t) for t in kept]
                b = best_sample(kept, [r for r, _ in scored])
                feedback, reward, terminated, truncated, info = envs[i].step(kept[b])
                episodes[i].turns.append(
                    Turn(
                        action=kept[b],
                        reward=reward,
                        answer=info["answer"],
                        feedback=None if terminated or truncated else feedback,
                        sample_rewards=[r for r, _ in scored],
                    )
                )
                if not (terminated or truncated):
                    still.append(i)
            active = still
            if not active:
                break
        return episodes

    def _draw(
        self, backend: Backend, convs: list, n: int, sampling: SamplingParams, keys: list[str]
    ) -> list[list[str]]:
        """n samples per conversation; a conversation whose samples are all degenerate is drawn again (keys
        `<key>/redraw<j>`), up to `collect.redraws` times."""
        samples = backend.generate(convs, n, sampling, keys)
        for redraw in range(1, self.config.collect.redraws + 1):
            again = [j for j, texts in enumerate(samples) if all(is_degenerate(t) for t in texts)]
            if not again:
                break
            fresh = backend.generate(
                [convs[j] for j in again], n, sampling, [f"{keys[j]}/redraw{redraw}" for j in again]
            )
            for j, texts in zip(again, fresh, strict=True):
                samples[j] = texts
        return samples

    def convert(self, iteration: int = 1) -> Path:
        """Trajectories -> weighted SFT examples (rewritten whole, atomically: conversion is cheap)."""
        cfg = self.config.convert
        episodes = read_jsonl(self.store.stage(f"iter{iteration}/collect") / "episodes.jsonl", Episode)
        examples = [
            ex
            for e in episodes
            for ex in episode_examples(
                e, cfg.criterion, cfg.temperature, cfg.dedupe, cfg.only_successful, cfg.dedupe_scope
            )
        ]
        path = self.store.stage(f"iter{iteration}/convert") / "examples.jsonl"
        write_jsonl_atomic(path, examples)
        self.store.log_metrics(f"iter{iteration}/convert", {"examples": len(examples)})
        return path

    def train(self, iteration: int = 1) -> Path:
        """Reward-weighted regression of the previous policy on this iteration's examples."""
        folder = self.store.stage(f"iter{iteration}/train")
        if is_trained(folder):
            return folder / "model"
        examples = read_jsonl(self.store.stage(f"iter{iteration}/convert") / "examples.jsonl", SFTExample)
        model, tokenizer = load_policy(
            self._settings(self.policy_path(iteration - 1)), trainable=True, seed=self.config.seed
        )
        rows = tokenize_sft(examples, tokenizer, self.config.train.max_length)
        stage = f"iter{iteration}/train"
        objective = SFTObjective(tokenizer.pad_token_id)
        return self.fit(stage, model, tokenizer, rows, objective, self.config.train)

    def run(self) -> None:
        """Every stage in order; finished stages are skipped, an interrupted one resumes."""
        self.warn_of_test_questions_in_training()
        if self.config.sft is not None:
            self.sft()
        self.evaluate(0)
        for iteration in range(1, self.config.iterations + 1):
            self.collect(iteration)
            self.convert(iteration)
            self.train(iteration)
            self.evaluate(iteration)

    def warn_of_test_questions_in_training(self) -> None:
        """Warn when test problems also stand among the training or warm-start problems (two files that
        overlap; generated sets never do)."""
        test = {p.question for p in self.config.test_problems.load("test", "test")}
        sets = [self.config.train_problems] + ([self.config.sft.problems] if self.config.sft else [])
        shared = test & {p.question for problems in sets for p in problems.load("train")}
        if shared:
            log.warning("%d of %d test problems are also training problems", len(shared), len(test))

    def evaluate(self, iteration: int = 1) -> dict[str, float]:
        """Sequential and parallel evaluation of the policy after `iteration` rounds (0 = the base);
        writes `evaluate/metrics.json` (with `grader_failures`, the answers math_verify raised on and that
        counted as wrong, when there were any), each problem's outcomes (`outcomes.json`, what paired
        comparisons read) and the episodes. An evaluation already written is
        returned as is. Under several processes each plays its share of the problems (seeded by their
        ids, as in `collect`) and the main process writes them all."""
        folder = self.store.stage(f"iter{iteration}/evaluate" if iteration else "base/evaluate")
        if (folder / "metrics.json").exists() and (folder / "outcomes.json").exists():
            return json.loads((folder / "metrics.json").read_text())
        problems = self.config.test_problems.load("test", "test")
        backend = self.generation_backend(self.policy_path(iteration))
        before = grader_failures()
        played = shared_map(lambda share: self._play_test(share, backend), problems)
        episodes = [episode for episode, _ in played]
        outcomes = rise_outcomes(problems, episodes, [parallel for _, parallel in played])
        metrics = percentages(outcomes)
        failed = total(grader_failures() - before)
        if failed:  # answers math_verify raised on, counted wrong (feedlearn.verifiers.math_answers)
            metrics["grader_failures"] = failed
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", episodes)
            write_json_atomic(folder / "outcomes.json", {"problems": [p.id for p in problems], **outcomes})
            write_json_atomic(folder / "metrics.json", metrics)
            self.store.log_metrics(folder.relative_to(self.store.path).as_posix(), metrics)
        return metrics

    def outcomes(self, iteration: int) -> dict[str, list[bool]]:
        """Each test problem's outcomes after `iteration` rounds (0: the base), as `evaluate` wrote them."""
        folder = self.store.stage(f"iter{iteration}/evaluate" if iteration else "base/evaluate")
        saved = json.loads((folder / "outcomes.json").read_text())
        return {k: v for k, v in saved.items() if k != "problems"}

    def _play_test(
        self, problems: list[MathProblem], backend: Backend
    ) -> list[tuple[Episode, list[tuple[float, str | None]]]]:
        """Each test problem's episode of `evaluate.turns` turns and its scored parallel first turns."""
        cfg = self.config.evaluate
        sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        envs = [MathEnv(p, self.config.prompt, max_turns=cfg.turns, stop_on_success=False) for p in problems]
        episodes = []
        for p, env in zip(problems, envs, strict=True):
            env.reset()
            episodes.append(Episode(id=p.id, task_id=p.id, prompt=env.opening()))
        # Keys without the iteration: every policy of the run draws from the same random numbers on a test
        # problem (common random numbers), so their difference is less noisy than independent draws.
        for turn in range(cfg.turns):
            convs = [windowed(e, cfg.context_window) for e in episodes]
            keys = [f"evaluate/{e.id}/turn{turn + 1}" for e in episodes]
            replies = backend.generate(convs, 1, sampling, keys)
            for env, episode, (text,) in zip(envs, episodes, replies, strict=True):
                feedback, reward, _, _, info = env.step(text)
                episode.turns.append(
                    Turn(action=text, reward=reward, answer=info["answer"], feedback=feedback)
                )
        first = [[m.model_dump() for m in e.prompt] for e in episodes]
        parallel = backend.generate(
            first, cfg.parallel_samples, sampling, [f"evaluate/{e.id}/parallel" for e in episodes]
        )
        scored = [[env.score(t) for t in texts] for env, texts in zip(envs, parallel, strict=True)]
        return list(zip(episodes, scored, strict=True))
