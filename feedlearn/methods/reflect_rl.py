"""Reflect-RL: a reflection model writes a short analysis of each state; a policy model reads it and
picks one of the labelled actions; the policy is then trained online with RL
(spec: shared/methods/reflect-rl.md). Environments (`env.name`): DangerousTaxi, AutoExplore, ALFWorld,
TextWorld, any gymnasium text environment.

Stages:
- `sft`: teacher trajectories (oracle actions, random steps and recovery steps, with template reflections
  or reflections written by a teacher model) train the reflection model (state -> analysis) and the
  policy (state + analysis + choices -> label, a softmax over the offered labels only);
- `rl`: REINFORCE on the undiscounted cost-to-go (or PPO with a critic head), one update per batch of
  episodes, plus one on successful episodes drawn from a small replay buffer; an optional curriculum
  (the buffer is emptied at each new level);
- `evaluate`: success rate and mean cost per level over test episodes, greedy, with and without
  reflection, and sampled as the reference evaluates;
- `evaluate-remote`: the same test episodes played by a chat model through a backend, for comparison.
Without `reflection`, the same stages train and run the policy on the state and choices alone.
"""

from __future__ import annotations

import json
import logging
import random
import time
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from feedlearn.backends.base import Backend, ParsedAsker
from feedlearn.data.checkpoints import Checkpoints
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Message, SFTExample
from feedlearn.envs.autoexplore import ExploreTask
from feedlearn.envs.catalog import (
    ALFWorldEnvSettings,
    AutoExploreEnvSettings,
    EnvFactory,
    EnvSettings,
    Level,
    TaxiEnvSettings,
)
from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import ConfigError
from feedlearn.methods.common import AskSettings, GeneratingRecipe, Method, Settings
from feedlearn.methods.reflect_rl_objective import ChoiceObjective, Critic, Learner
from feedlearn.methods.reflect_rl_rollout import (
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
from feedlearn.training.trainer import SFTObjective, TrainSettings, is_trained

log = logging.getLogger(__name__)


class TeacherData(AskSettings):
    """Teacher trajectories for SFT: the environment's oracle plays; reflections come from templates or
    from a teacher model (`openai` or `local`)."""

    episodes: int = Field(default=300, gt=0, description="Teacher episodes (split evenly over the levels).")
    p_oracle: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of oracle actions (else random safe ones); None: the environment's default "
        "(Taxi 0.9, AutoExplore 1.0, ALFWorld 0.7).",
    )
    negatives: int = Field(default=100, ge=0, description="Recovery examples (a wrong step, then a fix).")
    reflections: Literal["template", "llm"] = Field(
        default="template",
        description="template: the scripted teacher's sentences (Taxi, AutoExplore); llm: the teacher "
        "model writes each reflection, told the best move (a template stands in where it gives none).",
    )
    tasks: int = Field(
        default=0, ge=0, description="AutoExplore: extra questions the teacher model writes about files."
    )
    temperature: float = Field(default=0.7, ge=0, description="Teacher sampling temperature.")
    max_new_tokens: int = Field(default=160, gt=0, description="Longest teacher reply, in tokens.")

    @model_validator(mode="after")
    def _model_when_needed(self):
        if (self.reflections == "llm" or self.tasks) and not self.configured:
            raise ValueError(
                "llm reflections and teacher tasks need a teacher model: set 'openai' or 'local'"
            )
        return self


