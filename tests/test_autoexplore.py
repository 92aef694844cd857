"""AutoExplore: task generation, costs, the oracle, hiding, and above all the sandbox."""

import os
import random

import pytest

from feedlearn.envs.autoexplore import (
    AutoExplore,
    AutoExploreSettings,
    ExploreTask,
    generate_tasks,
    listed_files,
    select_depth,
)
from feedlearn.errors import FeedlearnError

SECRET = "TOP-SECRET-7f3a9"

FILES = {
    "README.md": "# Demo\n",
    "main.py": "import os\n\ndef main():\n    pass\n\nclass App:\n    def run(self):\n        pass\n",
    "config.yaml": "learning_rate: 0.1\nmodel:\n  name: tiny\n",
    "weird name ü.py": "def odd_func():\n    pass\n",
    "data/meta.json": '{"vocab_size": 10, "model": "x"}',
    "docs/guide.md": "x" * 3000,
    "src/utils.py": "def helper():\n    pass\n\ndef shared():\n    pass\n",
    "src/core/engine.py": "class Engine:\n    pass\n\nasync def run_async():\n    pass\n\n"
    "def shared():\n    pass\n",
    "src/core/settings.toml": "[train]\nepochs = 3\n",
    # never listed: odd names
    "back\\slash.py": "def backslash_fn():\n    pass\n",
    "tilde~.py": "def tilde_fn():\n    pass\n",
    ".hidden.py": "def hidden_fn():\n    pass\n",
    "new\nline.py": "def newline_fn():\n    pass\n",
}
EXPECTED = {  # question -> (target, depth)
    "Which file defines the function `main`?": ("main.py", 0),
    "Which file defines the class `App`?": ("main.py", 0),
    "Which file sets the configuration key `learning_rate`?": ("config.yaml", 0),
    "Which file defines the function `odd_func`?": ("weird name ü.py", 0),
    "Which file sets the configuration key `vocab_size`?": ("data/meta.json", 1),
    "Which file defines the function `helper`?": ("src/utils.py", 1),
    "Which file defines the class `Engine`?": ("src/core/engine.py", 2),
    "Which file defines the function `run_async`?": ("src/core/engine.py", 2),
    "Which file sets the configuration key `epochs`?": ("src/core/settings.toml", 2),
}


