"""The ALFWorld adapter: a clear error without the package, and its logic against a stand-in package."""

from __future__ import annotations

import sys
import types

import pytest

from feedlearn.envs.alfworld_env import ALFWorldEnv
from feedlearn.errors import FeedlearnError


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "alfworld", None)  # as if it were not installed
    with pytest.raises(FeedlearnError, match="pip install alfworld"):
        ALFWorldEnv(tmp_path / "config.yaml")


class FakeBatchEnv:
    """alfworld's batch env API: reset -> (obs, info); step(actions) -> (obs, scores, dones, infos)."""

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return ["You are in a kitchen. Your task is to: put a mug in the sink."], self.info()

    def info(self):
        plan = [
            ["go to countertop 1", "take mug 1", "go to sinkbasin 1", "put mug 1 in sinkbasin 1"][self.t :]
        ]
        return {
            "admissible_commands": [["look", "help", "go to countertop 1", "go to sinkbasin 1"]],
            "won": [self.t >= 2],
            "extra.expert_plan": plan,
            "extra.gamefile": ["game-1"],
        }

    def step(self, actions):
        self.t += 1
        done = self.t >= 2
        return [f"Step {self.t}: {actions[0]}"], [1.0 if done else 0.0], [done], self.info()


@pytest.fixture
def fake_alfworld(monkeypatch, tmp_path):
    environment = types.ModuleType("alfworld.agents.environment")

    def get_environment(kind):
        assert kind == "AlfredTWEnv"
        return lambda config, train_eval: types.SimpleNamespace(init_env=lambda batch_size: FakeBatchEnv())

    environment.get_environment = get_environment
    for name in ("alfworld", "alfworld.agents"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "alfworld.agents.environment", environment)
    config = tmp_path / "config.yaml"
    config.write_text("env: {type: AlfredTWEnv}\n")
    return config


def test_admissible_commands_are_the_choices_and_score_changes_are_rewards(fake_alfworld):
    env = ALFWorldEnv(fake_alfworld, max_steps=10)
    obs, info = env.reset()
    assert info["game"] == "game-1"
    assert obs.choices == ["look", "go to countertop 1", "go to sinkbasin 1"]  # 'help' is not an action
    assert env.oracle_action() == "go to countertop 1"
    with pytest.raises(FeedlearnError, match="not an admissible command"):
        env.step("rm -rf /")
    obs, reward, terminated, truncated, info = env.step("go to countertop 1")
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step("look")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    with pytest.raises(FeedlearnError, match="reset"):
        env.step("look")


def test_horizon_truncates(fake_alfworld):
    env = ALFWorldEnv(fake_alfworld, max_steps=1)
    env.reset()
    _, _, terminated, truncated, _ = env.step("look")
    assert (terminated, truncated) == (False, True)
