"""Reflect-RL beyond the default: AutoExplore runs, curricula, the environment catalog, a teacher model's
reflections and questions, and a remote chat model playing the test episodes (fake backends)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from pydantic import ValidationError

from feedlearn.backends.base import ParsedAsker, SamplingParams
from feedlearn.data.store import open_run
from feedlearn.envs.catalog import AutoExploreEnvSettings, EnvFactory
from feedlearn.envs.taxi import IN_TAXI, DangerousTaxi, TaxiSettings
from feedlearn.errors import ConfigError
from feedlearn.methods.reflect_rl.config import ReflectRLConfig, RemoteAgentSettings, TeacherData
from feedlearn.methods.reflect_rl.stages import ReflectRL
from feedlearn.teachers import reflections
from feedlearn.teachers.reflections import named_move, parse_choice, parse_reflection, propose_tasks
from feedlearn.teachers.scripted import ReflectStep

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 400}
FILES = {
    "README.md": "# Demo\n",
    "main.py": "def main():\n    pass\n",
    "config.yaml": "learning_rate: 0.1\nbatch_size: 4\n",
    "src/utils.py": "def helper():\n    pass\n\ndef parse_args():\n    pass\n",
    "src/models.py": "class Net:\n    pass\n\nclass Head:\n    pass\n",
    "src/core/engine.py": "class Engine:\n    pass\n\ndef start():\n    pass\n",
    "docs/setup.toml": "[build]\nworkers = 2\ncache = 1\n",
}


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "secret.txt").write_text("outside")
    return root


def recipe(tmp_path, env, **overrides) -> ReflectRLConfig:
    config = {
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": "tiny"},
        "tiny": TINY,
        "env": env,
        "teacher": {"episodes": 6, "negatives": 2},
        "sft": {"learning_rate": 3e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "max_length": 512},
        "rl": {"iterations": 2, "episodes_per_iteration": 3, "learning_rate": 1e-2},
        "evaluate": {"episodes": 3},
        "max_reflection_tokens": 8,
    }
    config.update(overrides)
    return ReflectRLConfig.model_validate(config)


def explore_env(repo, **settings) -> dict:
    return {"name": "autoexplore", "root": str(repo), "max_steps": 6, "max_output_chars": 80, **settings}


def method_for(config: ReflectRLConfig) -> ReflectRL:
    return ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the catalog -------------------------------------------------------------------------------------


def test_autoexplore_tasks_split_into_disjoint_train_and_test_and_hiding_is_train_only(repo):
    settings = AutoExploreEnvSettings(**explore_env(repo, test_share=0.4, hide_unrelated=1.0))
    envs = EnvFactory(settings)
    train, test = envs.tasks("train"), envs.tasks("test")
    assert train and test and not {t.question for t in train} & {t.question for t in test}
    assert len(train) + len(test) == 11  # every definition and key of FILES
    assert envs.tasks("test") == EnvFactory(settings).tasks("test")  # the split is a function of the task
    assert envs.make("train").settings.hide_unrelated == 1.0
    assert envs.make("test").settings.hide_unrelated == 0.0
    assert {t.question for t in envs.make("test").tasks} == {t.question for t in test}


def test_levels_are_checked_per_environment(repo, tmp_path):
    taxi = EnvFactory(ReflectRLConfig.model_validate({"model": {"path": "tiny"}}).env)
    assert taxi.default_level == "full"
    assert taxi.make("train", "pickup").settings.level == "pickup"
    with pytest.raises(ConfigError, match="no level 'upside-down'"):
        taxi.make("train", "upside-down")
    explore = EnvFactory(AutoExploreEnvSettings(**explore_env(repo, test_share=0.0)))
    assert {t.depth for t in explore.make("train", 2).tasks} == {2}
    with pytest.raises(ConfigError, match="no training task at depth 5"):
        explore.check_level(5)
    with pytest.raises(ConfigError, match="target depths"):
        explore.check_level("full")
    with pytest.raises(ConfigError, match="not a folder"):
        EnvFactory(AutoExploreEnvSettings(**explore_env(tmp_path / "missing"))).tasks("train")


def test_recipes_name_their_environment_and_refuse_what_it_cannot_do(repo):
    base = {"model": {"path": "tiny"}}
    with pytest.raises(ValidationError, match="name"):
        ReflectRLConfig.model_validate({**base, "env": {"level": "full"}})
    with pytest.raises(ValidationError, match="no template reflections"):
        ReflectRLConfig.model_validate({**base, "env": {"name": "alfworld", "config": "a.yaml"}})
    with pytest.raises(ValidationError, match="need a teacher model"):
        ReflectRLConfig.model_validate({**base, "teacher": {"reflections": "llm"}})
    with pytest.raises(ValidationError, match="not AutoExplore"):
        ReflectRLConfig.model_validate({**base, "teacher": {"tasks": 3, "local": {"path": "m"}}})


# ---- runs --------------------------------------------------------------------------------------------


def test_tiny_autoexplore_run_trains_on_train_tasks_and_evaluates_on_held_out_ones(tmp_path, repo):
    config = recipe(tmp_path, explore_env(repo, test_share=0.3, hide_unrelated=0.5))
    method = method_for(config)
    method.run()
    test_questions = {t.question for t in method.envs.tasks("test")}
    steps = lines(method.store.path / "teacher" / "steps.jsonl")
    assert steps and not {s["state"].splitlines()[0].removeprefix("Task: ") for s in steps} & test_questions
    episodes = lines(method.store.path / "rl" / "episodes.jsonl")
    assert len(episodes) == 2 * 3
    assert all(re.fullmatch(r"(cd|cat|id) \S.*", a) for e in episodes for a in e["actions"])
    metrics = method.evaluate("rl")
    assert metrics["episodes"] == 3
    shown = [
        e
        for e in lines(method.store.path / "evaluate" / "rl" / "episodes.jsonl")
        if e["id"].startswith("all-")
    ]
    assert len(shown) == 3
    assert metrics["success"] == pytest.approx(100 * sum(e["success"] for e in shown) / 3)
    assert metrics["without_reflection"]["episodes"] == 3


def test_a_taxi_curriculum_spreads_teacher_data_and_iterations_over_its_levels(tmp_path):
    config = recipe(
        tmp_path,
        {"name": "taxi", "level": "full", "max_steps": 15},
        rl={"iterations": 4, "episodes_per_iteration": 2, "curriculum": ["pickup", "dropoff"]},
        evaluate={"episodes": 2, "levels": ["pickup", "full"]},
        reflection=False,
    )
    method = method_for(config)
    method.sft()
    method.rl()
    steps = lines(method.store.path / "teacher" / "steps.jsonl")
    aboard = ["Passenger: in the taxi" in s["state"] for s in steps if s["step"] == 0]
    assert any(aboard) and not all(aboard)  # pickup episodes start without, dropoff ones with the passenger
    levels = [e["level"] for e in lines(method.store.path / "rl" / "episodes.jsonl")]
    assert levels == ["pickup"] * 4 + ["dropoff"] * 4
    metrics = method.evaluate("rl")
    assert set(metrics["levels"]) == {"pickup", "full"} and metrics["episodes"] == 4
    bad = recipe(tmp_path / "bad", {"name": "taxi"}, rl={"curriculum": ["pickup", "moon"]}, reflection=False)
    with pytest.raises(ConfigError, match="no level 'moon'"):
        method_for(bad).teacher_steps()


# ---- a teacher model ---------------------------------------------------------------------------------


class FakeBackend:
    """Replies with `reply(prompt, attempt)`; counts the prompts it was asked."""

    def __init__(self, reply):
        self.reply = reply
        self.asked: dict[str, int] = {}

    def generate(self, conversations, n, sampling, keys=None):
        out = []
        for conv in conversations:
            prompt = conv[-1]["content"]
            self.asked[prompt] = self.asked.get(prompt, 0) + 1
            out.append([self.reply(prompt, self.asked[prompt])])
        return out


def best_move(prompt: str) -> str:
    return re.search(r"The best action here is: (.+)", prompt).group(1)


def test_llm_reflections_replace_templates_are_retried_and_survive_an_interruption(tmp_path, monkeypatch):
    counter = itertools.count()

    def reply(prompt, attempt):
        if next(counter) % 4 == 0:
            return ""  # garbage, asked again
        return f"Looking at the grid, {best_move(prompt)} gets me closer. Choose {best_move(prompt)}."

    fake = FakeBackend(reply)
    monkeypatch.setattr(TeacherData, "build", lambda self, batch_size, seed, replies: fake)
    monkeypatch.setattr(reflections, "REFLECTION_CHUNK", 4)
    teacher = {"episodes": 3, "negatives": 1, "reflections": "llm", "local": {"path": "unused"}}
    config = recipe(tmp_path, {"name": "taxi", "level": "dropoff"}, teacher=teacher)
    method = method_for(config)

    calls, real = 0, reflections.llm_reflections

    def stop_after_two_chunks(asker, chunk):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real(asker, chunk)

    monkeypatch.setattr(reflections, "llm_reflections", stop_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        method.teacher_steps()
    saved = lines(method.store.path / "teacher" / "reflections.jsonl")
    assert len(saved) == 8  # two chunks of 4, kept
    monkeypatch.setattr(reflections, "llm_reflections", real)
    asked_before = sum(fake.asked.values())
    steps = method.teacher_steps()
    assert all(s.reflection.startswith("Looking at the grid") and s.oracle in s.reflection for s in steps)
    stats = json.loads((method.store.path / "teacher" / "stats.json").read_text())
    assert stats["garbage_replies"] > 0  # some replies were garbage, and asked again
    # after the interruption only the steps without a saved reflection were asked (plus their retries)
    assert sum(fake.asked.values()) - asked_before == len(steps) - 8 + stats["garbage_replies"]
    assert stats["skipped"] == 0


def test_teacher_reflections_that_never_parse_keep_the_template(tmp_path, monkeypatch):
    fake = FakeBackend(lambda prompt, attempt: "I have no idea.")
    monkeypatch.setattr(TeacherData, "build", lambda self, batch_size, seed, replies: fake)
    teacher = {"episodes": 2, "negatives": 0, "reflections": "llm", "local": {"path": "m"}, "max_attempts": 2}
    method = method_for(recipe(tmp_path, {"name": "taxi", "level": "dropoff"}, teacher=teacher))
    steps = method.teacher_steps()
    assert steps and all("is the best move" in s.reflection for s in steps)  # the templates
    stats = json.loads((method.store.path / "teacher" / "stats.json").read_text())
    assert stats["skipped"] == len(steps) and stats["garbage_replies"] == 2 * len(steps)


def test_parse_reflection_and_choice_treat_replies_as_data():
    step = ReflectStep(
        episode="e", step=0, state="s", choices=["north", "south"], reflection="", action="north",
        oracle="north", kind="oracle", train_policy=True,
    )  # fmt: skip
    assert parse_reflection("  Go North now.  ", step) == "Go North now."
    assert parse_reflection("", step) is None and parse_reflection("go south", step) is None
    assert len(parse_reflection("north " * 500, step).split()) == 100
    taxi = ["south", "north", "east", "west", "pickup", "dropoff"]
    assert named_move("My last move west took me away. So north is the best move.", taxi) == "north"
    assert named_move("NORTH! no: southeast... pickup", taxi) == "pickup"  # whole words, any case
    assert named_move("I cannot tell.", taxi) is None
    assert named_move("so cd app is the best move", ["cd app", "cd app2", "cat app.py"]) == "cd app"
    labels = ["1", "2", "3"]
    assert parse_choice("I pick 1... Action: 1\nno wait\nAction: **3**", labels) == 2
    assert parse_choice("action : 2", labels) == 1
    assert parse_choice("Action: 4", labels) is None and parse_choice("__import__('os')", labels) is None


def test_a_teacher_writes_autoexplore_questions_about_files_inside_the_repository(repo):
    def reply(prompt, attempt):
        if "engine.py" in prompt and attempt == 1:
            return "no question here"
        return "QUESTION: Which file holds this code?"

    asker = ParsedAsker(FakeBackend(reply), SamplingParams(), max_attempts=2)
    tasks = propose_tasks(asker, str(repo), n=4, seed=0)
    assert 1 <= len(tasks) <= 4 and all(t.kind == "other" and t.question.endswith("?") for t in tasks)
    assert all((repo / t.targets[0]).is_file() for t in tasks)
    assert all(t.depth == t.targets[0].count("/") for t in tasks)


# ---- a remote chat model -----------------------------------------------------------------------------


def oracle_reply(prompt: str, attempt: int) -> str:
    """A chat model that plays DangerousTaxi's dropoff level perfectly (from the state's summary line)."""
    row, col, drow, dcol = map(
        int, re.search(r"row (\d), column (\d)\..*row (\d), column (\d)", prompt).groups()
    )
    env = DangerousTaxi(TaxiSettings(level="dropoff"))
    env.reset(seed=0)
    dest = env.taxi.locs.index((drow, dcol))
    env.taxi_state, env.running = env.taxi.encode(row, col, IN_TAXI, dest), True
    move = env.oracle_action()
    label = re.search(rf"^(\w)\. {move}$", prompt, re.M).group(1)
    return f"The passenger is aboard, so I head for the destination.\nAction: {label}"


def test_a_remote_model_plays_the_test_episodes_and_invalid_turns_fail_them(tmp_path, monkeypatch):
    fakes = iter([FakeBackend(oracle_reply), FakeBackend(lambda prompt, attempt: "Action: 9")])
    monkeypatch.setattr(RemoteAgentSettings, "build", lambda self, batch_size, seed, replies: next(fakes))
    env = {"name": "taxi", "level": "dropoff"}
    remote = {"episodes": 5, "remote": {"local": {"path": "unused"}}}
    good = method_for(recipe(tmp_path / "a", env, evaluate=remote))
    metrics = good.evaluate_remote()
    assert metrics["success"] == 100.0 and metrics["invalid"] == 0 and metrics["episodes"] == 5
    logged = lines(good.store.path / "evaluate" / "remote" / "episodes.jsonl")
    assert all(r["reflections"][0].startswith("The passenger is aboard") for r in logged)
    bad = method_for(recipe(tmp_path / "b", env, evaluate=remote)).evaluate_remote()
    assert bad["success"] == 0.0 and bad["invalid"] == 5
    with pytest.raises(ConfigError, match="evaluate.remote"):
        method_for(recipe(tmp_path / "c", env)).evaluate_remote()


# ---- ALFWorld, through a stand-in of the alfworld package --------------------------------------------


class FakeGames:
    """alfworld's batch env API; a game is won after the two expert steps, each offered among others."""

    PLAN = ["go to countertop 1", "take mug 1 from countertop 1"]

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return ["You are in a kitchen. Your task is to: take the mug."], self.info()

    def info(self):
        return {
            "admissible_commands": [["look", "help", "inventory", self.PLAN[min(self.t, 1)]]],
            "won": [self.t >= 2],
            "extra.expert_plan": [self.PLAN[self.t :]],
            "extra.gamefile": ["game-1"],
        }

    def step(self, actions):
        self.t += 1 if actions[0] == self.PLAN[min(self.t, 1)] else 0
        done = self.t >= 2
        return [f"You did: {actions[0]}"], [1.0 if done else 0.0], [done], self.info()


