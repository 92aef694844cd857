"""Reflect-RL: a reflection model writes a short analysis of each state; a policy model reads it and
picks one of the numbered actions; the policy is then trained online with REINFORCE
(spec: shared/methods/reflect-rl.md).

Stages:
- `sft`: teacher trajectories (the offline scripted teacher: oracle actions, template reflections and
  recovery steps) train the reflection model (state -> analysis) and the policy (state + analysis +
  choices -> label, a softmax over the offered labels only);
- `rl`: REINFORCE on the undiscounted cost-to-go, one step per batch of episodes, plus a step on
  successful episodes replayed from a small buffer;
- `evaluate`: success rate and mean cost over test episodes, greedy, with and without reflection.
Without `reflection`, the same stages train and run the policy on the state and choices alone.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Message, Record, SFTExample
from feedlearn.envs.scripted_teacher import ReflectStep, teacher_episodes
from feedlearn.envs.taxi import DangerousTaxi, TaxiSettings
from feedlearn.envs.text_env import TextEnv, TextObservation
from feedlearn.errors import FeedlearnError
from feedlearn.losses import choice_logprobs, cost_to_go, reinforce_loss
from feedlearn.methods.common import Method, RecipeConfig, Settings, single_process
from feedlearn.models.chat import prompt_ids
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.training.data import tokenize_sft
from feedlearn.training.trainer import TrainSettings, is_trained, sft_loss, train

log = logging.getLogger(__name__)

ANALYZE = "\n# Analyze:"
ACTION = "\n# Action:"


class TeacherData(Settings):
    """Offline teacher trajectories for SFT."""

    episodes: int = Field(default=300, gt=0, description="Teacher episodes.")
    p_oracle: float = Field(default=0.9, ge=0, le=1, description="Share of oracle actions (else random).")
    negatives: int = Field(default=100, ge=0, description="Recovery examples (a wrong step, then a fix).")


class RLSettings(Settings):
    """Online REINFORCE."""

    iterations: int = Field(default=30, gt=0, description="Policy-gradient iterations.")
    episodes_per_iteration: int = Field(default=16, gt=0, description="Episodes rolled out per iteration.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.001, ge=0, description="Adam weight decay.")
    max_grad_norm: float = Field(default=0.3, gt=0, description="Gradient clipping norm.")
    replay_size: int = Field(default=50, ge=0, description="Successful episodes kept for a replay step.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the policy.")
    checkpoint_every: int = Field(
        default=5, gt=0, description="Iterations between checkpoints (policy, optimizer, replay buffer)."
    )


class EvaluateSettings(Settings):
    """Test episodes."""

    episodes: int = Field(default=100, gt=0, description="Episodes per evaluation.")
    seed: int = Field(default=10_000, description="Seed of the first test episode (train seeds are lower).")


class ReflectRLConfig(RecipeConfig):
    """A Reflect-RL recipe (DangerousTaxi)."""

    method: Literal["reflect-rl"] = "reflect-rl"
    env: TaxiSettings = Field(default_factory=TaxiSettings, description="The DangerousTaxi environment.")
    reflection: bool = Field(default=True, description="Use a reflection model before each action.")
    shuffle_labels: bool = Field(
        default=True,
        description="Show the choices in a new random order every step, so the policy cannot learn a "
        "position instead of an action; off, they keep the environment's order.",
    )
    teacher: TeacherData = Field(default_factory=TeacherData, description="SFT data.")
    sft: TrainSettings = Field(default_factory=TrainSettings, description="SFT of both models.")
    rl: RLSettings = Field(default_factory=RLSettings, description="Online RL of the policy.")
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings, description="Evaluation.")
    max_reflection_tokens: int = Field(default=64, gt=0, description="Longest reflection, in tokens.")
    generation_batch_size: int = Field(default=64, gt=0, description="Sequences per local generate call.")


STAGES = ["sft", "rl", "evaluate"]


def policy_prompt(obs: TextObservation, reflection: str | None, order: list[int]) -> str:
    """The policy's input: the state, the analysis (if any), and the choices in the shown `order`."""
    shown = TextObservation(obs.state, [obs.choices[i] for i in order])
    analysis = f"{ANALYZE}\n{reflection}" if reflection is not None else ""
    return f"{obs.state}{analysis}\n{shown.render_choices()}{ACTION}"


