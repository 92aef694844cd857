"""The interface of multi-round text environments with a numbered list of choices (Reflect-RL).

Like gymnasium: `reset(seed) -> (obs, info)` and `step(action) -> (obs, reward, terminated, truncated,
info)`. An observation is a `TextObservation`: the state as text (without the choices) and the actions
available now; `action` is one of those choice strings. Model output never reaches an environment as a
command: the policy picks a choice, and only the choice's text is acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TextObservation:
    """What the agent sees: the state, and the actions it may take now."""

    state: str
    choices: list[str] = field(default_factory=list)

    def render_choices(self, labels: list[str] | None = None) -> str:
        """The choices as a numbered list ("1. cd src"), or with the given labels (shuffled ones)."""
        labels = labels or [str(i) for i in range(1, len(self.choices) + 1)]
        return "\n".join(f"{label}. {choice}" for label, choice in zip(labels, self.choices, strict=True))


class TextEnv(Protocol):
    """A multi-round text environment."""

    max_steps: int
    """Horizon: the episode is truncated after this many steps."""

    def reset(self, seed: int | None = None) -> tuple[TextObservation, dict[str, Any]]:
        """Start an episode; `info` may carry the task and the level."""
        ...

    def step(self, action: str) -> tuple[TextObservation, float, bool, bool, dict[str, Any]]:
        """Act with one of the current choices. `info` carries at least `success` (bool) at the end."""
        ...

    def oracle_action(self) -> str:
        """The optimal choice in the current state (the scripted teacher)."""
        ...
