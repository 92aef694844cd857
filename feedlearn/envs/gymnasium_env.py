"""Any gymnasium environment with text observations and a list of actions, as a `TextEnv`.

The contract (what an environment must do to plug into Reflect-RL):
- `reset(seed=...)` and `step(action)` follow gymnasium's API; the observation is a `str` (the state);
- `info["choices"]` (from both) lists the actions available now, as text; `step` takes the chosen one:
  its index into `info["choices"]` when the action space is `Discrete`, else the text itself;
- `info["success"]` says at the end of an episode whether it succeeded (absent: a positive return);
- `info["oracle"]` names the best choice now: optional, but the scripted teacher's data need it.
The environment is built from a registered id (`gymnasium.make`) or an entry point (`module:Class`),
with keyword arguments, and wrapped in no gymnasium wrapper: `max_steps` truncates it here.
"""

from __future__ import annotations

from typing import Any

from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import ConfigError, FeedlearnError


def make_gymnasium(env_id: str | None, entry_point: str | None, kwargs: dict[str, Any]):
    """The environment of a registered `env_id`, or of `entry_point` ("module:Class" or a function)."""
    import gymnasium

    try:
        if env_id is not None:
            return gymnasium.make(env_id, disable_env_checker=True, **kwargs).unwrapped
        from gymnasium.envs.registration import load_env_creator

        return load_env_creator(entry_point)(**kwargs)
    except gymnasium.error.Error as e:
        raise ConfigError(f"env.id {env_id}: {e}") from None
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"env.entry_point {entry_point}: cannot load it ({e})") from None


class GymnasiumTextEnv:
    """A gymnasium text environment under the contract above."""

    def __init__(self, env, max_steps: int):
        import gymnasium

        self.env = env
        self.max_steps = max_steps
        self.by_index = isinstance(env.action_space, gymnasium.spaces.Discrete)
        self._obs: TextObservation | None = None
        self._info: dict[str, Any] = {}
        self._steps = 0
        self._return = 0.0

    def reset(self, seed: int | None = None) -> tuple[TextObservation, dict[str, Any]]:
        """Start an episode (the environment's reset, seeded)."""
        observation, info = self.env.reset(seed=seed)
        self._steps, self._return = 0, 0.0
        self._obs = self._observation(observation, info)
        return self._obs, info

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of the current choices."""
        if self._obs is None:
            raise FeedlearnError("step before reset, or after the episode ended: call reset()")
        if action not in self._obs.choices:
            raise FeedlearnError(f"'{action}' is not one of the choices here")
        chosen = self._obs.choices.index(action) if self.by_index else action
        observation, reward, terminated, truncated, info = self.env.step(chosen)
        self._steps += 1
        self._return += float(reward)
        truncated = bool(truncated) or (not terminated and self._steps >= self.max_steps)
        obs = self._obs = self._observation(observation, info)
        info = dict(info)
        if terminated or truncated:
            self._obs = None
            info.setdefault("success", bool(terminated) and self._return > 0)
        return obs, float(reward), bool(terminated), truncated, info

    def oracle_action(self) -> str:
        """The environment's `info["oracle"]`."""
        oracle = self._info.get("oracle")
        if oracle is None:
            raise FeedlearnError(
                "this gymnasium environment gives no info['oracle']: the teacher's trajectories need it "
                "(with template or teacher-model reflections alike)"
            )
        return oracle

    def _observation(self, observation: Any, info: dict[str, Any]) -> TextObservation:
        if not isinstance(observation, str):
            raise FeedlearnError(
                f"a gymnasium text environment's observation must be a str, not {type(observation).__name__}"
            )
        choices = info.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise FeedlearnError(
                "a gymnasium text environment must list its actions as text in info['choices']"
            )
        self._info = info
        return TextObservation(state=observation, choices=list(choices))
