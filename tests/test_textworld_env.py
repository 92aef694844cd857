"""TextWorld games generated offline: the train/test split, playing a game, the scripted teacher on it."""

import copy

import pytest

from feedlearn.envs.catalog import EnvFactory, TextWorldEnvSettings
from feedlearn.envs.textworld_env import TextWorldEnv, _game, game_files
from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.teachers.scripted import teacher_episodes

pytest.importorskip("textworld")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one cache for the module: games compile in about 3 s each
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path_factory.getbasetemp() / "textworld-cache"))


def _settings(**kw) -> TextWorldEnvSettings:
    return TextWorldEnvSettings(
        **{"name": "textworld", "family": "coin_collector", "level": 2, "games": 2, "test_games": 2, **kw}
    )


def test_train_and_test_games_never_share_a_world_and_are_cached():
    s = _settings()
    train, test = game_files(s, "train", 2), game_files(s, "test", 2)
    assert len(train) == 2 and len(test) == 2
    keys = {
        split: {(p.parent / "key").read_text() for p in files}
        for split, files in (("train", train), ("test", test))
    }
    assert len(keys["train"]) == 2 and len(keys["test"]) == 2 and not keys["train"] & keys["test"]
    assert game_files(s, "train", 2) == train  # the second call reads the cache
    assert game_files(_settings(seed=1, games=1, test_games=1), "train", 2)[0] not in train


def test_a_training_game_equal_to_a_test_game_is_dropped(monkeypatch):
    """Level 1 coin collector games are few: the same world comes up under two seeds."""
    import feedlearn.envs.textworld_env as tw

    real = tw._game
    calls = []

    def same_world_as_test_game_0(settings, level, purpose, index):
        path, key = real(settings, level, purpose, index)
        calls.append((purpose, index))
        if (purpose, index) == ("train", 0):  # pretend training game 0 is test game 0's world
            return path, real(settings, level, "test", 0)[1]
        return path, key

    monkeypatch.setattr(tw, "_game", same_world_as_test_game_0)
    s = _settings()
    train = game_files(s, "train", 2)
    assert len(train) == 2 and real(s, 2, "train", 0)[0] not in train
    assert ("train", 2) in calls  # a third training seed filled its place


def test_too_few_distinct_games_is_a_clear_error(monkeypatch):
    import feedlearn.envs.textworld_env as tw

    monkeypatch.setattr(
        tw, "_game", lambda settings, level, purpose, index: (tw.Path(f"{purpose}{index}"), "same")
    )
    with pytest.raises(ConfigError, match="distinct training games"):
        game_files(_settings(), "train", 2)


def test_the_walkthrough_wins_and_a_copy_replays_the_state():
    env = EnvFactory(_settings()).make("train", 2)
    assert isinstance(env, TextWorldEnv)
    obs, info = env.reset(seed=5)
    assert obs.state.startswith("Goal: ") and obs.choices and "look" not in obs.choices
    first = env.oracle_action()
    assert first in obs.choices
    with pytest.raises(FeedlearnError, match="not an admissible command"):
        env.step("fly to the moon")
    assert "\nLast command: none\n" in obs.state
    obs, reward, terminated, truncated, info = env.step(first)
    assert f"\nLast command: {first}\n" in obs.state  # which exit leads back
    twin = copy.deepcopy(env)
    assert twin.commands == [first] and twin.oracle_action() == env.oracle_action() and twin.room == env.room
    total, done = reward, terminated
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.oracle_action())
        total, done = total + reward, terminated or truncated
    assert terminated and info["success"] and total == 1.0
    with pytest.raises(FeedlearnError, match="call reset"):
        env.step(first)
    assert twin.oracle_action() in twin._obs.choices  # the copy plays on by itself


def test_the_horizon_truncates_without_success():
    env = EnvFactory(_settings(max_steps=1)).make("test", 2)
    obs, _ = env.reset(seed=0)
    wrong = [c for c in obs.choices if c != env.oracle_action()] or obs.choices
    *_, terminated, truncated, info = env.step(wrong[0])
    assert truncated and not terminated and not info["success"]


def test_the_scripted_teacher_plays_textworld_with_reflections_and_recoveries():
    env = EnvFactory(_settings(max_steps=12)).make("train", 2)
    steps = teacher_episodes(env, 2, seed=0, negatives=2)
    assert {s.kind for s in steps} >= {"oracle", "recovery"}
    for s in steps:
        assert f"so {s.oracle} is the best move" in s.reflection and s.action in s.choices
    recovery = next(s for s in steps if s.kind == "recovery")
    assert recovery.reflection.startswith(f"My last move {recovery.mistake}")


def test_levels_are_checked():
    with pytest.raises(ConfigError, match="levels are 1 to 300"):
        _settings(level=301)
    with pytest.raises(ConfigError, match="no levels"):
        _settings(family="simple", level=3)
    factory = EnvFactory(_settings())
    assert factory.default_level == 2
    with pytest.raises(ConfigError, match="levels are 1 to 300"):
        factory.check_level("dropoff")


def test_bad_challenge_options_name_the_family():
    s = _settings(family="cooking", level=1, options={"recipe": "many"})
    with pytest.raises(ConfigError, match="TextWorld cooking"):
        _game(s, 1, "train", 0)


def test_reflect_rl_runs_on_textworld_games(tmp_path):
    """Teacher data, SFT, RL and evaluation on generated coin collector games."""
    from test_reflect_rl import recipe

    from feedlearn.data.store import open_run
    from feedlearn.methods.reflect_rl.stages import ReflectRL

    env = {
        "name": "textworld",
        "family": "coin_collector",
        "level": 2,
        "games": 2,
        "test_games": 2,
        "max_steps": 8,
    }
    config = recipe(
        tmp_path,
        env=env,
        sft={"learning_rate": 3e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "max_length": 512},
    )
    method = ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)
    method.run()
    assert all("is the best move" in s.reflection for s in method.teacher_steps())
    metrics = method.evaluate("rl")
    assert metrics["episodes"] == 3 and 0 <= metrics["success"] <= 100
