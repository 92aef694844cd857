"""AdaRefiner's stages: `AdaRefiner`, one method per stage, reading and writing the run folder."""

from __future__ import annotations

import json
import time
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import torch

from feedlearn.backends.base import SamplingParams
from feedlearn.data.checkpoints import Checkpoints
from feedlearn.data.jsonl import JsonlAppender, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import Message, SFTExample
from feedlearn.data.store import DONE, EVALUATED, is_done, is_evaluated
from feedlearn.envs.crafter_env import make_vec_env
from feedlearn.envs.crafter_player import SkilledPlayer
from feedlearn.errors import ConfigError
from feedlearn.feedback.comprehension import ConceptEmbedder, SentenceTransformerEmbedder
from feedlearn.feedback.subgoals import SUBGOALS
from feedlearn.losses import token_mean_nll
from feedlearn.methods.adarefiner.agent import (
    ReinitializedEncoder,
    build_ppo,
    load_ppo,
    ppo_metrics,
)
from feedlearn.methods.adarefiner.config import AdaRefinerConfig
from feedlearn.methods.adarefiner.layout import AdaRefinerLayout
from feedlearn.methods.adarefiner.loop import (
    ADAPTER_SYSTEM,
    DECISION_SYSTEM,
    CrafterEpisode,
    Guide,
    GuidedVecEnv,
    LMAnalyst,
    ModelDecider,
    NamedDecider,
    QueryRecord,
    TemplateAnalyst,
)
from feedlearn.methods.adarefiner.play import (
    appender,
    load_play,
    play_scripted,
    play_summary,
    save_play,
    seed_all,
)
from feedlearn.methods.common import Method
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import from_main, process_state, shared_map
from feedlearn.seeds import derive_seed
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, TrainSettings, is_trained