class RLSettings(Settings):
    """Online RL of the policy."""

    algorithm: Literal["reinforce", "ppo"] = Field(
        default="reinforce",
        description="reinforce: REINFORCE on the cost-to-go, no critic; ppo: clipped PPO with a linear "
        "critic head on the policy's last hidden state (detached, so the critic does not train the policy).",
    )
    iterations: int = Field(default=30, gt=0, description="Policy-gradient iterations.")
    episodes_per_iteration: int = Field(default=16, gt=0, description="Episodes rolled out per iteration.")
    curriculum: list[Level] | None = Field(
        default=None,
        description="Levels trained in turn (Taxi: pickup, dropoff, full; AutoExplore: target depths, or "
        "lists of depths trained as one level, [[0, 1], 2] being the reference's merge_first_two); None: "
        "the env's own level.",
    )
    curriculum_share: Literal["tasks", "equal"] = Field(
        default="tasks",
        description="Each level's share of the iterations. tasks: in proportion to its training tasks, as "
        "the reference shares them (AutoExplore; levels without tasks, Taxi's, share equally); equal: the "
        "same share for every level.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.001, ge=0, description="Adam weight decay.")
    max_grad_norm: float = Field(default=0.3, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(
        default=64,
        gt=0,
        description="Steps per forward pass in an update; gradients accumulate over the rest.",
    )
    replay_size: int = Field(
        default=50,
        ge=0,
        description="Successful episodes the replay buffer keeps (the newest); it is emptied when the "
        "curriculum moves to the next level, as in the reference. 0: no replay.",
    )
    replay_batch: int | None = Field(
        default=None,
        gt=0,
        description="Episodes drawn from the buffer, with replacement, for each iteration's replay update, "
        "as the reference draws them; None: as many as `episodes_per_iteration`.",
    )
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the policy.")
    reflection_temperature: float = Field(
        default=1.0,
        ge=0,
        description="Sampling temperature of the reflection model in RL rollouts (0: greedy, as in "
        "evaluation); a small reflector's sampled analyses can be noise that misleads the policy.",
    )
    ppo_clip: float = Field(default=0.1, gt=0, description="PPO: the ratio's clip range.")
    ppo_epochs: int = Field(default=3, gt=0, description="PPO: update passes over each batch.")
    value_coef: float = Field(default=0.5, ge=0, description="PPO: weight of the critic's squared error.")
    checkpoint_every: int = Field(
        default=5, gt=0, description="Iterations between checkpoints (policy, critic, optimizer, replay)."
    )


class RemoteAgentSettings(AskSettings):
    """A chat model that plays the test episodes through a backend (prompted to analyze, then choose)."""

    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature (0: greedy).")
    max_attempts: int = Field(
        default=2, ge=1, description="Asks per turn; a turn without a valid choice fails the episode."
    )


class ReflectRLEvaluateSettings(Settings):
    """Test episodes."""

    episodes: int = Field(default=100, gt=0, description="Episodes per level.")
    seed: int = Field(
        default=0,
        description="Picks the test episodes; their seeds are of purpose 'test' (feedlearn.seeds), which no "
        "training or teacher episode has.",
    )
    levels: list[Level] | None = Field(
        default=None, description="Levels evaluated, each reported apart; None: the env's own level."
    )
    sampled: bool = Field(
        default=True,
        description="Also play the test episodes with sampled actions and reflections (the temperatures "
        "of RL rollouts, `rl.temperature` and `rl.reflection_temperature`), as the reference evaluates; "
        "reported under `sampled` beside the greedy numbers.",
    )
    remote: RemoteAgentSettings | None = Field(
        default=None, description="A chat model to evaluate on the same episodes (stage evaluate-remote)."
    )


class ReflectRLConfig(GeneratingRecipe):
    """A Reflect-RL recipe."""

    method: Literal["reflect-rl"] = "reflect-rl"
    env: EnvSettings = Field(
        default_factory=lambda: TaxiEnvSettings(name="taxi"),
        description="The environment: {name: taxi | autoexplore | alfworld | textworld | gymnasium, ...its "
        "settings}.",
    )
    reflection: bool = Field(default=True, description="Use a reflection model before each action.")
    shuffle_labels: bool = Field(
        default=True,
        description="Show the choices in a new random order every step, so the policy cannot learn a "
        "position instead of an action; off, they keep the environment's order.",
    )
    teacher: TeacherData = Field(default_factory=TeacherData, description="SFT data.")
    sft: TrainSettings = Field(
        default_factory=TrainSettings, description="SFT of the policy (and reflector)."
    )
    reflector_sft: TrainSettings | None = Field(
        default=None,
        description="SFT of the reflection model when it differs from `sft` (None: `sft`). Its decisive "
        "words are a few tokens of a long analysis, so it may need more epochs than the policy.",
    )
    rl: RLSettings = Field(default_factory=RLSettings, description="Online RL of the policy.")
    evaluate: ReflectRLEvaluateSettings = Field(
        default_factory=ReflectRLEvaluateSettings, description="Evaluation."
    )
    max_reflection_tokens: int = Field(default=64, gt=0, description="Longest reflection, in tokens.")

    @model_validator(mode="after")
    def _env_needs(self):
        if (
            isinstance(self.env, ALFWorldEnvSettings)
            and self.teacher.reflections != "llm"
            and self.reflection
        ):
            raise ValueError("ALFWorld has no template reflections: set teacher.reflections: llm")
        if self.teacher.tasks and not isinstance(self.env, AutoExploreEnvSettings):
            raise ValueError("teacher.tasks writes AutoExplore questions; this env is not AutoExplore")
        return self


STAGES = {
    "sft": "train the reflection model and the policy on the teacher's trajectories and reflections",
    "rl": "online RL of the policy (REINFORCE or PPO) in the environment, with reflections",
    "evaluate": "success and cost per level on test episodes: greedy, with and without reflection; sampled",
    "evaluate-remote": "play the same test episodes with a chat model through a backend",
}
"""Each stage, with what it does (shown by `feedlearn reflect-rl --help`)."""


class ReflectRL(Method):
    """The stages of one Reflect-RL run, reading and writing `run_dir/<run_id>/`."""

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
            root = write_mini_repo(
                self.store.stage("repo"), derive_seed(self.config.seed, "data", "mini-repo")
            )
            env = env.model_copy(update={"root": str(root)})
        return env

    def teacher_tasks(self) -> list[ExploreTask]:
        """AutoExplore questions written by the teacher model, asked once and saved."""
        t = self.config.teacher
        if not t.tasks:
            return []
        path = self.store.stage("teacher") / "tasks.jsonl"
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
        t, stage = self.config.teacher, self.store.stage("teacher")
        path = stage / "steps.jsonl"
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
                    key=f"level{i}",
                )
            write_jsonl_atomic(path, steps)
        steps = read_jsonl(path, ReflectStep)
        if t.reflections == "llm":
            return with_llm_reflections(steps, self.store.stage("teacher"), self._teacher_asker)
        return steps

    def _teacher_asker(self) -> ParsedAsker:
        return self.config.teacher.asker(
            self.config.generation_batch_size, self.config.seed, self.replies("teacher")
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
            folder = self.store.stage("sft/reflector")
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
                self.fit("sft/reflector", model, tok, rows, SFTObjective(tok.pad_token_id), settings)
            out["reflector"] = folder / "model"
        folder = self.store.stage("sft/policy")
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
            self.fit("sft/policy", model, tok, rows, ChoiceObjective(tok), self.config.sft)
        out["policy"] = folder / "model"
        return out

    def rl(self) -> Path:
        """Online RL of the policy (REINFORCE or PPO), with a replay update on successful episodes.

        Under several processes each plays its share of an iteration's episodes, every process gets them
        all, and each update sums the gradients of every process's share of the batches (data parallel);
        the main process alone writes the episodes, metrics and checkpoints."""
        state = process_state()
        cfg, folder = self.config, self.store.stage("rl")
        final = folder / "model"
        if (final / "done.json").exists():
            return final
        self.sft()
        levels = self.levels(cfg.rl.curriculum)
        checkpoints = Checkpoints(folder / "checkpoints")
        start, learner = self._learner(checkpoints.latest(cfg.rl.iterations))
        reflector = self._reflector()
        episodes_log = (
            JsonlAppender(folder / "episodes.jsonl", EpisodeRecord) if state.is_main_process else None
        )
        self.store.drop_metrics("rl", after_step=start)  # the iterations after the checkpoint are done again
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
            self.store.log_metrics("rl", metrics, step=iteration)
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
            write_json_atomic(final / "done.json", {"iterations": cfg.rl.iterations})
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
        start, source = checkpoint or (0, self.store.stage("sft/policy") / "model")
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

    def evaluate(self, stage: str = "rl") -> dict:
        """Success rate (%) and mean cost of the policy after `stage` ("sft" or "rl") on test episodes, per
        level; with reflection, also without it (the policy shown no analysis). Under several processes
        each plays its share of the test episodes and the main process writes them all."""
        folder = self.store.stage(f"evaluate/{stage}")
        if (folder / "metrics.json").exists():
            return json.loads((folder / "metrics.json").read_text())
        path = self.store.stage("rl") / "model" if stage == "rl" else self.store.stage("sft/policy") / "model"
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
            write_json_atomic(folder / "metrics.json", metrics)
        self.store.log_metrics(f"evaluate/{stage}", metrics)
        return metrics

    def evaluate_remote(self) -> dict:
        """The test episodes played by the chat model of `evaluate.remote` (analyze, then `Action: <label>`);
        a turn without a valid label after `max_attempts` asks fails its episode (counted as `invalid`).
        Under several processes each plays its share of the episodes."""
        remote = self.config.evaluate.remote
        if remote is None or not remote.configured:
            raise ConfigError("evaluate-remote needs evaluate.remote with 'openai' or 'local'")
        folder = self.store.stage("evaluate/remote")
        if (folder / "metrics.json").exists():
            return json.loads((folder / "metrics.json").read_text())
        asker = remote.asker(self.config.generation_batch_size, self.config.seed, self.replies("remote"))
        played = {
            level: shared_map(partial(self.player.play_remote, asker, level=level), self.test_seeds())
            for level in self._test_levels()
        }
        metrics = by_level(played)
        metrics["invalid"] = sum(ep.invalid for eps in played.values() for ep in eps)
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", episode_records(played))
            write_json_atomic(folder / "metrics.json", metrics)
        self.store.log_metrics("evaluate/remote", metrics)
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
        return self.generation_backend(str(self.store.stage("sft/reflector") / "model"))
