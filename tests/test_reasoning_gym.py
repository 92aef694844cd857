"""reasoning-gym problem sets for RISE: export, the train/test split, its own answer check as the reward."""

import builtins
import json

import pytest

from feedlearn.config import load_recipe
from feedlearn.envs.math_env import MathEnv, MathPrompt
from feedlearn.errors import ConfigError, DataError, FeedlearnError
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.tasks.reasoning_gym_data import ReasoningGymSettings, export_problems, load_reasoning_gym

pytest.importorskip("reasoning_gym")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))


def test_train_and_test_share_no_question_and_the_export_is_cached(monkeypatch):
    settings = ReasoningGymSettings(task="basic_arithmetic", size=40, seed=3)
    train, test = load_reasoning_gym(settings, "train"), load_reasoning_gym(settings, "test")
    assert len(train) == len(test) == 40
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(p.source == "reasoning_gym:basic_arithmetic" and p.reasoning_gym for p in train)
    other = load_reasoning_gym(ReasoningGymSettings(task="basic_arithmetic", size=40, seed=4), "train")
    assert [p.question for p in other] != [p.question for p in train]
    import reasoning_gym

    monkeypatch.setattr(
        reasoning_gym, "create_dataset", lambda *a, **k: pytest.fail("not read from the cache")
    )
    assert load_reasoning_gym(settings, "train") == train


def test_its_own_check_scores_the_boxed_answer_and_no_answer_is_minus_one():
    problem = load_reasoning_gym(ReasoningGymSettings(task="gsm_symbolic", size=2, seed=7), "train")[0]
    assert problem.solution.endswith(f"#### {problem.answer}")  # its worked solution, for a warm start
    env = MathEnv(problem, MathPrompt(), max_turns=2)
    env.reset()
    assert env.score(f"So the total is \\boxed{{{problem.answer}}}.") == (1.0, problem.answer)
    assert env.score("So the total is \\boxed{123456789}.") == (0.0, "123456789")  # reasoning-gym: 0.01
    assert env.score("I do not know.") == (-1.0, None)


def test_a_rise_recipe_reads_a_reasoning_gym_task(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "method: rise\nmodel: {path: tiny}\n"
        "train_problems: {reasoning_gym: {task: chain_sum, size: 5, seed: 1, "
        "config: {min_terms: 2, max_terms: 3}}}\n"
        "test_problems: {reasoning_gym: {task: chain_sum, size: 3, seed: 1}}\n"
    )
    config = load_recipe(RiseConfig, recipe, [f"run_dir={tmp_path}"])
    problems = config.train_problems.load("train", "train")
    assert len(problems) == 5 and all(2 <= p.reasoning_gym["metadata"]["num_terms"] <= 3 for p in problems)
    with pytest.raises(ConfigError, match="exactly one of"):
        load_recipe(RiseConfig, recipe, [f"run_dir={tmp_path}", "test_problems.path=x.jsonl"])


def test_bad_tasks_and_configs_and_a_damaged_export_are_clear_errors():
    with pytest.raises(ConfigError, match="reasoning_gym task 'no_such_task'"):
        export_problems(ReasoningGymSettings(task="no_such_task", size=2), "train")
    with pytest.raises(ConfigError, match="chain_sum"):
        export_problems(ReasoningGymSettings(task="chain_sum", size=2, config={"min_terms": "many"}), "train")
    settings = ReasoningGymSettings(task="basic_arithmetic", size=2)
    path = export_problems(settings, "test")
    rows = path.read_text().splitlines()
    path.write_text(rows[0] + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DataError, match=f"{path}:2"):
        load_reasoning_gym(settings, "test")


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    real = builtins.__import__

    def no_reasoning_gym(name, *args, **kwargs):
        if name == "reasoning_gym":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_reasoning_gym)
    with pytest.raises(FeedlearnError, match=r"pip install 'feedlearn\[reasoning\]'"):
        export_problems(ReasoningGymSettings(task="basic_arithmetic", size=2), "train")
