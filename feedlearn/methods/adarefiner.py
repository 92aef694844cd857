"""AdaRefiner: an adapter LM, refined by the agent's feedback, writes the analysis that a decision model
turns into sub-goals for an RL agent in Crafter (spec: shared/methods/adarefiner.md).

Stages, for stage i = 1..N:
- `train`: the agent plays (PPO learns; or the scripted player acts, to measure the mechanism), querying
  every `query_interval` steps (`adarefiner_loop`); every query is recorded;
- `sft`: the adapter is fine-tuned on the queries of stages 1..i but the newest `refine.holdout` share
  (held out, their loss logged; completion-only: the reply is trained, the prompt is context), from the
  starting adapter each time (`refine.start: initial`) or from stage i-1's refined adapter
  (`previous`, the reference's; a LoRA adapter is merged into its base and a fresh one trained on top):
  `self` on every record (the reference code's self-training), `feedback` on the records whose
  instruction the agent then followed, weighted by that comprehension score (feedlearn's own,
  reward-weighted variant), `frozen` not at all (a baseline);
- `evaluate`: the saved agent and adapter on test worlds, querying every `evaluate.query_interval` steps:
  Crafter score, success per achievement, episode reward, mean comprehension score.
Stage i+1 starts from the agent of stage i and the adapter of `sft` i. `warmup` (optional; the offline
recipes') trains the starting adapter on template analyses of states the scripted player meets: a tiny
adapter from scratch, a pretrained one fine-tuned (a fresh LoRA where the recipe has one).
"""

from __future__ import annotations

import json
import logging
import time
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from feedlearn.backends.base import SamplingParams
from feedlearn.data.checkpoints import Checkpoints
from feedlearn.data.jsonl import JsonlAppender, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Message, SFTExample
from feedlearn.envs.crafter_env import make_vec_env
from feedlearn.envs.crafter_player import SCRIPTED, SKILLED, SkilledPlayer
from feedlearn.errors import ConfigError
from feedlearn.feedback.comprehension import ActionText, ConceptEmbedder, SentenceTransformerEmbedder
from feedlearn.feedback.subgoals import SUBGOALS
from feedlearn.losses import token_mean_nll
from feedlearn.methods.adarefiner_agent import (
    Network,
    ReinitializedEncoder,
    build_ppo,
    load_ppo,
    ppo_metrics,
)
from feedlearn.methods.adarefiner_loop import (
    ADAPTER_SYSTEM,
    DECISION_SYSTEM,
    CrafterEpisode,
    Guide,
    GuidedVecEnv,
    LMAnalyst,
    ModelDecider,
    NamedDecider,
    QueryClock,
    QueryRecord,
    TemplateAnalyst,
)
from feedlearn.methods.adarefiner_play import (
    appender,
    load_play,
    play_scripted,
    save_play,
    seed_all,
    stage_summary,
)
from feedlearn.methods.common import AskSettings, GeneratingRecipe, Method, Settings
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import from_main, process_state, shared_map
from feedlearn.seeds import derive_seed
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, TrainSettings, is_trained

log = logging.getLogger(__name__)
STAGES = {
    "warmup": "warm the adapter LM up on template analyses (offline recipes)",
    "train": "train the agent (PPO) with the adapter's guidance, recording every query",
    "sft": "refine the adapter on the recorded queries (by `refine.mode`)",
    "evaluate": "Crafter score and success per achievement of the saved agent and adapter",
}
"""Each stage, with what it does (shown by `feedlearn adarefiner --help`)."""


class CrafterSettings(Settings):
    """The Crafter worlds."""

    area: tuple[int, int] = Field(default=(64, 64), description="World size in cells (resets cost ~area).")
    view: tuple[int, int] = Field(default=(9, 9), description="The image's view in cells (crafter's).")
    size: tuple[int, int] = Field(default=(64, 64), description="The image's size in pixels.")
    length: int = Field(default=10000, gt=0, description="Steps after which an episode is truncated.")
    observation: Literal["image", "symbolic"] = Field(
        default="image",
        description="image: crafter's RGB frame; symbolic: one-hot 9x7 local view + inventory (no render).",
    )