@pytest.fixture
def repo(tmp_path):
    """A small repository next to an outside folder holding a secret, with links and odd files."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "dir" / "leak.py").write_text(f"def outside_fn():\n    return '{SECRET}'\n")
    (tmp_path / "secret.txt").write_text(SECRET)
    root = tmp_path / "repo"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    (root / "blob.txt").write_bytes(b"abc\x00\xff\xfe" * 10)
    (root / "link_secret.txt").symlink_to(outside / "secret.txt")
    (root / "src" / "link_dir").symlink_to(outside / "dir", target_is_directory=True)
    return root


def make_env(repo, **settings) -> AutoExplore:
    return AutoExplore(repo, settings=AutoExploreSettings(**settings))


def task_for(question: str) -> ExploreTask:
    target, depth = EXPECTED[question]
    return ExploreTask(question=question, targets=[target], depth=depth)


def test_generate_tasks_finds_definitions_and_keys_skipping_ambiguous_and_unlisted(repo):
    tasks = generate_tasks(repo, seed=0)
    assert {t.question: (*t.targets, t.depth) for t in tasks} == EXPECTED
    kinds = {t.question: t.kind for t in tasks}
    assert kinds["Which file defines the class `App`?"] == "class"
    assert kinds["Which file sets the configuration key `epochs`?"] == "config"
    # `shared` and `model` are defined in two files; `run` is a method; outside/odd-named files are unread
    text = " ".join(t.question for t in tasks)
    for name in (
        "shared",
        "model",
        "run`",
        "outside_fn",
        "backslash_fn",
        "tilde_fn",
        "hidden_fn",
        "newline_fn",
    ):
        assert name not in text


def test_generate_tasks_is_deterministic_per_seed_and_filters_depth(repo):
    first, again, other = (generate_tasks(repo, seed=s) for s in (0, 0, 1))
    assert first == again
    assert [t.question for t in first] != [t.question for t in other]
    assert sorted(t.question for t in first) == sorted(t.question for t in other)
    shallow = generate_tasks(repo, seed=0, max_depth=1)
    assert {t.depth for t in shallow} == {0, 1} and len(shallow) == 6
    assert {t.depth for t in select_depth(first, depth=2)} == {2}
    assert {t.depth for t in make_env(repo, depth=1).tasks} == {1}
    with pytest.raises(FeedlearnError, match="no tasks"):
        make_env(repo, depth=5)


def test_observation_shows_task_folder_listing_history_and_output(repo):
    env = make_env(repo)
    obs, info = env.reset(options={"task": task_for("Which file defines the class `Engine`?")})
    assert info["level"] == 2
    assert obs.state.splitlines()[:4] == [
        "Task: Which file defines the class `Engine`?",
        "Current directory: /",
        "Folders: data, docs, src",
        "Files: README.md, blob.txt, config.yaml, logo.png, main.py, weird name ü.py",
    ]
    assert "cat logo.png" not in obs.choices and "id logo.png" in obs.choices
    assert "cd .." not in obs.choices
    obs, *_ = env.step("cd src")
    obs, *_ = env.step("cat utils.py")
    assert "Current directory: /src\n" in obs.state
    assert "History: cd src; cat utils.py" in obs.state
    assert obs.state.endswith("Last output:\n" + FILES["src/utils.py"])
    assert obs.choices[:3] == ["cd ..", "cd core", "cat utils.py"]


def test_oracle_solves_every_task_with_negative_cost(repo):
    env = make_env(repo, hide_unrelated=0.5)
    for task in generate_tasks(repo, seed=0):
        env.reset(options={"task": task})
        done, steps = False, 0
        while not done:
            _, _, terminated, truncated, info = env.step(env.oracle_action())
            done, steps = terminated or truncated, steps + 1
        assert terminated and info["success"] and steps == task.depth + 1
        assert info["total_cost"] == task.depth + 1 - 15


def test_oracle_walks_back_up_from_a_wrong_folder(repo):
    env = make_env(repo)
    env.reset(options={"task": task_for("Which file defines the function `helper`?")})
    env.step("cd docs")
    assert env.oracle_action() == "cd .."
    env.step("cd ..")
    assert env.oracle_action() == "cd src"


def test_wrong_answer_costs_15_and_fails(repo):
    env = make_env(repo)
    env.reset(options={"task": task_for("Which file defines the function `helper`?")})
    obs, reward, terminated, truncated, info = env.step("id main.py")
    assert (reward, terminated, truncated, info["success"]) == (-16, True, False, False)
    assert "main.py is not the answer." in obs.state and obs.choices == []
    with pytest.raises(FeedlearnError, match="reset"):
        env.step("id main.py")


def test_errors_and_warnings_cost_extra(repo):
    env = make_env(repo)
    env.reset(options={"task": task_for("Which file defines the function `main`?")})
    obs, reward, *_, info = env.step("cat blob.txt")
    assert reward == -3 and info["error"] and "Error: blob.txt is a binary file" in obs.state
    assert env.step("cat README.md")[1] == -1
    obs, reward, *_, info = env.step("cat README.md")
    assert reward == -2 and info["warning"] and "Warning: you read this file before." in obs.state
    assert info["total_cost"] == 6 and not info["success"]


def test_truncated_at_max_steps(repo):
    env = make_env(repo, max_steps=3)
    env.reset(options={"task": task_for("Which file defines the function `main`?")})
    for expected in (False, False, True):
        obs, reward, terminated, truncated, info = env.step("cd src" if "cd src" in env.choices else "cd ..")
        assert (terminated, truncated) == (False, expected)
    assert obs.choices == [] and not info["success"]
    # as in the reference, running out of steps costs what a wrong answer does: 15 on top of the step
    assert (reward, info["cost"], info["total_cost"]) == (-16, 16, 18)


def test_timeout_cost_is_an_option(repo):
    env = make_env(repo, max_steps=2, timeout_cost=0)
    env.reset(options={"task": task_for("Which file defines the function `main`?")})
    env.step("cd src")
    _, reward, _, truncated, info = env.step("cd ..")
    assert truncated and (reward, info["total_cost"]) == (-1, 2)


def test_cat_output_is_truncated_with_a_marker(repo):
    env = make_env(repo, max_output_chars=100)
    env.reset(options={"task": task_for("Which file defines the function `main`?")})
    env.step("cd docs")
    obs, *_ = env.step("cat guide.md")
    assert obs.state.endswith("Last output:\n" + "x" * 100 + "\n[... truncated to 100 characters]")


ESCAPES = [
    "cd ..",
    "cd ../..",
    "cat /etc/passwd",
    "cat ../secret.txt",
    "cat a/../../x",
    "cat link_secret.txt",
    "id link_secret.txt",
    "cat src/link_dir/leak.py",
    "cat ~/secret.txt",
    "cat tilde~.py",
    "cat back\\slash.py",
    "cat .hidden.py",
    "cat x\x00y.py",
    "cat new\nline.py",
    "id ../outside/secret.txt",
    "rm -rf /",
]


@pytest.mark.parametrize("action", ESCAPES)
def test_escapes_are_not_offered_and_refused(repo, action):
    env = make_env(repo)
    obs, _ = env.reset(options={"task": task_for("Which file defines the function `helper`?")})
    assert action not in obs.choices
    with pytest.raises(FeedlearnError, match="not one of the current choices"):
        env.step(action)
    obs, *_ = env.step("cd src")
    assert "cd link_dir" not in obs.choices and "link_dir" not in obs.state


def test_random_walks_never_see_outside_or_unlisted_files(repo):
    env = make_env(repo, hide_unrelated=0.5)
    rng = random.Random(0)
    for episode in range(40):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            for hidden in (SECRET, "outside_fn", "link_", "leak.py", "tilde", "slash", "hidden", "line.py"):
                assert hidden not in obs.state and not any(hidden in c for c in obs.choices)
            obs, _, terminated, truncated, _ = env.step(rng.choice(obs.choices))
            done = terminated or truncated


def test_paths_turned_into_links_after_listing_are_refused(repo, tmp_path):
    env = make_env(repo)
    env.reset(options={"task": task_for("Which file defines the function `helper`?")})
    swaps = {
        "cat README.md": lambda: os.remove(repo / "README.md"),
        "cd docs": lambda: os.rename(repo / "docs", tmp_path / "docs-moved"),
    }
    for action, remove in swaps.items():
        assert action in env.choices  # offered from the listing taken before the swap
        remove()
        (repo / action.split()[1]).symlink_to(
            tmp_path / "outside" / ("dir" if "cd" in action else "secret.txt")
        )
        obs, reward, *_, info = env.step(action)
        assert reward == -3 and info["error"] and "Current directory: /\n" in obs.state
        assert SECRET not in obs.state and "leak.py" not in obs.state and action not in obs.choices
    env.step("cd src")  # the current folder becomes a link: it is no longer listed nor entered
    os.rename(repo / "src", tmp_path / "src-moved")
    (repo / "src").symlink_to(tmp_path / "outside" / "dir", target_is_directory=True)
    obs, reward, *_ = env.step("cd core")
    assert reward == -3 and obs.choices == ["cd .."] and "Folders: (none)\nFiles: (none)" in obs.state
    assert "leak.py" not in obs.state


@pytest.mark.parametrize(
    "target", ["../secret.txt", "/etc/passwd", "link_secret.txt", "src/link_dir/leak.py"]
)
def test_tasks_targeting_outside_files_are_refused(repo, target):
    task = ExploreTask(question="Where?", targets=[target], depth=0)
    with pytest.raises(FeedlearnError, match="not a listed file"):
        AutoExplore(repo, tasks=[task])
    with pytest.raises(FeedlearnError, match="not a listed file"):
        make_env(repo).reset(options={"task": task})


def test_hide_unrelated_hides_only_entries_off_the_target_path(repo):
    task = task_for("Which file defines the class `Engine`?")
    env = make_env(repo, hide_unrelated=1.0)
    env.reset(options={"task": task})
    assert (env.dirs, env.files) == (["src"], [])
    env.step("cd src")
    assert (env.dirs, env.files) == (["core"], [])
    env.step("cd core")
    assert (env.dirs, env.files) == ([], ["engine.py"])

    env = make_env(repo, hide_unrelated=0.5)
    shown = set()
    for seed in range(20):
        env.reset(seed=seed, options={"task": task})
        assert "src" in env.dirs
        shown.add(tuple(env.files))
    assert len(shown) > 1

    env = make_env(repo)
    env.reset(options={"task": task})
    assert env.dirs == ["data", "docs", "src"] and len(env.files) == 6


def test_an_unreadable_folder_is_shown_empty_and_said_once(tmp_path, caplog):
    from feedlearn.envs import autoexplore

    missing = str(tmp_path / "gone")
    with caplog.at_level("WARNING", logger="feedlearn.envs.autoexplore"):
        assert autoexplore._entries(missing) == ([], [])
        assert autoexplore._entries(missing) == ([], [])
    said = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(said) == 1 and missing in said[0] and "No such file" in said[0]


def test_a_right_answer_on_the_last_step_that_costs_0_in_all_succeeds(repo):
    """The reference's success is a total cost below 0.01: 14 moves and a right answer cost exactly 0."""
    env = make_env(repo, max_steps=15)
    env.reset(options={"task": task_for("Which file defines the function `main`?")})
    for _ in range(7):
        env.step("cd src")
        env.step("cd ..")
    _, _, terminated, truncated, info = env.step("id main.py")
    assert (terminated, truncated, info["total_cost"], info["success"]) == (True, False, 0, True)


def test_a_repository_nested_1200_folders_deep_is_listed_without_hitting_the_recursion_limit(tmp_path):
    folders = [tmp_path]
    for _ in range(1200):  # one at a time: mkdir(parents=True) itself recurses
        folders.append(folders[-1] / "d")
        folders[-1].mkdir()
    (folders[-1] / "bottom.py").write_text("def at_the_bottom():\n    pass\n")
    (tmp_path / "top.py").write_text("def at_the_top():\n    pass\n")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # JSON nested past the parser's limit
    try:
        assert listed_files(str(tmp_path)) == ["deep.json", "top.py", "d/" * 1200 + "bottom.py"]
        (task,) = [t for t in generate_tasks(tmp_path) if "at_the_bottom" in t.question]
        assert task.depth == 1200
    finally:  # bottom up: shutil.rmtree (pytest's cleanup of old tmp folders) recurses too
        (folders[-1] / "bottom.py").unlink()
        for folder in reversed(folders[1:]):
            folder.rmdir()