def test_alfworld_runs_with_a_teacher_models_reflections(tmp_path, monkeypatch):
    import sys
    import types

    environment = types.ModuleType("alfworld.agents.environment")
    environment.get_environment = lambda kind: (
        lambda config, train_eval: types.SimpleNamespace(init_env=lambda batch_size: FakeGames())
    )
    for name in ("alfworld", "alfworld.agents"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "alfworld.agents.environment", environment)
    (tmp_path / "alfworld.yaml").write_text("env: {type: AlfredTWEnv}\n")
    fake = FakeBackend(lambda prompt, attempt: f"The mug is near, so: {best_move(prompt)}.")
    monkeypatch.setattr(TeacherData, "build", lambda self, batch_size, seed, replies: fake)
    config = recipe(
        tmp_path,
        {"name": "alfworld", "config": str(tmp_path / "alfworld.yaml"), "max_steps": 4},
        teacher={"episodes": 4, "negatives": 0, "reflections": "llm", "local": {"path": "unused"}},
    )
    method = method_for(config)
    method.run()
    steps = method.teacher_steps()
    assert steps and all(s.reflection.startswith("The mug is near") for s in steps)
    assert method.evaluate("rl")["episodes"] == 3
    with pytest.raises(Exception, match="no recovery negatives for ALFWorld"):
        method_for(
            recipe(
                tmp_path / "neg",
                config.env.model_dump(),
                teacher={**config.teacher.model_dump(), "negatives": 1},
            )
        ).teacher_steps()