class AgentSettings(Settings):
    """The acting agent: PPO (SB3's names and the spec's defaults), or the scripted player."""

    kind: Literal["ppo", "scripted"] = Field(
        default="ppo", description="ppo: learns; scripted: a skill-limited scripted player (no learning)."
    )
    envs: int = Field(default=1, gt=0, description="Worlds stepped in parallel (queries are batched).")
    network: Network = Field(default="reference", description="reference (GPU), cnn (image), mlp (symbolic).")
    features: int = Field(default=512, gt=0, description="Width of the features the heads read.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Adam learning rate.")
    n_steps: int = Field(
        default=4096, gt=0, description="Steps per world per PPO update (and per iteration)."
    )
    batch_size: int = Field(default=128, gt=1, description="PPO minibatch size.")
    n_epochs: int = Field(default=4, gt=0, description="PPO epochs per update.")
    gamma: float = Field(default=0.95, gt=0, le=1, description="Discount.")
    gae_lambda: float = Field(default=0.65, gt=0, le=1, description="GAE lambda.")
    clip_range: float = Field(default=0.2, gt=0, description="PPO clip range.")
    ent_coef: float = Field(default=0.0, ge=0, description="Entropy bonus coefficient.")
    vf_coef: float = Field(default=0.5, ge=0, description="Value loss coefficient.")
    max_grad_norm: float = Field(default=0.5, gt=0, description="Gradient clipping norm.")
    device: str = Field(
        default="auto", description="Torch device of the agent (auto: a GPU when there is one)."
    )
    skills: list[str] = Field(
        default_factory=lambda: list(SKILLED),
        description="scripted: the sub-goals the player carries out well; the rest it does at random.",
    )
    patience: int = Field(default=30, gt=0, description="scripted: steps on one sub-goal before the next.")
    instruction: Literal["embedder", "reinitialized"] = Field(
        default="embedder",
        description="What embeds the instruction the agent reads. embedder: the comprehension score's "
        "embedder (unit-norm rows); reinitialized: a copy of the sentence-transformers `embedder.model` "
        "whose linear layers are orthogonally re-initialized (gain sqrt 2, biases 0), its raw output: the "
        "reference's, whose policy holds its own copy of the embedder inside the features extractor, "
        "where PPO's orthogonal initialization overwrites it.",
    )

    def ppo(self) -> dict:
        """PPO's keyword arguments."""
        names = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range")
        names += ("ent_coef", "vf_coef", "max_grad_norm")
        return {name: getattr(self, name) for name in names}

    @model_validator(mode="after")
    def _known_skills(self):
        unknown = sorted(set(self.skills) - set(SCRIPTED))
        if unknown:
            raise ValueError(f"unknown skills {unknown}: the scripted player knows {sorted(SCRIPTED)}")
        return self


class AdapterSettings(Settings):
    """Generation by the adapter LM (the recipe's `model`)."""

    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling mass (the reference samples with Llama-2-chat's generation config: "
        "temperature 0.6, top_p 0.9).",
    )
    max_new_tokens: int = Field(default=100, gt=0, description="Longest analysis, in tokens.")
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Scripted-play steps (over all worlds) whose template analyses warm the adapter up "
        "before stage 1 (a tiny one trained from scratch, a pretrained one fine-tuned); 0: start from the "
        "model as it is (the paper's).",
    )
    warmup: TrainSettings = Field(
        default_factory=lambda: TrainSettings(learning_rate=1e-3, batch_size=16, grad_accum=1, epochs=2),
        description="Training of the warm-up.",
    )


