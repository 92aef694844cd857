"""AdaRefiner's play, apart from the guide: scripted players acting in the worlds, the records' sinks,
a stage's summary (Crafter score, success per achievement, comprehension), and the play state a
checkpoint saves and restores (agent, worlds, players, random generators)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from feedlearn.data.jsonl import JsonlAppender
from feedlearn.envs.crafter_env import ACHIEVEMENTS, crafter_score, success_rates
from feedlearn.methods.adarefiner.agent import load_ppo
from feedlearn.methods.adarefiner.loop import CrafterEpisode, Guide, GuidedVecEnv, QueryRecord
from feedlearn.processes import total


def appender(book: JsonlAppender, also: list | None = None):
    """A sink that appends a record unless its id is written (a resumed stage makes the same records),
    and to `also` in any case."""

    def append(record) -> None:
        if record.id not in book:
            book.append(record)
        if also is not None:
            also.append(record)

    return append


def play_scripted(
    venv: GuidedVecEnv, players, steps: int | None, reset: bool, episodes: int | None = None
) -> dict[tuple[int, int], int]:
    """The scripted players act for `steps` steps in every world, or until each world has finished
    `episodes` episodes; returns the sub-goals carried out in each finished episode, by (world, episode)."""
    if reset:
        venv.reset()
    taken, completed, before = 0, {}, [p.completed for p in players]
    while (steps is None or taken < steps) and (
        episodes is None or min(t.episode for t in venv.tracks) < episodes
    ):
        actions = np.array(
            [p.act(venv.infos[i], venv.tracks[i].subgoals) for i, p in enumerate(players)], dtype=np.int64
        )
        _, _, dones, _ = venv.step(actions)
        for i in np.flatnonzero(dones):
            completed[(int(i), venv.tracks[i].episode - 1)] = players[i].completed - before[i]
            before[i] = players[i].completed
            players[i].reset()
        taken += 1
    return completed


def play_summary(episodes: list[CrafterEpisode], queries: list[QueryRecord], decider) -> dict:
    """Crafter score, success per achievement (%), episode reward and length, comprehension, fallbacks."""
    if not episodes:
        return {"episodes": 0, "queries": len(queries)}
    rates = success_rates([e.achievements for e in episodes])
    scored = [q.score_after for q in queries if q.score_after is not None]
    out = {
        "episodes": len(episodes),
        "score": round(crafter_score(rates), 4),
        "reward": round(float(np.mean([e.reward for e in episodes])), 4),
        "length": round(float(np.mean([e.length for e in episodes])), 2),
        "achievements_per_episode": round(float(np.mean([len(e.achievements) for e in episodes])), 4),
        "success": {name: round(rates[name], 2) for name in ACHIEVEMENTS},
        "queries": len(queries),
    }
    if queries:
        out["comprehension"] = round(float(np.mean(scored)), 4) if scored else None
        out["fallbacks"] = sum(q.fallback for q in queries)
    asker = getattr(decider, "asker", None)
    if asker is not None:
        out["garbage_replies"] = total(asker.garbage_replies)  # every process asks for its own worlds
    return out


def seed_all(seed: int) -> None:
    """Seed the generators SB3 draws from (torch: actions; numpy: minibatch order)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def load_play(folder: Path, guide: Guide, ppo: bool, device: str):
    """(agent, worlds, players) as `save_play` left them in `folder`, the worlds guided by `guide`, and
    the random generators restored (after the agent's load: building its network draws from torch's)."""
    state = pickle.loads((folder / "state.pkl").read_bytes())
    venv, players = state["venv"], state["players"]
    venv.guide = guide
    agent = load_ppo(folder / "agent.zip", venv, device, reset=False) if ppo else None
    _set_rng(state["rng"])
    return agent, venv, players


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_play(agent, venv: GuidedVecEnv, players, folder: Path) -> None:
    """The agent (weights, optimizer, last observation), the worlds, the loop's tracks, the players and
    the random generators, in `folder`."""
    if agent is not None:
        agent.save(folder / "agent.zip")
    state = {"venv": venv, "players": players, "rng": _rng_state()}
    (folder / "state.pkl").write_bytes(pickle.dumps(state))
