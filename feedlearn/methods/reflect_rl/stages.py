"""Reflect-RL's stages: `ReflectRL`, one method per stage, reading and writing the run folder."""

from __future__ import annotations

import json
import logging
import random
import time
from functools import cached_property, partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from feedlearn.backends.base import Backend, ParsedAsker
from feedlearn.data.checkpoints import Checkpoints
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Message, SFTExample
from feedlearn.data.store import DONE, EVALUATED, is_done, is_evaluated
from feedlearn.envs.autoexplore import ExploreTask
from feedlearn.envs.catalog import (
    ALFWorldEnvSettings,
    AutoExploreEnvSettings,
    EnvFactory,
    Level,
)
from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import ConfigError
from feedlearn.methods.common import Method
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.methods.reflect_rl.layout import ReflectRLLayout
from feedlearn.methods.reflect_rl.objective import ChoiceObjective, Critic, Learner
from feedlearn.methods.reflect_rl.rollout import (
    ACTION,
    ANALYZE,
    LABELS,
    EpisodeRecord,
    Player,
    by_level,
    episode_records,
    level_name,
    policy_prompt,
)
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import process_state, shared_map
from feedlearn.seeds import derive_seed
from feedlearn.tasks.mini_repo import write_mini_repo
from feedlearn.teachers.reflections import propose_tasks, with_llm_reflections
from feedlearn.teachers.scripted import ReflectStep, teacher_episodes
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, is_trained

log = logging.getLogger(__name__)


STAGES = {
    "sft": "train the reflection model and the policy on the teacher's trajectories and reflections",
    "rl": "online RL of the policy (REINFORCE or PPO) in the environment, with reflections",
    "evaluate": "success and cost per level on test episodes: greedy, with and without reflection; sampled",
    "evaluate-remote": "play the same test episodes with a chat model through a backend",
}
"""Each stage, with what it does (shown by `feedlearn reflect-rl --help`)."""