class DecisionSettings(AskSettings):
    """The decision model: `openai` (the paper: GPT-4) or `local`; neither: the offline decision maker
    (the first three sub-goals the analysis names, else a rule)."""

    max_new_tokens: int = Field(default=64, gt=0, description="Longest reply, in tokens.")
    instruction: Literal["subgoals", "reply"] = Field(
        default="subgoals",
        description="subgoals: the instruction is the allowed sub-goals the reply names (garbage asked "
        "again, then the rule); reply: the reply itself, whatever it says, never asked again (the "
        "reference's: the agent embeds it, the score compares with it, the next prompts show it).",
    )


class EmbedderSettings(Settings):
    """The sentence embedder of the comprehension score and the instruction."""

    kind: Literal["concepts", "sentence-transformers"] = Field(
        default="concepts",
        description="concepts: the offline bag of Crafter concepts; sentence-transformers: `model`.",
    )
    model: str = Field(
        default="sentence-transformers/paraphrase-MiniLM-L6-v2",
        description="sentence-transformers: a hub id or local folder (the paper's model by default).",
    )
    action_text: ActionText = Field(
        default="effects",
        description="names: the actions' names (the paper); effects: each `do` with what it was done to.",
    )


class RefineSettings(Settings):
    """How the adapter is refined after each stage."""

    mode: Literal["self", "feedback", "frozen"] = Field(
        default="feedback",
        description="self: every record (the reference's self-training); feedback: records weighted by the "
        "comprehension score of the instruction that followed (feedlearn's); frozen: never refined.",
    )
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="feedback: records scored below this are not trained on."
    )
    start: Literal["initial", "previous"] = Field(
        default="initial",
        description="What stage i's SFT starts from. initial: the starting adapter, every stage (a refit "
        "on all the records so far); previous: stage i-1's refined adapter (the reference's), a LoRA "
        "adapter merged into its base first (saved in `stage<i-1>/sft/merged`, what stage i also "
        "generates with) and a fresh LoRA trained on top.",
    )
    holdout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of the records, the newest, held out of each SFT; their loss is logged as "
        "eval/loss every 5 steps (the reference: 0.1, for logging only).",
    )
    sft: TrainSettings = Field(
        default_factory=lambda: TrainSettings(learning_rate=2e-4, max_grad_norm=0.3, grad_accum=16),
        description="The adapter's SFT (the paper: 1 epoch, lr 2e-4, grad-norm clip 0.3).",
    )


class AdaRefinerEvaluateSettings(Settings):
    """Evaluation on test worlds."""

    episodes: int = Field(default=10, gt=0, description="Test episodes (spread over agent.envs worlds).")
    query_interval: int = Field(default=10, gt=0, description="Steps between queries at test time.")
    seed: int = Field(default=0, description="Seeds the test worlds and the agent's sampled actions.")