def test_levels_share_the_iterations_by_their_training_tasks_and_depths_can_merge(tmp_path, repo):
    """The reference's depth curriculum: levels in proportion to their tasks; merge_first_two as [0, 1]."""
    env = explore_env(repo, test_share=0.0)  # 3 tasks at depth 0, 6 at depth 1, 2 at depth 2
    rl = {"iterations": 11, "curriculum": [[0, 1], 2]}
    method = method_for(recipe(tmp_path, env, rl=rl))
    levels = method.levels(method.config.rl.curriculum)
    assert levels == [(0, 1), 2]
    assert {t.depth for t in method.envs.make("train", (0, 1)).tasks} == {0, 1}
    assert method.level_schedule(levels) == [(0, 1)] * 9 + [2] * 2
    equal = method_for(recipe(tmp_path / "equal", env, rl={**rl, "curriculum_share": "equal"}))
    assert equal.level_schedule(levels) == [(0, 1)] * 6 + [2] * 5
    taxi = method_for(recipe(tmp_path / "taxi", {"name": "taxi"}, rl={"iterations": 4}))
    assert taxi.level_schedule(["pickup", "dropoff", "full"]) == ["pickup"] * 2 + ["dropoff", "full"]
    with pytest.raises(ConfigError, match="lists of them"):
        method.envs.check_level(())


def test_the_replay_buffer_is_emptied_when_the_curriculum_moves_on(tmp_path, monkeypatch):
    from feedlearn.methods.reflect_rl.rollout import Step

    seen = []

    def iteration(self, learner, reflector, number, level):  # no play: what the loop hands each iteration
        seen.append((number, level, len(learner.replay)))
        learner.replay.append([Step([1, 2], 6, 0, 1.0)])
        return [], {"charts/success": 0.0}

    monkeypatch.setattr(ReflectRL, "_rl_iteration", iteration)
    rl = {"iterations": 4, "episodes_per_iteration": 2, "curriculum": ["pickup", "dropoff"]}
    method = method_for(recipe(tmp_path, {"name": "taxi"}, rl=rl, reflection=False))
    method.sft()
    method.rl()
    assert seen == [(1, "pickup", 0), (2, "pickup", 1), (3, "dropoff", 0), (4, "dropoff", 1)]