class ReflectRL(Method):
    """The stages of one Reflect-RL run, reading and writing `run_dir/<run_id>/` (laid out by
    `ReflectRLLayout`)."""

    config: ReflectRLConfig
    layout: ReflectRLLayout
    layout_class = ReflectRLLayout

    @cached_property
    def envs(self) -> EnvFactory:
        """The recipe's environments (with the teacher's AutoExplore questions, when asked for)."""
        return EnvFactory(self.env_settings, extra_tasks=self.teacher_tasks())

    @cached_property
    def player(self) -> Player:
        """Plays the recipe's episodes with its label order and sampling."""
        c = self.config
        rl = c.rl
        return Player(
            self.envs, c.shuffle_labels, c.max_reflection_tokens, rl.temperature, rl.reflection_temperature
        )

    @cached_property
    def env_settings(self):
        """The recipe's env settings; an AutoExplore without a root gets the synthetic mini repository."""
        env = self.config.env
        if isinstance(env, AutoExploreEnvSettings) and env.root is None:
            root = write_mini_repo(self.layout.repo(), derive_seed(self.config.seed, "data", "mini-repo"))
            env = env.model_copy(update={"root": str(root)})
        return env

    def teacher_tasks(self) -> list[ExploreTask]:
        """AutoExplore questions written by the teacher model, asked once and saved."""
        t = self.config.teacher
        if not t.tasks:
            return []
        path = self.layout.teacher() / "tasks.jsonl"
        if not path.exists():
            tasks = propose_tasks(self._teacher_asker(), self.env_settings.root, t.tasks, self.config.seed)
            write_jsonl_atomic(path, tasks)
            log.info("teacher wrote %d of %d AutoExplore tasks", len(tasks), t.tasks)
        return read_jsonl(path, ExploreTask)

    def levels(self, levels: list[Level] | None) -> list[Level | None]:
        """The given levels, checked, or the env's own level."""
        for level in levels or []:
            self.envs.check_level(level)
        return list(levels) if levels else [self.envs.default_level]

    def teacher_steps(self) -> list[ReflectStep]:
        """The teacher's trajectories (spread over the curriculum's levels), generated once and saved; with
        llm reflections, the teacher model's reflections replace the templates as they come."""
        t, path = self.config.teacher, self.layout.teacher() / "steps.jsonl"
        if not path.exists():
            levels = self.levels(self.config.rl.curriculum)
            steps = []
            for i, level in enumerate(levels):
                steps += teacher_episodes(
                    self.envs.make("train", level),
                    t.episodes // len(levels) + (i < t.episodes % len(levels)),
                    self.config.seed,
                    p_oracle=t.p_oracle,
                    negatives=t.negatives // len(levels) + (i < t.negatives % len(levels)),
                    templates=not isinstance(self.config.env, ALFWorldEnvSettings),
                    key=self.layout.teacher_key(i),
                )
            write_jsonl_atomic(path, steps)
        steps = read_jsonl(path, ReflectStep)
        if t.reflections == "llm":
            return with_llm_reflections(steps, self.layout.teacher(), self._teacher_asker)
        return steps

    def _teacher_asker(self) -> ParsedAsker:
        return self.config.teacher.asker(
            self.config.generation_batch_size, self.config.seed, self.layout.replies("teacher")
        )

    def base_model_path(self) -> str:
        """The starting model of both players: the configured one, or a tiny model built on the env's text."""
        if self.config.model.path != "tiny":
            return self.config.model.path
        steps = self.teacher_steps()
        texts = [s.state + ANALYZE + s.reflection + "\n".join(s.choices) + ACTION for s in steps[:3000]]
        texts += LABELS
        return str(build_tiny_model(self.config.tiny, texts, self.config.seed))

    # ---- stages ---------------------------------------------------------------------------------------

    def sft(self) -> dict[str, Path]:
        """Train the reflection model and the policy on the teacher's trajectories."""
        steps = self.teacher_steps()
        rng = random.Random(derive_seed(self.config.seed, "order", "sft-labels"))
        out = {}
        if self.config.reflection:
            folder = self.layout.reflector()
            if not is_trained(folder):
                examples = [
                    SFTExample(
                        id=s.id,
                        messages=[
                            Message(role="user", content=s.state + ANALYZE),
                            Message(role="assistant", content=s.reflection),
                        ],
                    )
                    for s in steps
                ]
                model, tok = load_policy(
                    self._settings(self.base_model_path()), trainable=True, seed=self.config.seed
                )
                settings = self.config.reflector_sft or self.config.sft
                rows = tokenize_sft(examples, tok, settings.max_length)
                self.fit(folder, model, tok, rows, SFTObjective(tok.pad_token_id), settings)
            out["reflector"] = folder / "model"
        folder = self.layout.sft_policy()
        if not is_trained(folder):
            model, tok = load_policy(
                self._settings(self.base_model_path()), trainable=True, seed=self.config.seed
            )
            rows = []
            for s in steps:
                if not s.train_policy:
                    continue
                order = self.player.order(len(s.choices), rng)
                obs = TextObservation(s.state, s.choices)
                text = policy_prompt(obs, s.reflection if self.config.reflection else None, order)
                ids = prompt_ids(tok, [{"role": "user", "content": text}])
                if len(ids) <= self.config.sft.max_length:
                    label = order.index(s.choices.index(s.action))
                    rows.append({"input_ids": ids, "n": len(s.choices), "label": label, "length": len(ids)})
            if not rows:
                raise ConfigError(f"no policy example fits in sft.max_length {self.config.sft.max_length}")
            self.fit(folder, model, tok, rows, ChoiceObjective(tok), self.config.sft)
        out["policy"] = folder / "model"
        return out

    def rl(self) -> Path:
        """Online RL of the policy (REINFORCE or PPO), with a replay update on successful episodes.

        Under several processes each plays its share of an iteration's episodes, every process gets them
        all, and each update sums the gradients of every process's share of the batches (data parallel);
        the main process alone writes the episodes, metrics and checkpoints."""
        state = process_state()
        cfg, folder = self.config, self.layout.rl()
        final = folder / "model"
        if is_done(final):
            return final
        self.layout.finished(self.layout.policy("sft"), "sft")
        levels = self.levels(cfg.rl.curriculum)
        checkpoints = Checkpoints(folder / "checkpoints")
        start, learner = self._learner(checkpoints.latest(cfg.rl.iterations))
        reflector = self._reflector()
        episodes_log = (
            JsonlAppender(folder / "episodes.jsonl", EpisodeRecord) if state.is_main_process else None
        )
        self.store.drop_metrics(
            self.layout.name(folder), after_step=start
        )  # the iterations after the checkpoint are done again
        bar = tqdm(
            total=cfg.rl.iterations,
            initial=start,
            desc="rl",
            disable=not (self.progress and state.is_main_process),
        )
        schedule = self.level_schedule(levels)
        for iteration in range(start + 1, cfg.rl.iterations + 1):
            level = schedule[iteration - 1]
            if iteration > 1 and level != schedule[iteration - 2]:
                learner.replay.clear()  # a new level: the reference empties its buffer
            records, metrics = self._rl_iteration(learner, reflector, iteration, level)
            if episodes_log is not None:
                episodes_log.append(*(r for r in records if r.id not in episodes_log))
            self.store.log_metrics(self.layout.name(folder), metrics, step=iteration)
            bar.set_postfix(success=f"{metrics['charts/success']:.2f}", level=level_name(level))
            bar.update()
            if (
                iteration % cfg.rl.checkpoint_every == 0
                and iteration < cfg.rl.iterations
                and state.is_main_process
            ):
                checkpoints.save(iteration, learner.save)
        bar.close()
        if state.is_main_process:
            learner.save(final, optimizer=False)
            write_json_atomic(final / DONE, {"iterations": cfg.rl.iterations})
            checkpoints.remove()
        state.wait_for_everyone()  # the other processes wait until the main one has saved the policy
        return final

    def level_schedule(self, levels: list[Level | None]) -> list[Level | None]:
        """The level of each RL iteration: the levels in turn, each for its share of the iterations
        (`rl.curriculum_share`): iteration t (from 0) plays the last level whose share starts at or
        before t / iterations."""
        n = self.config.rl.iterations
        counts = [self.envs.task_count(level) for level in levels]
        if self.config.rl.curriculum_share == "equal" or None in counts:
            counts = [1] * len(levels)
        before = [sum(counts[:i]) for i in range(len(levels))]
        return [levels[max(i for i, b in enumerate(before) if b * n <= t * sum(counts))] for t in range(n)]

    def _learner(self, checkpoint: tuple[int, Path] | None) -> tuple[int, Learner]:
        """The RL iterations done and the learner to go on with: the checkpoint's, or the SFT policy's."""
        cfg = self.config
        start, source = checkpoint or (0, self.layout.policy("sft"))
        policy, tok = load_policy(self._settings(str(source)), trainable=True, seed=cfg.seed)
        critic = Critic(policy, seed=cfg.seed) if cfg.rl.algorithm == "ppo" else None
        learner = Learner(policy, tok, critic, cfg.rl)
        if checkpoint:
            learner.load(source)
        return start, learner

    def _rl_iteration(
        self, learner: Learner, reflector, iteration: int, level
    ) -> tuple[list[EpisodeRecord], dict]:
        """Play RL iteration `iteration`'s episodes and learn from them: their records and the metrics."""
        # an iteration's episodes, samples and dropout are seeded by its number: a resumed run replays it
        torch.manual_seed(derive_seed(self.config.seed, "order", "rl", iteration))
        began = time.perf_counter()
        play = partial(
            self.player.play,
            learner.policy,
            learner.tokenizer,
            reflector,
            learner.objective,
            split="train",
            level=level,
            greedy=False,
        )
        episodes = shared_map(play, self.train_seeds(iteration))
        replay_rng = random.Random(derive_seed(self.config.seed, "order", "replay", iteration))
        # the diagnostics are the update's on this iteration's episodes (not the replay's)
        diagnostics = learner.learn(episodes, replay_rng)
        played = sum(len(ep.steps) for ep in episodes)
        metrics = {
            "charts/success": sum(ep.success for ep in episodes) / len(episodes),
            "charts/cost": sum(ep.cost for ep in episodes) / len(episodes),
            "charts/episodic_return": sum(sum(ep.rewards) for ep in episodes) / len(episodes),
            "replay": len(learner.replay),
            "charts/SPS": played / (time.perf_counter() - began),  # policy steps, update included
            **diagnostics,
        }
        return [ep.record(f"{iteration}-{i}", iteration, level) for i, ep in enumerate(episodes)], metrics

    def evaluate(self, after: str = "rl") -> dict:
        """Success rate (%) and mean cost of the policy after `after` ("sft" or "rl") on test episodes, per
        level; with reflection, also without it (the policy shown no analysis). Under several processes
        each plays its share of the test episodes and the main process writes them all."""
        folder = self.layout.evaluation(after)
        if is_evaluated(folder):
            return json.loads((folder / EVALUATED).read_text())
        path = self.layout.finished(self.layout.policy(after), after)
        policy, tok = load_policy(self._settings(str(path)))
        objective = ChoiceObjective(tok)
        reflector = self._reflector()

        def play(backend, level, greedy=True):
            rollout = partial(
                self.player.play, policy, tok, backend, objective, split="test", level=level, greedy=greedy
            )
            with torch.no_grad():
                return shared_map(rollout, self.test_seeds())

        played = {lvl: play(reflector, lvl) for lvl in self._test_levels()}
        records = episode_records(played)
        metrics = by_level(played)
        if reflector:
            bare = {lvl: play(None, lvl) for lvl in self._test_levels()}
            records += episode_records(bare, prefix="without-reflection-")
            metrics["without_reflection"] = by_level(bare)
        if self.config.evaluate.sampled:
            sampled = {lvl: play(reflector, lvl, greedy=False) for lvl in self._test_levels()}
            records += episode_records(sampled, prefix="sampled-")
            metrics["sampled"] = by_level(sampled)
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", records)
            write_json_atomic(folder / EVALUATED, metrics)
        self.store.log_metrics(self.layout.name(folder), metrics)
        return metrics

    def evaluate_remote(self) -> dict:
        """The test episodes played by the chat model of `evaluate.remote` (analyze, then `Action: <label>`);
        a turn without a valid label after `max_attempts` asks fails its episode (counted as `invalid`).
        Under several processes each plays its share of the episodes."""
        remote = self.config.evaluate.remote
        if remote is None or not remote.configured:
            raise ConfigError("evaluate-remote needs evaluate.remote with 'openai' or 'local'")
        folder = self.layout.evaluation("remote")
        if is_evaluated(folder):
            return json.loads((folder / EVALUATED).read_text())
        asker = remote.asker(
            self.config.generation_batch_size, self.config.seed, self.layout.replies("remote")
        )
        played = {
            level: shared_map(partial(self.player.play_remote, asker, level=level), self.test_seeds())
            for level in self._test_levels()
        }
        metrics = by_level(played)
        metrics["invalid"] = sum(ep.invalid for eps in played.values() for ep in eps)
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", episode_records(played))
            write_json_atomic(folder / EVALUATED, metrics)
        self.store.log_metrics(self.layout.name(folder), metrics)
        return metrics

    def run(self) -> None:
        """SFT, evaluation after SFT, RL, evaluation after RL (and of the remote model, if one is set)."""
        self.sft()
        self.evaluate("sft")
        self.rl()
        self.evaluate("rl")
        if self.config.evaluate.remote is not None:
            self.evaluate_remote()

    # ---- rollouts -------------------------------------------------------------------------------------

    def _test_levels(self) -> list[Level | None]:
        return self.levels(self.config.evaluate.levels)

    def train_seeds(self, iteration: int) -> list[int]:
        """The seeds of RL iteration `iteration`'s episodes ("train" seeds: no test episode has one)."""
        n = self.config.rl.episodes_per_iteration
        return [derive_seed(self.config.seed, "train", "rl", iteration, i) for i in range(n)]

    def test_seeds(self) -> list[int]:
        """The seeds of the test episodes ("test" seeds: no training or teacher episode has one)."""
        s = self.config.evaluate
        return [derive_seed(s.seed, "test", "episode", i) for i in range(s.episodes)]

    def _reflector(self) -> Backend | None:
        """The trained reflection model behind the generation backend, or None without reflection."""
        if not self.config.reflection:
            return None
        model = self.layout.reflector() / "model"
        return self.generation_backend(str(self.layout.finished(model, "sft")))