def label_ids(tokenizer, n: int) -> torch.Tensor:
    """The token ids of the labels "1".."n"; each must be one token."""
    ids = []
    for label in range(1, n + 1):
        tokens = tokenizer.encode(str(label), add_special_tokens=False)
        if len(tokens) != 1:
            raise FeedlearnError(f"label '{label}' is {len(tokens)} tokens in this tokenizer; it must be one")
        ids.append(tokens[0])
    return torch.tensor(ids)


class ReflectRL(Method):
    """The stages of one Reflect-RL run, reading and writing `run_dir/<run_id>/`."""

    def env(self) -> TextEnv:
        """A fresh environment."""
        return DangerousTaxi(self.config.env)

    def teacher_steps(self) -> list[ReflectStep]:
        """The scripted teacher's trajectories, generated once and saved."""
        path = self.store.stage("teacher") / "steps.jsonl"
        if not path.exists():
            t = self.config.teacher
            steps = teacher_episodes(
                self.env(), t.episodes, self.config.seed, p_oracle=t.p_oracle, negatives=t.negatives
            )
            write_jsonl_atomic(path, steps)
        return read_jsonl(path, ReflectStep)

    def base_model_path(self) -> str:
        """The starting model of both players: the configured one, or a tiny model built on the env's text."""
        if self.config.model.path != "tiny":
            return self.config.model.path
        steps = self.teacher_steps()
        texts = [s.state + ANALYZE + s.reflection + "\n".join(s.choices) + ACTION for s in steps[:3000]]
        texts += [str(i) for i in range(10)]
        return str(build_tiny_model(self.config.tiny, texts))

    # ---- stages ---------------------------------------------------------------------------------------

    def sft(self) -> dict[str, Path]:
        """Train the reflection model and the policy on the teacher's trajectories."""
        steps, rng = self.teacher_steps(), random.Random(self.config.seed)
        out = {}
        if self.config.reflection:
            folder = self.store.stage("sft/reflector")
            if not is_trained(folder):
                examples = [
                    SFTExample(
                        id=f"{s.episode}-{s.step}",
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
                rows = tokenize_sft(examples, tok, self.config.sft.max_length)
                train(
                    model,
                    tok,
                    rows,
                    sft_loss,
                    self.config.sft,
                    folder,
                    self.store,
                    "sft/reflector",
                    self.progress,
                    seed=self.config.seed,
                )
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
                order = list(range(len(s.choices)))
                if self.config.shuffle_labels:
                    rng.shuffle(order)  # no position bias
                obs = TextObservation(s.state, s.choices)
                text = policy_prompt(obs, s.reflection if self.config.reflection else None, order)
                ids = prompt_ids(tok, [{"role": "user", "content": text}])
                if len(ids) <= self.config.sft.max_length:
                    label = order.index(s.choices.index(s.action))
                    rows.append({"input_ids": ids, "n": len(s.choices), "label": label, "length": len(ids)})
            objective = ChoiceObjective(tok, max(r["n"] for r in rows))
            train(
                model,
                tok,
                rows,
                objective.sft_loss,
                self.config.sft,
                folder,
                self.store,
                "sft/policy",
                self.progress,
                collate_fn=objective.collate,
                seed=self.config.seed,
            )
        out["policy"] = folder / "model"
        return out

    def rl(self) -> Path:
        """REINFORCE on the cost-to-go, with a replay step on successful episodes."""
        single_process("rl")
        cfg, folder = self.config, self.store.stage("rl")
        final = folder / "model"
        if (final / "done.json").exists():
            return final
        self.sft()
        ckpt = folder / "checkpoint"
        start = (
            json.loads((ckpt / "state.json").read_text())["iteration"]
            if (ckpt / "state.json").exists()
            else 0
        )
        source = ckpt if start else self.store.stage("sft/policy") / "model"
        policy, tok = load_policy(self._settings(str(source)), trainable=True, seed=cfg.seed)
        reflector = self._reflector()
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.rl.learning_rate, weight_decay=cfg.rl.weight_decay)
        replay: list[list[dict]] = []
        if start:
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt"))
            replay = json.loads((ckpt / "replay.json").read_text())
        objective = ChoiceObjective(tok, 6)
        episodes_log = JsonlAppender(folder / "episodes.jsonl", EpisodeRecord)
        for iteration in range(start + 1, cfg.rl.iterations + 1):
            # every iteration's sampling is seeded by its number, so a resumed run replays it exactly
            torch.manual_seed(cfg.seed * 1_000_003 + iteration)
            seeds = [cfg.seed * 100_000 + iteration * 1000 + i for i in range(cfg.rl.episodes_per_iteration)]
            reflecting = reflector and LocalBackend(*reflector, cfg.generation_batch_size, seed=iteration)
            episodes = self._rollout(policy, tok, reflecting, objective, seeds, greedy=False)
            steps = [step for ep in episodes for step in ep["steps"]]
            self._update(policy, objective, optimizer, params, steps)
            for ep in episodes:
                if ep["success"]:
                    replay = (replay + [ep["steps"]])[-cfg.rl.replay_size :]
            if replay and cfg.rl.replay_size:
                self._update(policy, objective, optimizer, params, [s for ep in replay for s in ep])
            success = sum(ep["success"] for ep in episodes) / len(episodes)
            cost = sum(ep["cost"] for ep in episodes) / len(episodes)
            records = [
                EpisodeRecord(id=f"{iteration}-{i}", iteration=iteration, **ep["log"])
                for i, ep in enumerate(episodes)
            ]
            episodes_log.append(*(r for r in records if r.id not in episodes_log))
            self.store.log_metrics(
                "rl", {"charts/success": success, "charts/cost": cost, "replay": len(replay)}, step=iteration
            )
            log.info("rl iteration %d: success %.2f, cost %.2f", iteration, success, cost)
            if iteration % cfg.rl.checkpoint_every == 0 and iteration < cfg.rl.iterations:
                _save_checkpoint(folder / "checkpoints", policy, tok, optimizer, replay, iteration)
        policy.save_pretrained(final)
        tok.save_pretrained(final)
        write_json_atomic(final / "done.json", {"iterations": cfg.rl.iterations})
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        return final

    def evaluate(self, stage: str = "rl") -> dict[str, float]:
        """Success rate (%) and mean cost of the policy after `stage` ("sft" or "rl") on test episodes."""
        single_process("evaluate")
        cfg = self.config
        folder = self.store.stage(f"evaluate/{stage}")
        if (folder / "metrics.json").exists():
            return json.loads((folder / "metrics.json").read_text())
        path = self.store.stage("rl") / "model" if stage == "rl" else self.store.stage("sft/policy") / "model"
        policy, tok = load_policy(self._settings(str(path)))
        objective = ChoiceObjective(tok, 6)
        seeds = [cfg.evaluate.seed + i for i in range(cfg.evaluate.episodes)]
        reflector = self._reflector()
        with torch.no_grad():
            episodes = self._rollout(
                policy, tok, reflector and self._backend(*reflector), objective, seeds, greedy=True
            )
        metrics = {
            "success": round(100.0 * sum(ep["success"] for ep in episodes) / len(episodes), 2),
            "cost": round(sum(ep["cost"] for ep in episodes) / len(episodes), 4),
            "episodes": len(episodes),
        }
        write_json_atomic(folder / "metrics.json", metrics)
        self.store.log_metrics(f"evaluate/{stage}", metrics)
        return metrics

    def run(self) -> None:
        """SFT, evaluation after SFT, RL, evaluation after RL."""
        self.sft()
        self.evaluate("sft")
        self.rl()
        self.evaluate("rl")

    # ---- rollouts -------------------------------------------------------------------------------------

    def _reflector(self):
        """(model, tokenizer) of the trained reflection model, or None without reflection."""
        if not self.config.reflection:
            return None
        return load_policy(self._settings(str(self.store.stage("sft/reflector") / "model")))

    def _rollout(self, policy, tok, reflector, objective, seeds: list[int], greedy: bool) -> list[dict]:
        """Play one episode per seed, all at once; each step keeps its prompt ids, label and reward."""
        envs = [self.env() for _ in seeds]
        obs = [env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)]
        rngs = [random.Random(s) for s in seeds]
        episodes = [
            {"steps": [], "success": False, "cost": 0.0, "log": {"seed": s, "actions": [], "reflections": []}}
            for s in seeds
        ]
        active = list(range(len(envs)))
        sampling = SamplingParams(
            temperature=0.0 if greedy else 1.0, max_new_tokens=self.config.max_reflection_tokens
        )
        while active:
            reflections = [None] * len(active)
            if reflector is not None:
                convs = [[{"role": "user", "content": obs[i].state + ANALYZE}] for i in active]
                reflections = [r[0] for r in reflector.generate(convs, 1, sampling)]
            orders = []
            for i in active:
                order = list(range(len(obs[i].choices)))
                if self.config.shuffle_labels:
                    rngs[i].shuffle(order)
                orders.append(order)
            rows = [
                {
                    "input_ids": prompt_ids(tok, [{"role": "user", "content": policy_prompt(obs[i], r, o)}]),
                    "n": len(obs[i].choices),
                }
                for i, r, o in zip(active, reflections, orders, strict=True)
            ]
            with torch.no_grad():
                logps = objective.logprobs(
                    policy, objective.collate([{**r, "label": 0, "length": 0} for r in rows])
                )
            picks = (
                logps.argmax(-1)
                if greedy
                else torch.distributions.Categorical(logits=logps / self.config.rl.temperature).sample()
            )
            still = []
            for i, row, order, pick, reflection in zip(
                active, rows, orders, picks.tolist(), reflections, strict=True
            ):
                action = obs[i].choices[order[pick]]
                obs[i], reward, terminated, truncated, info = envs[i].step(action)
                ep = episodes[i]
                ep["steps"].append({**row, "label": pick, "reward": reward})
                ep["cost"] -= reward
                ep["log"]["actions"].append(action)
                ep["log"]["reflections"].append(reflection or "")
                if terminated or truncated:
                    ep["success"] = bool(info.get("success"))
                else:
                    still.append(i)
            active = still
        for ep in episodes:
            for step, g in zip(ep["steps"], cost_to_go([s["reward"] for s in ep["steps"]]), strict=True):
                step["return"] = g
            ep["log"].update(success=ep["success"], cost=ep["cost"])
        return episodes

    def _update(self, policy, objective, optimizer, params, steps: list[dict]) -> None:
        """One policy-gradient step on `steps` (REINFORCE on the cost-to-go)."""
        policy.train()
        batch = objective.collate([{**s, "length": len(s["input_ids"])} for s in steps])
        logps = objective.logprobs(policy, batch)
        chosen = logps.gather(1, batch["label"][:, None]).squeeze(1)
        loss = reinforce_loss(chosen, torch.tensor([s["return"] for s in steps], dtype=torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, self.config.rl.max_grad_norm)
        optimizer.step()
        policy.eval()


class EpisodeRecord(Record):
    """One RL episode, logged with its actions and reflections."""

    id: str
    iteration: int
    seed: int
    actions: list[str]
    reflections: list[str]
    success: bool
    cost: float


class ChoiceObjective:
    """The policy as a softmax over the offered labels ("shrink head"): log-probs at the last prompt token."""

    def __init__(self, tokenizer, max_choices: int):
        self.pad_id = tokenizer.pad_token_id
        self.labels = label_ids(tokenizer, max_choices)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded prompts, their lengths, choice counts and labels."""
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            attention[i, : len(r["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "n": torch.tensor([r["n"] for r in rows]),
            "label": torch.tensor([r["label"] for r in rows]),
        }

    def logprobs(self, model, batch) -> torch.Tensor:
        """[batch, max_choices] log-probabilities over the labels offered in each row."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last = batch["attention_mask"].sum(-1) - 1
        final = logits[torch.arange(len(last)), last]
        return choice_logprobs(final, self.labels.to(final.device), batch["n"])

    def sft_loss(self, model, batch) -> torch.Tensor:
        """Cross-entropy of the teacher's label over the offered labels."""
        logps = self.logprobs(model, batch)
        return -logps.gather(1, batch["label"][:, None]).mean()


def _save_checkpoint(folder: Path, policy, tok, optimizer, replay: list, iteration: int) -> None:
    """Write the RL state to `iter-N` (its state.json last), then drop older checkpoints: a crash mid-save
    leaves the older one whole."""
    target = folder / f"iter-{iteration}"
    policy.save_pretrained(target)
    tok.save_pretrained(target)
    torch.save(optimizer.state_dict(), target / "optimizer.pt")
    write_json_atomic(target / "replay.json", replay)
    write_json_atomic(target / "state.json", {"iteration": iteration})
    for old in folder.glob("iter-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete RL checkpoint (one with its state.json), if any."""
    done = [p for p in folder.glob("iter-*") if (p / "state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None
