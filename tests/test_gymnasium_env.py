"""Any gymnasium text environment under feedlearn's contract plugs into Reflect-RL (`env.name: gymnasium`)."""

import gymnasium
import pytest

from feedlearn.config import load_recipe
from feedlearn.envs.catalog import EnvFactory, GymnasiumEnvSettings
from feedlearn.envs.gymnasium_env import GymnasiumTextEnv
from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.teachers.scripted import teacher_episodes


class Corridor(gymnasium.Env):
    """Walk right from cell 0 to cell `length`; the action is the index of a choice."""

    action_space = gymnasium.spaces.Discrete(2)
    observation_space = gymnasium.spaces.Text(200)

    def __init__(self, length: int = 3):
        self.length = length

    def _out(self):
        text = f"You are in cell {self.pos} of a corridor; the exit is cell {self.length}."
        choices = ["walk left", "walk right"] if self.pos else ["walk right"]
        return text, {"choices": choices, "oracle": "walk right"}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._out()

    def step(self, action):
        choices = self._out()[1]["choices"]
        self.pos += 1 if choices[action] == "walk right" else -1
        text, info = self._out()
        done = self.pos == self.length
        return text, float(done), done, False, info


class NoChoices(Corridor):
    def _out(self):
        return "a corridor", {}


gymnasium.register(id="feedlearn-test/Corridor-v0", entry_point=Corridor)


def _factory(**kw) -> EnvFactory:
    return EnvFactory(GymnasiumEnvSettings(name="gymnasium", **kw))


@pytest.mark.parametrize(
    "source",
    [{"id": "feedlearn-test/Corridor-v0"}, {"entry_point": "test_gymnasium_env:Corridor"}],
)
def test_a_registered_id_or_an_entry_point_plays_by_choice_text(source):
    env = _factory(**source, kwargs={"length": 2}).make("train")
    assert isinstance(env, GymnasiumTextEnv) and env.by_index
    obs, _ = env.reset(seed=0)
    assert obs.state.startswith("You are in cell 0") and obs.choices == ["walk right"]
    obs, reward, terminated, truncated, _ = env.step("walk right")
    assert obs.choices == ["walk left", "walk right"] and reward == 0 and not terminated
    obs, reward, terminated, truncated, info = env.step("walk right")
    assert terminated and reward == 1 and info["success"]  # a positive return, no info["success"] given


def test_test_kwargs_override_and_the_horizon_truncates():
    factory = _factory(
        id="feedlearn-test/Corridor-v0", kwargs={"length": 2}, test_kwargs={"length": 9}, max_steps=3
    )
    assert factory.make("train").env.length == 2 and factory.make("test").env.length == 9
    env = factory.make("test")
    env.reset(seed=0)
    for _ in range(3):
        *_, terminated, truncated, info = env.step("walk right")
    assert truncated and not terminated and not info["success"]
    with pytest.raises(FeedlearnError, match="call reset"):
        env.step("walk right")


def test_the_scripted_teacher_reads_the_oracle():
    env = _factory(id="feedlearn-test/Corridor-v0", kwargs={"length": 3}).make("train")
    steps = teacher_episodes(env, 3, seed=0, p_oracle=0.5, negatives=1)
    assert all(s.reflection.endswith("The best move here is walk right.") for s in steps)
    recovery = [s for s in steps if s.kind == "recovery"]
    assert recovery and recovery[0].reflection.startswith("My last move walk left")


def test_contract_breaches_are_clear_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: reflect-rl\nmodel: {path: tiny}\nenv: {name: gymnasium}\n")
    with pytest.raises(ConfigError, match="exactly one of env.id and env.entry_point"):
        load_recipe(ReflectRLConfig, recipe, [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="env.id nowhere/Nothing-v0"):
        _factory(id="nowhere/Nothing-v0").make("train")
    with pytest.raises(ConfigError, match="cannot load it"):
        _factory(entry_point="no_such_module:Env").make("train")
    with pytest.raises(FeedlearnError, match=r"info\['choices'\]"):
        _factory(entry_point="test_gymnasium_env:NoChoices").make("train").reset(seed=0)
    with pytest.raises(ConfigError, match="no curriculum levels"):
        _factory(id="feedlearn-test/Corridor-v0").check_level(1)
    env = _factory(id="feedlearn-test/Corridor-v0").make("train")
    env.reset(seed=0)
    with pytest.raises(FeedlearnError, match="not one of the choices"):
        env.step("rm -rf /")


def test_reflect_rl_runs_on_a_gymnasium_environment(tmp_path):
    """Teacher data, SFT, RL and evaluation, end to end, on an environment the test registered."""
    from test_reflect_rl import recipe

    from feedlearn.data.store import open_run
    from feedlearn.methods.reflect_rl.stages import ReflectRL

    env = {"name": "gymnasium", "id": "feedlearn-test/Corridor-v0", "kwargs": {"length": 2}, "max_steps": 6}
    config = recipe(tmp_path, env=env)
    method = ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)
    method.run()
    steps = method.teacher_steps()
    assert steps and all("walk right" in s.reflection for s in steps)
    metrics = method.evaluate("rl")
    assert metrics["episodes"] == 3 and 0 <= metrics["success"] <= 100