class AdaRefinerConfig(GeneratingRecipe):
    """An AdaRefiner recipe. `model` is the adapter LM (paper: Llama-2-7b-chat with LoRA r 64, alpha 16)."""

    method: Literal["adarefiner"]
    env: CrafterSettings = Field(default_factory=CrafterSettings, description="The Crafter worlds.")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The acting agent.")
    guidance: Literal["adapter", "decision", "none"] = Field(
        default="adapter",
        description="adapter: AdaRefiner; decision: the decision model without an adapter's analysis; "
        "none: the agent alone (its instruction input stays zero).",
    )
    adapter: AdapterSettings = Field(default_factory=AdapterSettings, description="The adapter's generation.")
    decision: DecisionSettings = Field(default_factory=DecisionSettings, description="The decision model.")
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings, description="The sentence embedder.")
    refine: RefineSettings = Field(default_factory=RefineSettings, description="Refinement of the adapter.")
    evaluate: AdaRefinerEvaluateSettings = Field(
        default_factory=AdaRefinerEvaluateSettings, description="Evaluation."
    )
    stages: int = Field(default=5, gt=0, description="Stages of train -> sft.")
    steps_per_stage: int = Field(
        default=1_000_000,
        gt=0,
        description="Environment steps per stage, over all worlds (rounded up to whole PPO iterations).",
    )
    query_interval: int = Field(default=100, gt=0, description="Steps between queries in training.")
    query_clock: QueryClock = Field(
        default="episode",
        description="episode: every episode starts afresh (a query at its first step; no instruction, "
        "action history or score carried over); world: the instruction in force, its action history, its "
        "score and the query clock run on across a world's episodes (the reference's, which restarts them "
        "at every PPO rollout instead: a defect not reproduced).",
    )
    checkpoint_every: int = Field(default=1, gt=0, description="PPO iterations between checkpoints.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.agent.kind == "ppo":
            wanted = "symbolic" if self.agent.network == "mlp" else "image"
            if self.env.observation != wanted:
                raise ValueError(f"agent.network {self.agent.network} needs env.observation: {wanted}")
        if self.agent.instruction == "reinitialized" and self.embedder.kind != "sentence-transformers":
            raise ValueError("agent.instruction reinitialized needs embedder.kind: sentence-transformers")
        return self


EVAL_EVERY = 5
"""Optimizer steps between two losses on the held-out records (the reference's eval_steps)."""


class HeldOutSFT(SFTObjective):
    """SFT that logs eval/loss at every `EVAL_EVERY`-th step (counted from this process's start of the
    training): the mean over the held-out `rows` of each one's token-mean NLL on its completion, under the
    model as trained so far (dropout off, no random draws: training is unchanged)."""

    def __init__(self, model, rows: list[dict], pad_id: int, batch_size: int):
        super().__init__(pad_id)
        self.model, self.rows, self.batch_size, self.steps = model, rows, batch_size, 0

    def step_metrics(self) -> dict[str, float]:
        """eval/loss, every `EVAL_EVERY` steps."""
        self.steps += 1
        if self.steps % EVAL_EVERY:
            return {}
        model, rows = self.model, self.rows
        training, device = model.training, next(model.parameters()).device
        model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(rows), self.batch_size):
                batch = {k: v.to(device) for k, v in self.collate(rows[i : i + self.batch_size]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                total += float(token_mean_nll(logits.float(), batch["labels"]).sum())
        model.train(training)
        return {"eval/loss": total / len(rows)}


class AdaRefiner(Method):
    """The stages of one AdaRefiner run, reading and writing `run_dir/<run_id>/`."""

    config: AdaRefinerConfig

    @cached_property
    def embedder(self):
        e = self.config.embedder
        return ConceptEmbedder() if e.kind == "concepts" else SentenceTransformerEmbedder(e.model)

    @cached_property
    def encoder(self):
        """What embeds the agent's instruction apart from the embedder (None: the embedder does)."""
        if self.config.agent.instruction == "embedder":
            return None
        return ReinitializedEncoder(
            self.config.embedder.model, derive_seed(self.config.seed, "init", "encoder")
        )

    @property
    def iterations(self) -> int:
        """PPO iterations (of `n_steps` steps in each world) per stage."""
        per_iteration = self.config.agent.n_steps * self.config.agent.envs
        return -(-self.config.steps_per_stage // per_iteration)

    def _check_stage(self, stage: int) -> None:
        if not 1 <= stage <= self.config.stages:
            raise ConfigError(f"stage {stage} is not one of this recipe's stages 1..{self.config.stages}")

    # ---- the adapter ----------------------------------------------------------------------------------

    def initial_adapter(self) -> str:
        """The starting adapter: the recipe's model (a tiny one built for it), warmed up when the recipe
        asks."""
        if self.config.adapter.warmup_steps:
            return str(self.warmup())
        if self.config.model.path == "tiny":
            return str(self._tiny_base([]))
        return self.config.model.path

    def _tiny_base(self, texts: list[str]) -> Path:
        """A tiny model whose tokenizer is trained on the prompts' vocabulary and the given texts."""
        corpus = [ADAPTER_SYSTEM, DECISION_SYSTEM, *SUBGOALS, *texts]
        return build_tiny_model(self.config.tiny, corpus, self.config.seed)

    @property
    def _merges(self) -> bool:
        """Whether each refined LoRA adapter is merged into its base (`refine.start: previous`)."""
        return self.config.refine.start == "previous" and self.config.model.lora is not None

    def adapter_path(self, stage: int) -> str:
        """The adapter used after stage `stage`: the starting one (stage 0, or frozen), else its `sft`'s
        (merged into its base, where `_merges`)."""
        if stage == 0 or self.config.refine.mode == "frozen":
            return self.initial_adapter()
        return str(self.store.stage(f"stage{stage}/sft") / ("merged" if self._merges else "model"))

    def _merge(self, stage: int) -> None:
        """Stage `stage`'s LoRA adapter merged into its base (unquantized, in `model.dtype`) and saved in
        `stage<stage>/sft/merged` (its done.json last), by the main process; the reference's sft.py does
        this at the end of every stage."""
        folder = self.store.stage(f"stage{stage}/sft")
        if not self._merges or (folder / "merged" / "done.json").exists():
            return

        def merge() -> None:
            settings = self._settings(str(folder / "model")).model_copy(update={"quantization": "none"})
            model, tok = load_policy(settings)
            model.merge_and_unload().save_pretrained(folder / "merged")
            tok.save_pretrained(folder / "merged")
            write_json_atomic(folder / "merged" / "done.json", {"adapter": str(folder / "model")})

        from_main(merge)

    def warmup(self) -> Path:
        """Warm the adapter up on template analyses of the states the scripted player meets."""
        folder = self.store.stage("warmup")
        if is_trained(folder):
            return folder / "model"
        records = JsonlAppender(folder / "queries.jsonl", QueryRecord)
        if not records.ids:
            collected = []
            guide = self._guide(TemplateAnalyst(self.config.seed), "warmup", self.config.query_interval)
            guide.on_query = collected.append
            seeds = [
                derive_seed(self.config.seed, "teacher", "crafter", i) for i in range(self.config.agent.envs)
            ]
            venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
            players = self._players("warmup")
            steps = -(-self.config.adapter.warmup_steps // self.config.agent.envs)
            play_scripted(venv, players, steps, reset=True)
            records.append(*collected)
        examples = self._examples(records.records(), weighted=False)
        model_path = self.config.model.path
        if model_path == "tiny":
            model_path = str(self._tiny_base([m.content for e in examples for m in e.messages][:2000]))
        return self._fit(model_path, examples, self.config.adapter.warmup, "warmup")

    def _fit(
        self,
        path: str,
        examples: list[SFTExample],
        settings: TrainSettings,
        stage: str,
        held: list[SFTExample] | None = None,
    ) -> Path:
        """SFT of the adapter at `path` on `examples` (completion-only), saved in the stage's folder; the
        loss on `held` (held-out examples) logged as eval/loss every `EVAL_EVERY` steps."""
        model, tok = load_policy(self._settings(path), trainable=True, seed=self.config.seed)
        rows = tokenize_sft(examples, tok, settings.max_length)
        objective = SFTObjective(tok.pad_token_id)
        if held:
            held_rows = tokenize_sft(held, tok, settings.max_length)
            objective = HeldOutSFT(model, held_rows, tok.pad_token_id, settings.batch_size)
        return self.fit(stage, model, tok, rows, objective, settings)

    def _analyst(self, path: str) -> LMAnalyst | None:
        if self.config.guidance != "adapter":
            return None
        a = self.config.adapter
        backend = self.generation_backend(path)
        sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens)
        return LMAnalyst(backend, sampling)

    @cached_property
    def decider(self):
        """The decision maker (None without guidance)."""
        if self.config.guidance == "none":
            return None
        if not self.config.decision.configured:
            return NamedDecider()
        asker = self.config.decision.asker(
            self.config.generation_batch_size, self.config.seed, self.replies("decision")
        )
        return ModelDecider(asker, reply=self.config.decision.instruction == "reply")

    def _guide(self, analyst, prefix: str, interval: int) -> Guide:
        return Guide(
            analyst=analyst,
            decider=self.decider,
            embedder=self.embedder,
            interval=interval,
            action_text=self.config.embedder.action_text,
            prefix=prefix,
            encoder=self.encoder,
            clock=self.config.query_clock,
        )

    def _env_kwargs(self) -> dict:
        e = self.config.env
        return {
            "area": e.area,
            "view": e.view,
            "size": e.size,
            "length": e.length,
            "observation": e.observation,
        }

    def _players(self, key: str) -> list[SkilledPlayer]:
        a = self.config.agent
        return [
            SkilledPlayer(
                a.skills,
                seed=derive_seed(self.config.seed, "sampling", "player", key, i),
                patience=a.patience,
            )
            for i in range(a.envs)
        ]

    # ---- stages ---------------------------------------------------------------------------------------

    def train(self, stage: int = 1) -> Path:
        """Stage `stage`'s play with the query loop: PPO learns (or the scripted player acts); every query
        and episode is recorded; checkpoints every `checkpoint_every` iterations make a killed stage
        resume where it stopped, with the same result as an uninterrupted one."""
        if process_state().num_processes > 1:
            raise ConfigError(
                "adarefiner train runs in one process (Stable-Baselines3's PPO learns in one): launch it "
                "with plain `feedlearn`; sft and evaluate run across processes"
            )
        self._check_stage(stage)
        cfg, folder = self.config, self.store.stage(f"stage{stage}/train")
        done = folder / "done.json"
        if done.exists():
            Checkpoints(folder / "checkpoints").remove()  # left by a run stopped just after it finished
            return folder
        if stage > 1:
            self.train(stage - 1)
            self.sft(stage - 1)
        queries = JsonlAppender(folder / "queries.jsonl", QueryRecord)
        episodes = JsonlAppender(folder / "episodes.jsonl", CrafterEpisode)
        guide = self._guide(self._analyst(self.adapter_path(stage - 1)), f"stage{stage}", cfg.query_interval)
        finished: list[CrafterEpisode] = []
        guide.on_query = appender(queries)
        guide.on_episode = appender(episodes, finished)
        checkpoints = Checkpoints(folder / "checkpoints")
        start, agent, venv, players = self._play_state(stage, guide, checkpoints.latest(self.iterations))
        self.store.drop_metrics(f"stage{stage}/train", after_step=start)
        for iteration in range(start + 1, self.iterations + 1):
            finished.clear()
            began = time.perf_counter()
            if agent is not None:
                agent.learn(cfg.agent.n_steps * cfg.agent.envs, reset_num_timesteps=False)
            else:
                play_scripted(venv, players, cfg.agent.n_steps, reset=iteration == 1)
            metrics = {
                "charts/steps": iteration * cfg.agent.n_steps * cfg.agent.envs,
                "charts/SPS": cfg.agent.n_steps * cfg.agent.envs / (time.perf_counter() - began),
            }
            if finished:
                metrics["charts/episodic_return"] = float(np.mean([e.reward for e in finished]))
                metrics["charts/episodic_length"] = float(np.mean([e.length for e in finished]))
            if agent is not None:
                metrics.update(ppo_metrics(agent))
            self.store.log_metrics(f"stage{stage}/train", metrics, step=iteration)
            if iteration % cfg.checkpoint_every == 0 and iteration < self.iterations:
                checkpoints.save(iteration, partial(save_play, agent, venv, players))
        for track in venv.tracks:  # the instructions still running end with the stage: score and record them
            guide.close_query(track)
        if agent is not None:
            agent.save(folder / "agent.zip")
        summary = stage_summary(episodes.records(), queries.records(), self.decider)
        write_json_atomic(folder / "metrics.json", summary)
        self.store.log_metrics(f"stage{stage}/train", summary)
        write_json_atomic(done, {"iterations": self.iterations})
        checkpoints.remove()
        return folder

    def _play_state(self, stage: int, guide: Guide, checkpoint: tuple[int, Path] | None):
        """(iterations done, agent, worlds, players) to play stage `stage` on: the checkpoint's, or new."""
        cfg = self.config
        if checkpoint is not None:
            start, folder = checkpoint
            return start, *load_play(folder, guide, cfg.agent.kind == "ppo", cfg.agent.device)
        seeds = [derive_seed(cfg.seed, "train", "crafter", stage, i) for i in range(cfg.agent.envs)]
        venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
        players = self._players(f"stage{stage}")
        seed_all(derive_seed(cfg.seed, "sampling", "agent", stage))
        return 0, self._agent(stage, venv), venv, players

    def _agent(self, stage: int, venv: GuidedVecEnv):
        """The PPO agent a stage starts from: the previous stage's, or a new one (None: scripted)."""
        a = self.config.agent
        if a.kind == "scripted":
            return None
        if stage > 1:
            return load_ppo(
                self.store.stage(f"stage{stage - 1}/train") / "agent.zip", venv, a.device, reset=True
            )
        torch.manual_seed(derive_seed(self.config.seed, "init", "agent"))
        return build_ppo(venv, a.network, a.features, a.ppo(), a.device)

    def sft(self, stage: int = 1) -> Path | None:
        """Refine the adapter on the queries of stages 1..`stage` but the newest `refine.holdout` share
        (see the module's text); None: frozen or no adapter."""
        self._check_stage(stage)
        refine = self.config.refine
        if refine.mode == "frozen" or self.config.guidance != "adapter":
            return None
        folder = self.store.stage(f"stage{stage}/sft")
        if is_trained(folder):
            self._merge(stage)  # a run stopped between the training and the merge
            return folder / "model"
        self.train(stage)
        records = [
            r
            for s in range(1, stage + 1)
            for r in JsonlAppender(
                self.store.stage(f"stage{s}/train") / "queries.jsonl", QueryRecord
            ).records()
        ]
        kept = int(len(records) * (1 - refine.holdout))  # as written: the newest records come last
        weighted = refine.mode == "feedback"
        examples = self._examples(records[:kept], weighted)
        held = self._examples(records[kept:], weighted, required=False)
        metrics = {"examples": len(examples), "records": len(records)}
        if refine.holdout:
            metrics["held_out"] = len(held)
        self.store.log_metrics(f"stage{stage}/sft", metrics)
        start = self.initial_adapter() if refine.start == "initial" else self.adapter_path(stage - 1)
        model = self._fit(start, examples, refine.sft, f"stage{stage}/sft", held)
        self._merge(stage)
        return model

    def _examples(
        self, records: list[QueryRecord], weighted: bool, required: bool = True
    ) -> list[SFTExample]:
        """Each record's prompt and analysis; `weighted`: weight = the comprehension score that followed,
        records under the threshold (or never scored) left out. None at all is an error if `required`."""
        out = []
        for r in records:
            if r.analysis is None:
                continue
            weight = 1.0
            if weighted:
                if r.score_after is None or r.score_after < self.config.refine.threshold:
                    continue
                weight = r.score_after
            messages = [*r.prompt, Message(role="assistant", content=r.analysis)]
            out.append(SFTExample(id=r.id, messages=messages, weight=weight))
        if not out and required:
            raise ConfigError(
                f"no adapter training example among {len(records)} records (refine.mode "
                f"{self.config.refine.mode}, threshold {self.config.refine.threshold}, holdout "
                f"{self.config.refine.holdout}): lower the threshold or play more steps"
            )
        return out

    def evaluate(self, stage: int | None = None) -> dict:
        """The agent and adapter of stage `stage` (default: the last) on test worlds. Under several
        processes each plays its share of the worlds and the main process writes them all: a scripted
        player's records do not depend on the number of processes; PPO's sampled actions do (SB3 draws
        every world's action from one generator)."""
        cfg = self.config
        stage = cfg.stages if stage is None else stage
        self._check_stage(stage)
        folder = self.store.stage(f"evaluate/stage{stage}")
        if (folder / "metrics.json").exists():
            return json.loads((folder / "metrics.json").read_text())
        if cfg.agent.kind == "ppo":
            self.train(stage)  # the agent to reload (a scripted player has none)
        self.sft(stage)
        per_env = -(-cfg.evaluate.episodes // cfg.agent.envs)
        worlds = shared_map(partial(self._play_test, stage, per_env), list(range(cfg.agent.envs)))
        played = self.evaluated_episodes([e for episodes, _, _ in worlds for e in episodes])
        kept = {(e.env, e.episode) for e in played}
        everything = sorted(
            (e for episodes, _, _ in worlds for e in episodes), key=lambda e: (e.env, e.episode)
        )
        queries = [q for _, world_queries, _ in worlds for q in world_queries]
        metrics = stage_summary(played, [q for q in queries if (q.env, q.episode) in kept], self.decider)
        if cfg.agent.kind == "scripted":
            completed = {(world, k): n for world, (_, _, done) in enumerate(worlds) for k, n in done.items()}
            metrics["subgoals_completed"] = round(float(np.mean([completed[k] for k in kept])), 4)
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", everything)
            write_jsonl_atomic(folder / "queries.jsonl", queries)
            write_json_atomic(folder / "metrics.json", metrics)
        self.store.log_metrics(f"evaluate/stage{stage}", metrics)
        return metrics

    def evaluated_episodes(self, episodes: list[CrafterEpisode]) -> list[CrafterEpisode]:
        """The test episodes an evaluation counts among those played: the first `evaluate.episodes` in
        order of (episode, world), each world's first ones (the rest were cut off when play stopped)."""
        per_env = -(-self.config.evaluate.episodes // self.config.agent.envs)
        played = sorted(episodes, key=lambda e: (e.episode, e.env))
        return [e for e in played if e.episode < per_env][: self.config.evaluate.episodes]

    def _play_test(self, stage: int, per_env: int, worlds: list[int]) -> list[tuple[list, list, dict]]:
        """Test worlds `worlds` played until each has finished `per_env` episodes: per world, its episodes,
        its queries and (scripted player) the sub-goals carried out in each episode."""
        cfg = self.config
        episodes, queries = [], []
        guide = self._guide(
            self._analyst(self.adapter_path(stage)), f"test{stage}", cfg.evaluate.query_interval
        )
        guide.worlds, guide.on_query, guide.on_episode = worlds, queries.append, episodes.append
        seeds = [derive_seed(cfg.evaluate.seed, "test", "crafter", i) for i in worlds]
        venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
        seed_all(derive_seed(cfg.evaluate.seed, "test", "agent-actions"))
        completed = {}
        if cfg.agent.kind == "ppo":
            agent = load_ppo(
                self.store.stage(f"stage{stage}/train") / "agent.zip", None, cfg.agent.device, reset=True
            )
            obs = venv.reset()
            while min(t.episode for t in venv.tracks) < per_env:
                actions, _ = agent.predict(obs, deterministic=False)
                obs, _, _, _ = venv.step(actions)
        else:
            players = [self._players(f"test{stage}")[i] for i in worlds]
            completed = play_scripted(venv, players, None, reset=True, episodes=per_env)
        if cfg.query_clock == "world":  # queries run on across episodes: score and record the last ones
            for track in venv.tracks:
                guide.close_query(track)
        return [
            (
                [e for e in episodes if e.env == world],
                [q for q in queries if q.env == world],
                {k: n for (i, k), n in completed.items() if i == position},
            )
            for position, world in enumerate(worlds)
        ]

    def run(self) -> None:
        """Every stage's train and sft, and the evaluation of the last stage's agent and adapter."""
        for stage in range(1, self.config.stages + 1):
            self.train(stage)
            self.sft(stage)
        self.evaluate(self.config.stages)
