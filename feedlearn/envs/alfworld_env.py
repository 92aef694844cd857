"""ALFWorld (its text version) as a `TextEnv`, through the alfworld package when it is installed.

The admissible commands of each state are the numbered choices; the reward of a step is the change in
the game's score, so an episode's return is its final score. The package and its game files are not
dependencies of feedlearn: install them with `pip install alfworld && alfworld-download`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import FeedlearnError

MISSING = (
    "ALFWorld needs the alfworld package and its game files: run `pip install alfworld` and "
    "`alfworld-download` (game files go to $ALFWORLD_DATA), then give the path of an alfworld config file"
)


class ALFWorldEnv:
    """One ALFWorld game at a time; `split` is alfworld's train_eval ('train', 'eval_out_of_distribution')."""

    def __init__(self, config_path: str | Path, split: str = "train", max_steps: int = 50):
        try:
            from alfworld.agents.environment import get_environment
        except ImportError:
            raise FeedlearnError(MISSING) from None
        path = Path(config_path)
        if not path.exists():
            raise FeedlearnError(f"{path}: alfworld config not found")
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        env_type = config.get("env", {}).get("type", "AlfredTWEnv")
        self.env = get_environment(env_type)(config, train_eval=split).init_env(batch_size=1)
        self.max_steps = max_steps
        self._obs: TextObservation | None = None
        self._score = 0.0
        self._steps = 0
        self._info: dict[str, Any] = {}

    def reset(self, seed: int | None = None) -> tuple[TextObservation, dict[str, Any]]:
        """Start the next game (alfworld picks it; `seed` is not used by the package)."""
        observations, info = self.env.reset()
        self._score, self._steps = 0.0, 0
        self._obs = self._observation(observations[0], info)
        return self._obs, {"game": _first(info.get("extra.gamefile"))}

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of the admissible commands."""
        if self._obs is None:
            raise FeedlearnError("step before reset, or after the episode ended: call reset()")
        if action not in self._obs.choices:
            raise FeedlearnError(f"'{action}' is not an admissible command here; choose one of the choices")
        observations, scores, dones, info = self.env.step([action])
        score = float(scores[0])
        reward, self._score = score - self._score, score
        self._steps += 1
        terminated = bool(dones[0])
        truncated = not terminated and self._steps >= self.max_steps
        success = bool(_first(info.get("won", [False])))
        self._obs = self._observation(observations[0], info)
        obs = self._obs
        if terminated or truncated:
            self._obs = None
        return obs, reward, terminated, truncated, {"success": success, "score": score}

    def oracle_action(self) -> str:
        """The next step of alfworld's expert plan (the config must request `extra.expert_plan`)."""
        plan = _first(self._info.get("extra.expert_plan"))
        if not plan:
            raise FeedlearnError("no expert plan: enable the expert in the alfworld config (env.expert_type)")
        return plan[0]

    def _observation(self, text: str, info: dict[str, Any]) -> TextObservation:
        self._info = info
        commands = _first(info.get("admissible_commands")) or []
        return TextObservation(state=text.strip(), choices=[c for c in commands if c != "help"])


def _first(batch):
    """The first game's entry of an alfworld batch field (None when absent)."""
    return batch[0] if batch else None
