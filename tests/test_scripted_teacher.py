"""The scripted teacher: oracle episodes with template reflections, random steps and recovery negatives."""

from collections import defaultdict

import pytest
from pydantic import ValidationError

from feedlearn.envs.autoexplore import AutoExplore, AutoExploreSettings
from feedlearn.envs.taxi import DangerousTaxi, TaxiSettings
from feedlearn.errors import FeedlearnError
from feedlearn.teachers.scripted import ReflectStep, reflect, teacher_episodes

FILES = {
    "README.md": "# Demo\n",
    "main.py": "def main():\n    pass\n",
    "config.yaml": "learning_rate: 0.1\n",
    "docs/guide.md": "# Guide\n",
    "src/utils.py": "def helper():\n    pass\n",
    "src/core/engine.py": "class Engine:\n    pass\n",
    "tests/test_main.py": "def test_main():\n    pass\n",
}


class Logged:
    """Mixin that logs the oracle's move in every state it shows and the info of every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.oracle_at: dict[str, str] = {}
        self.infos: list[dict] = []

    def observation(self):
        obs = super().observation()
        if self.running:
            self.oracle_at[obs.state] = self.oracle_action()
        return obs

    def step(self, action):
        out = super().step(action)
        self.infos.append(out[4])
        return out


class LoggedTaxi(Logged, DangerousTaxi):
    pass


class LoggedExplore(Logged, AutoExplore):
    pass


@pytest.fixture
def repo(tmp_path):
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def taxi(level="full", max_steps=20):
    return LoggedTaxi(TaxiSettings(level=level, max_steps=max_steps))


def explore(root, max_steps=20):
    return LoggedExplore(root, settings=AutoExploreSettings(max_steps=max_steps))


def by_episode(steps: list[ReflectStep]) -> dict[str, list[ReflectStep]]:
    episodes = defaultdict(list)
    for step in steps:
        episodes[step.episode].append(step)
    return episodes


def check_steps(env, steps: list[ReflectStep]) -> None:
    """Checks every teacher step against the oracle logged in its state."""
    for step in steps:
        oracle = env.oracle_at[step.state]
        assert step.action in step.choices
        assert step.train_policy == (step.kind != "random")
        assert (step.action == oracle) == (step.kind != "random")
        assert oracle in step.reflection  # the reflection names the oracle's move, whatever was taken
        assert len(step.reflection.split()) <= 45


@pytest.mark.parametrize("level", ["pickup", "dropoff", "full"])
def test_oracle_taxi_episodes_succeed(level):
    env = taxi(level)
    steps = teacher_episodes(env, 10, seed=0, p_oracle=1.0)
    check_steps(env, steps)
    assert {s.kind for s in steps} == {"oracle"}
    assert len(by_episode(steps)) == 10
    assert sum(info["success"] for info in env.infos) == 10 and len(env.infos) == len(steps)
    assert all([s.step for s in ep] == list(range(len(ep))) for ep in by_episode(steps).values())


def test_oracle_autoexplore_episodes_succeed(repo):
    env = explore(repo)
    steps = teacher_episodes(env, 8, seed=0)  # AutoExplore's default: oracle moves only
    check_steps(env, steps)
    assert {s.kind for s in steps} == {"oracle"}
    assert sum(info["success"] for info in env.infos) == 8 and len(env.infos) == len(steps)
    assert all(ep[-1].action.startswith("id ") for ep in by_episode(steps).values())


def test_taxi_mixes_in_random_steps_that_are_never_dangerous():
    env = taxi("full", max_steps=15)
    steps = teacher_episodes(env, 30, seed=1)  # Taxi's default: 10% random steps
    check_steps(env, steps)
    kinds = [s.kind for s in steps]
    assert 0.03 < kinds.count("random") / len(kinds) < 0.2
    assert not any(info["dangerous"] for info in env.infos)


def test_autoexplore_random_steps_never_answer(repo):
    env = explore(repo)
    steps = teacher_episodes(env, 10, seed=2, p_oracle=0.5)
    check_steps(env, steps)
    random_steps = [s for s in steps if s.kind == "random"]
    assert random_steps and not any(s.action.startswith("id ") for s in random_steps)


@pytest.mark.parametrize("make", [lambda repo: taxi("full", max_steps=15), explore], ids=["taxi", "explore"])
def test_recovery_follows_a_wrong_step_and_reflects_on_it(make, repo):
    env = make(repo)
    steps = teacher_episodes(env, 2, seed=3, p_oracle=1.0, negatives=6)
    check_steps(env, steps)
    negatives = [ep for name, ep in by_episode(steps).items() if "negative" in name]
    assert len(negatives) == 6
    for wrong, recovery in negatives:
        assert (wrong.kind, recovery.kind) == ("random", "recovery")
        assert not wrong.train_policy and recovery.train_policy
        assert recovery.step == wrong.step + 1
        assert recovery.reflection.startswith(f"My last move {wrong.action} ")
    assert not any(info.get("dangerous") for info in env.infos)


def test_negatives_need_room_in_the_horizon():
    with pytest.raises(FeedlearnError, match="negatives"):
        teacher_episodes(taxi(max_steps=1), 0, seed=0, negatives=1)


def test_deterministic_per_seed(repo):
    for make in (lambda: taxi("full", max_steps=15), lambda: explore(repo)):
        first = teacher_episodes(make(), 5, seed=7, p_oracle=0.7, negatives=2)
        assert first == teacher_episodes(make(), 5, seed=7, p_oracle=0.7, negatives=2)
        assert first != teacher_episodes(make(), 5, seed=8, p_oracle=0.7, negatives=2)


def test_example_reflections(repo):
    env = DangerousTaxi(TaxiSettings(level="full"))
    env.reset(seed=0)
    env.taxi_state = env.taxi.encode(2, 3, 0, 1)  # passenger at row 0, column 0
    assert reflect(env) == (
        "The passenger waits at row 0, column 0 and the taxi is at row 2, column 3. "
        "I should head west toward the passenger, so west is the best move."
    )
    assert reflect(env, "east").startswith("My last move east took me away from the passenger. ")
    env.taxi_state = env.taxi.encode(0, 4, 4, 1)  # aboard, at the destination
    assert reflect(env) == (
        "The passenger is aboard, the destination is row 0, column 4 and the taxi is at row 0, column 4. "
        "I should drop the passenger off here, so dropoff is the best move."
    )

    env = AutoExplore(repo)
    env.reset(
        options={
            "task": {
                "question": "Which file defines the class `Engine`?",
                "targets": ["src/core/engine.py"],
                "depth": 2,
            }
        }
    )
    env.step("cd src")
    assert reflect(env) == (
        "I am in /src looking for the file that defines the class `Engine`. "
        "It is not here, but the folder core should hold it, so cd core is the best move."
    )
    assert reflect(env, "cat main.py").startswith("My last move cat main.py was a wasted step. ")


def test_unsupported_env_and_invalid_step():
    with pytest.raises(FeedlearnError, match="no template reflections for object"):
        reflect(object())
    with pytest.raises(FeedlearnError, match="no template reflections"):
        teacher_episodes(object(), 1, seed=0)
    with pytest.raises(ValidationError, match="not one of the choices"):
        ReflectStep(
            episode="e",
            step=0,
            state="s",
            choices=["a"],
            reflection="r",
            action="b",
            oracle="a",
            kind="oracle",
            train_policy=True,
        )
