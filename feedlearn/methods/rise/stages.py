"""RISE's stages: `Rise`, one method per stage, reading and writing the run folder."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from functools import partial
from pathlib import Path

from feedlearn.backends.base import Backend, SamplingParams
from feedlearn.backends.openai_compat import OpenAIBackend
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Episode, Message, SFTExample, Turn
from feedlearn.data.store import EVALUATED, is_evaluated
from feedlearn.envs.math_env import MathEnv
from feedlearn.methods.common import Method
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.methods.rise.data import (
    best_sample,
    episode_examples,
    is_degenerate,
    percentages,
    rise_outcomes,
    solved_by_turn,
    windowed,
)
from feedlearn.methods.rise.layout import RiseLayout
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import from_main, process_state, shared_map, total
from feedlearn.seeds import derive_seed
from feedlearn.tasks.math_data import MathProblem
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, is_trained
from feedlearn.verifiers.math_answers import grader_failures

log = logging.getLogger(__name__)


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
    """The stages of one RISE run, reading and writing `run_dir/<run_id>/` (laid out by `RiseLayout`)."""

    config: RiseConfig
    layout: RiseLayout
    layout_class = RiseLayout

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
            model = self.layout.train(iteration) / "model"
            return str(self.layout.finished(model, f"train --iteration {iteration}"))
        if self.config.sft is not None:
            return str(self.layout.finished(self.layout.sft() / "model", "sft"))
        return self.base_model_path()

    # ---- stages ---------------------------------------------------------------------------------------

    def sft(self) -> Path:
        """Warm start: train the base model on worked solutions (plain SFT, weight 1), in chats. Each
        problem of a chat is asked in the prompt's layout; in the dialogue layout a chat opens once with the
        instruction and the worked example (whose answer is trained too) and asks each later problem with
        `next_question`; a share (`sft.retries`) is asked again with the retry message and solved again."""
        sft, folder = self.config.sft, self.layout.sft()
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
        return self.fit(folder, model, tokenizer, rows, SFTObjective(tokenizer.pad_token_id), sft.train)

    def collect(self, iteration: int = 1) -> Path:
        """Roll out the policy (and teachers) on the training problems; resumable by problem id.

        Under several processes (`accelerate launch`, `torchrun`) each rolls out its share of every chunk
        and the main process alone writes them, in the chunk's order; each episode's samples are seeded by
        its id, so the episodes are the ones one process makes (up to float noise in batched decoding).
        """
        state = process_state()
        before = grader_failures()
        path = self.layout.episodes(iteration)
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
                self.layout.name(path.parent), counts | ({"grader_failures": failed} if failed else {})
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
            OpenAIBackend(t.teacher, self.config.seed, self.layout.replies("teacher"))
            if t.teacher
            else policy
            for t in cfg.turns
        ]
        sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
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
        name = self.layout.name(self.layout.collect(iteration))
        self.store.drop_metrics(name, after_step=finished)
        for number, start in enumerate(starts, start=1):
            chunk = [p for p in problems[start : start + cfg.chunk_size] if p.id not in done]
            if not chunk:
                continue
            began = time.perf_counter()
            episodes = shared_map(
                partial(self._rollout, iteration=iteration, backends=backends, sampling=sampling), chunk
            )
            samples = sum(len(t.sample_rewards or [1]) for e in episodes for t in e.turns)
            self.store.log_metrics(
                name,
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
        self, problems: list[MathProblem], backends: list[Backend], sampling: SamplingParams, iteration: int
    ) -> list[Episode]:
        """One episode per problem; each turn's samples are seeded by the iteration, the episode and the turn
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
            keys = [self.layout.collect_key(iteration, episodes[i].id, turn + 1) for i in active]
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
                [convs[j] for j in again],
                n,
                sampling,
                [self.layout.redraw_key(keys[j], redraw) for j in again],
            )
            for j, texts in zip(again, fresh, strict=True):
                samples[j] = texts
        return samples

    def convert(self, iteration: int = 1) -> Path:
        """Trajectories -> weighted SFT examples (rewritten whole, atomically: conversion is cheap)."""
        cfg = self.config.convert
        episodes = read_jsonl(
            self.layout.require(self.layout.episodes(iteration), f"collect --iteration {iteration}"), Episode
        )
        examples = [
            ex
            for e in episodes
            for ex in episode_examples(
                e, cfg.criterion, cfg.temperature, cfg.dedupe, cfg.only_successful, cfg.dedupe_scope
            )
        ]
        path = self.layout.examples(iteration)
        write_jsonl_atomic(path, examples)
        self.store.log_metrics(self.layout.name(path.parent), {"examples": len(examples)})
        return path

    def train(self, iteration: int = 1) -> Path:
        """Reward-weighted regression of the previous policy on this iteration's examples."""
        folder = self.layout.train(iteration)
        if is_trained(folder):
            return folder / "model"
        examples = read_jsonl(
            self.layout.require(self.layout.examples(iteration), f"convert --iteration {iteration}"),
            SFTExample,
        )
        model, tokenizer = load_policy(
            self._settings(self.policy_path(iteration - 1)), trainable=True, seed=self.config.seed
        )
        rows = tokenize_sft(examples, tokenizer, self.config.train.max_length)
        objective = SFTObjective(tokenizer.pad_token_id)
        return self.fit(folder, model, tokenizer, rows, objective, self.config.train)

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
        folder = self.layout.evaluation(iteration)
        if is_evaluated(folder):
            return json.loads((folder / EVALUATED).read_text())
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
            write_json_atomic(folder / EVALUATED, metrics)
            self.store.log_metrics(self.layout.name(folder), metrics)
        return metrics

    def outcomes(self, iteration: int) -> dict[str, list[bool]]:
        """Each test problem's outcomes after `iteration` rounds (0: the base), as `evaluate` wrote them."""
        folder = self.layout.evaluation(iteration)
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
            keys = [self.layout.test_key(e.id, turn + 1) for e in episodes]
            replies = backend.generate(convs, 1, sampling, keys)
            for env, episode, (text,) in zip(envs, episodes, replies, strict=True):
                feedback, reward, _, _, info = env.step(text)
                episode.turns.append(
                    Turn(action=text, reward=reward, answer=info["answer"], feedback=feedback)
                )
        first = [[m.model_dump() for m in e.prompt] for e in episodes]
        parallel = backend.generate(
            first, cfg.parallel_samples, sampling, [self.layout.parallel_key(e.id) for e in episodes]
        )
        scored = [[env.score(t) for t in texts] for env, texts in zip(envs, parallel, strict=True)]
        return list(zip(episodes, scored, strict=True))