STAGES = {
    "warmup": "warm the adapter LM up on template analyses (offline recipes)",
    "train": "train the agent (PPO) with the adapter's guidance, recording every query",
    "sft": "refine the adapter on the recorded queries (by `refine.mode`)",
    "evaluate": "Crafter score and success per achievement of the saved agent and adapter",
}
"""Each stage, with what it does (shown by `feedlearn adarefiner --help`)."""


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
    """The stages of one AdaRefiner run, reading and writing `run_dir/<run_id>/` (laid out by
    `AdaRefinerLayout`)."""

    config: AdaRefinerConfig
    layout: AdaRefinerLayout
    layout_class = AdaRefinerLayout

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
    def updates(self) -> int:
        """PPO updates (each after `n_steps` steps in each world) per iteration."""
        per_iteration = self.config.agent.n_steps * self.config.agent.envs
        return -(-self.config.steps_per_iteration // per_iteration)

    def _check_iteration(self, iteration: int) -> None:
        if not 1 <= iteration <= self.config.iterations:
            raise ConfigError(
                f"iteration {iteration} is not one of this recipe's iterations 1..{self.config.iterations}"
            )

    # ---- the adapter ----------------------------------------------------------------------------------

    def initial_adapter(self) -> str:
        """The starting adapter: the recipe's model (a tiny one built for it), warmed up when the recipe
        asks."""
        if self.config.adapter.warmup_steps:
            return str(self.layout.finished(self.layout.warmup() / "model", "warmup"))
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

    def adapter_path(self, iteration: int) -> str:
        """The adapter used after iteration `iteration`: the starting one (iteration 0, or frozen), else its
        `sft`'s
        (merged into its base, where `_merges`)."""
        if iteration == 0 or self.config.refine.mode == "frozen":
            return self.initial_adapter()
        adapter = self.layout.refine(iteration) / ("merged" if self._merges else "model")
        return str(self.layout.finished(adapter, f"sft --iteration {iteration}"))

    def _merge(self, iteration: int) -> None:
        """Iteration `iteration`'s LoRA adapter merged into its base (unquantized, in `model.dtype`) and
        saved in its sft folder's `merged/` (its done.json last), by the main process; the reference's sft.py
        does this at the end of each of its stages (an iteration here)."""
        folder = self.layout.refine(iteration)
        if not self._merges or is_done(folder / "merged"):
            return

        def merge() -> None:
            settings = self._settings(str(folder / "model")).model_copy(update={"quantization": "none"})
            model, tok = load_policy(settings)
            model.merge_and_unload().save_pretrained(folder / "merged")
            tok.save_pretrained(folder / "merged")
            write_json_atomic(folder / "merged" / DONE, {"adapter": str(folder / "model")})

        from_main(merge)

    def warmup(self) -> Path:
        """Warm the adapter up on template analyses of the states the scripted player meets."""
        folder = self.layout.warmup()
        if is_trained(folder):
            return folder / "model"
        records = JsonlAppender(folder / "queries.jsonl", QueryRecord)
        if not records.ids:
            collected = []
            guide = self._guide(
                TemplateAnalyst(self.config.seed), self.layout.WARMUP_KEY, self.config.query_interval
            )
            guide.on_query = collected.append
            seeds = [
                derive_seed(self.config.seed, "teacher", "crafter", i) for i in range(self.config.agent.envs)
            ]
            venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
            players = self._players(self.layout.WARMUP_KEY)
            steps = -(-self.config.adapter.warmup_steps // self.config.agent.envs)
            play_scripted(venv, players, steps, reset=True)
            records.append(*collected)
        examples = self._examples(records.records(), weighted=False)
        model_path = self.config.model.path
        if model_path == "tiny":
            model_path = str(self._tiny_base([m.content for e in examples for m in e.messages][:2000]))
        return self._fit(model_path, examples, self.config.adapter.warmup, folder)

    def _fit(
        self,
        path: str,
        examples: list[SFTExample],
        settings: TrainSettings,
        folder: Path,
        held: list[SFTExample] | None = None,
    ) -> Path:
        """SFT of the adapter at `path` on `examples` (completion-only), saved in the stage folder
        `folder`; the loss on `held` (held-out examples) logged as eval/loss every `EVAL_EVERY` steps."""
        model, tok = load_policy(self._settings(path), trainable=True, seed=self.config.seed)
        rows = tokenize_sft(examples, tok, settings.max_length)
        objective = SFTObjective(tok.pad_token_id)
        if held:
            held_rows = tokenize_sft(held, tok, settings.max_length)
            objective = HeldOutSFT(model, held_rows, tok.pad_token_id, settings.batch_size)
        return self.fit(folder, model, tok, rows, objective, settings)

    def _analyst(self, iteration: int) -> LMAnalyst | None:
        """The adapter of iteration `iteration` (see `adapter_path`) as the analyst; None without one."""
        if self.config.guidance != "adapter":
            return None
        a = self.config.adapter
        backend = self.generation_backend(self.adapter_path(iteration))
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
            self.config.generation_batch_size, self.config.seed, self.layout.replies("decision")
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

    def train(self, iteration: int = 1) -> Path:
        """Iteration `iteration`'s play with the query loop: PPO learns (or the scripted player acts); every
        query and episode is recorded; checkpoints every `checkpoint_every` PPO updates make a killed play
        resume where it stopped, with the same result as an uninterrupted one."""
        if process_state().num_processes > 1:
            raise ConfigError(
                "adarefiner train runs in one process (Stable-Baselines3's PPO learns in one): launch it "
                "with plain `feedlearn`; sft and evaluate run across processes"
            )
        self._check_iteration(iteration)
        cfg, folder = self.config, self.layout.play(iteration)
        if is_done(folder):
            Checkpoints(folder / "checkpoints").remove()  # left by a run stopped just after it finished
            return folder
        if iteration > 1:
            self.layout.finished(self.layout.play(iteration - 1), f"train --iteration {iteration - 1}")
        queries = JsonlAppender(self.layout.queries(iteration), QueryRecord)
        episodes = JsonlAppender(folder / "episodes.jsonl", CrafterEpisode)
        analyst = self._analyst(iteration - 1)
        guide = self._guide(analyst, self.layout.play_key(iteration), cfg.query_interval)
        finished: list[CrafterEpisode] = []
        guide.on_query = appender(queries)
        guide.on_episode = appender(episodes, finished)
        checkpoints = Checkpoints(folder / "checkpoints")
        start, agent, venv, players = self._play_state(iteration, guide, checkpoints.latest(self.updates))
        self.store.drop_metrics(self.layout.name(folder), after_step=start)
        for update in range(start + 1, self.updates + 1):
            finished.clear()
            began = time.perf_counter()
            if agent is not None:
                agent.learn(cfg.agent.n_steps * cfg.agent.envs, reset_num_timesteps=False)
            else:
                play_scripted(venv, players, cfg.agent.n_steps, reset=update == 1)
            metrics = {
                "charts/steps": update * cfg.agent.n_steps * cfg.agent.envs,
                "charts/SPS": cfg.agent.n_steps * cfg.agent.envs / (time.perf_counter() - began),
            }
            if finished:
                metrics["charts/episodic_return"] = float(np.mean([e.reward for e in finished]))
                metrics["charts/episodic_length"] = float(np.mean([e.length for e in finished]))
            if agent is not None:
                metrics.update(ppo_metrics(agent))
            self.store.log_metrics(self.layout.name(folder), metrics, step=update)
            if update % cfg.checkpoint_every == 0 and update < self.updates:
                checkpoints.save(update, partial(save_play, agent, venv, players))
        for track in venv.tracks:  # the instructions still running end with the play: score and record them
            guide.close_query(track)
        if agent is not None:
            agent.save(self.layout.agent(iteration))
        summary = play_summary(episodes.records(), queries.records(), self.decider)
        write_json_atomic(folder / EVALUATED, summary)
        self.store.log_metrics(self.layout.name(folder), summary)
        write_json_atomic(folder / DONE, {"updates": self.updates})
        checkpoints.remove()
        return folder

    def _play_state(self, iteration: int, guide: Guide, checkpoint: tuple[int, Path] | None):
        """(updates done, agent, worlds, players) to play iteration `iteration` on: the checkpoint's, or
        new ones."""
        cfg = self.config
        if checkpoint is not None:
            start, folder = checkpoint
            return start, *load_play(folder, guide, cfg.agent.kind == "ppo", cfg.agent.device)
        seeds = [derive_seed(cfg.seed, "train", "crafter", iteration, i) for i in range(cfg.agent.envs)]
        venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
        players = self._players(self.layout.play_key(iteration))
        seed_all(derive_seed(cfg.seed, "sampling", "agent", iteration))
        return 0, self._agent(iteration, venv), venv, players

    def _agent(self, iteration: int, venv: GuidedVecEnv):
        """The PPO agent an iteration starts from: the previous iteration's, or a new one (None: scripted)."""
        a = self.config.agent
        if a.kind == "scripted":
            return None
        if iteration > 1:
            return load_ppo(self.layout.agent(iteration - 1), venv, a.device, reset=True)
        torch.manual_seed(derive_seed(self.config.seed, "init", "agent"))
        return build_ppo(venv, a.network, a.features, a.ppo(), a.device)

    def sft(self, iteration: int = 1) -> Path | None:
        """Refine the adapter on the queries of iterations 1..`iteration` but the newest `refine.holdout`
        share (see the module's text); None: frozen or no adapter."""
        self._check_iteration(iteration)
        refine = self.config.refine
        if refine.mode == "frozen" or self.config.guidance != "adapter":
            return None
        folder = self.layout.refine(iteration)
        if is_trained(folder):
            self._merge(iteration)  # a run stopped between the training and the merge
            return folder / "model"
        for s in range(1, iteration + 1):
            self.layout.finished(self.layout.play(s), f"train --iteration {s}")
        records = [
            r
            for s in range(1, iteration + 1)
            for r in JsonlAppender(self.layout.queries(s), QueryRecord).records()
        ]
        kept = int(len(records) * (1 - refine.holdout))  # as written: the newest records come last
        weighted = refine.mode == "feedback"
        examples = self._examples(records[:kept], weighted)
        held = self._examples(records[kept:], weighted, required=False)
        metrics = {"examples": len(examples), "records": len(records)}
        if refine.holdout:
            metrics["held_out"] = len(held)
        self.store.log_metrics(self.layout.name(folder), metrics)
        start = self.initial_adapter() if refine.start == "initial" else self.adapter_path(iteration - 1)
        model = self._fit(start, examples, refine.sft, folder, held)
        self._merge(iteration)
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

    def evaluate(self, iteration: int | None = None) -> dict:
        """The agent and adapter of iteration `iteration` (default: the last) on test worlds. Under several
        processes each plays its share of the worlds and the main process writes them all: a scripted
        player's records do not depend on the number of processes; PPO's sampled actions do (SB3 draws
        every world's action from one generator)."""
        cfg = self.config
        iteration = cfg.iterations if iteration is None else iteration
        self._check_iteration(iteration)
        folder = self.layout.evaluation(iteration)
        if is_evaluated(folder):
            return json.loads((folder / EVALUATED).read_text())
        if cfg.agent.kind == "ppo":  # the agent to reload (a scripted player has none)
            self.layout.finished(self.layout.play(iteration), f"train --iteration {iteration}")
        per_env = -(-cfg.evaluate.episodes // cfg.agent.envs)
        worlds = shared_map(partial(self._play_test, iteration, per_env), list(range(cfg.agent.envs)))
        played = self.evaluated_episodes([e for episodes, _, _ in worlds for e in episodes])
        kept = {(e.env, e.episode) for e in played}
        everything = sorted(
            (e for episodes, _, _ in worlds for e in episodes), key=lambda e: (e.env, e.episode)
        )
        queries = [q for _, world_queries, _ in worlds for q in world_queries]
        metrics = play_summary(played, [q for q in queries if (q.env, q.episode) in kept], self.decider)
        if cfg.agent.kind == "scripted":
            completed = {(world, k): n for world, (_, _, done) in enumerate(worlds) for k, n in done.items()}
            metrics["subgoals_completed"] = round(float(np.mean([completed[k] for k in kept])), 4)
        if process_state().is_main_process:
            write_jsonl_atomic(folder / "episodes.jsonl", everything)
            write_jsonl_atomic(folder / "queries.jsonl", queries)
            write_json_atomic(folder / EVALUATED, metrics)
        self.store.log_metrics(self.layout.name(folder), metrics)
        return metrics

    def evaluated_episodes(self, episodes: list[CrafterEpisode]) -> list[CrafterEpisode]:
        """The test episodes an evaluation counts among those played: the first `evaluate.episodes` in
        order of (episode, world), each world's first ones (the rest were cut off when play stopped)."""
        per_env = -(-self.config.evaluate.episodes // self.config.agent.envs)
        played = sorted(episodes, key=lambda e: (e.episode, e.env))
        return [e for e in played if e.episode < per_env][: self.config.evaluate.episodes]

    def _play_test(self, iteration: int, per_env: int, worlds: list[int]) -> list[tuple[list, list, dict]]:
        """Test worlds `worlds` played until each has finished `per_env` episodes: per world, its episodes,
        its queries and (scripted player) the sub-goals carried out in each episode."""
        cfg = self.config
        episodes, queries = [], []
        guide = self._guide(
            self._analyst(iteration), self.layout.test_key(iteration), cfg.evaluate.query_interval
        )
        guide.worlds, guide.on_query, guide.on_episode = worlds, queries.append, episodes.append
        seeds = [derive_seed(cfg.evaluate.seed, "test", "crafter", i) for i in worlds]
        venv = GuidedVecEnv(make_vec_env(seeds, **self._env_kwargs()), guide)
        seed_all(derive_seed(cfg.evaluate.seed, "test", "agent-actions"))
        completed = {}
        if cfg.agent.kind == "ppo":
            agent = load_ppo(self.layout.agent(iteration), None, cfg.agent.device, reset=True)
            obs = venv.reset()
            while min(t.episode for t in venv.tracks) < per_env:
                actions, _ = agent.predict(obs, deterministic=False)
                obs, _, _, _ = venv.step(actions)
        else:
            players = [self._players(self.layout.test_key(iteration))[i] for i in worlds]
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
        """Every iteration's train and sft, and the evaluation of the last iteration's agent and adapter."""
        if self.config.guidance == "adapter" and self.config.adapter.warmup_steps:
            self.warmup()
        for iteration in range(1, self.config.iterations + 1):
            self.train(iteration)
            self.sft(iteration)
        self.evaluate(self.config.iterations)
