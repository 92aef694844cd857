"""RISE stages: rollouts with a scripted backend, a killed collect that resumes, a tiny real run, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from feedlearn.backends.base import SamplingParams
from feedlearn.cli import main
from feedlearn.data.jsonl import read_jsonl
from feedlearn.data.records import Episode, SFTExample
from feedlearn.data.store import RunStore, open_run
from feedlearn.errors import FeedlearnError
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.methods.rise.layout import RiseLayout
from feedlearn.methods.rise.stages import Rise
from feedlearn.tasks.math_data import MathProblem

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2, "vocab_size": 300}
RETRY = "Incorrect. Again: {question}"


def rise_config(tmp_path: Path, **overrides) -> RiseConfig:
    """A small RISE config built in code (synthetic problems, a tiny model), with top-level overrides."""
    data = {
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": "tiny"},
        "tiny": TINY,
        "prompt": {"retry_message": RETRY},
        "train_problems": {"synthetic": {"n": 10, "seed": 1, "levels": [1]}},
        "test_problems": {"synthetic": {"n": 4, "seed": 2, "levels": [1]}},
        "collect": {"turns": [{"n": 1}, {"n": 3}], "max_new_tokens": 16},
    }
    data.update(overrides)
    return RiseConfig.model_validate(data)


# --- _rollout with a scripted backend --------------------------------------------------------------------


class ScriptedBackend:
    """A `Backend` that answers from a script: `script[key]` is the list of n samples for the conversation
    whose first message contains `key`. Every call is recorded."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[list, int, SamplingParams]] = []

    def generate(self, conversations, n, sampling, keys=None):
        self.calls.append(([list(c) for c in conversations], n, sampling))
        replies = []
        for conv in conversations:
            (key,) = [k for k in self.script if k in conv[0]["content"]]
            samples = self.script[key]
            assert len(samples) == n, f"{key}: scripted {len(samples)} samples, asked for {n}"
            replies.append(list(samples))
        return replies

    def keys_asked(self, call: int = 0) -> list[str]:
        convs = self.calls[call][0]
        return [k for c in convs for k in self.script if k in c[0]["content"]]


def problem(key: str, answer: str) -> MathProblem:
    return MathProblem(id=key, question=f"What is {key}?", answer=answer, source="test")


DEGENERATE = "x " * 151 + r"\boxed{9}"  # would be correct, but repeats a word 151 times

PROBLEMS = [problem("qa", "5"), problem("qb", "7"), problem("qc", "9"), problem("qd", "3")]
TURN1 = {"qa": [r"\boxed{5}"], "qb": [r"\boxed{0}"], "qc": [""], "qd": [r"\boxed{1}"]}
TURN2 = {
    "qa": [r"\boxed{5}"] * 3,  # never asked: qa is solved at turn 1
    "qb": ["no answer", r"first \boxed{7}", r"second \boxed{7}"],  # first best wins
    "qc": [DEGENERATE, r"\boxed{0}", ""],  # degenerate dropped; best of the rest is wrong
    "qd": [DEGENERATE, DEGENERATE, DEGENERATE],  # nothing left: an empty action
}


def rollout(tmp_path, problems=PROBLEMS, scripts=(TURN1, TURN2), collect=None, **config):
    turns = [{"n": len(next(iter(s.values())))} for s in scripts]
    cfg = rise_config(tmp_path, collect={"turns": turns, **(collect or {})}, **config)
    rise = Rise(cfg, RunStore(tmp_path / "runs", "r"), progress=False)
    backends = [ScriptedBackend(s) for s in scripts]
    sampling = SamplingParams(temperature=0.7, max_new_tokens=16)
    return rise, rise._rollout(problems, backends, sampling, iteration=1), backends, sampling


def test_rollout_episodes(tmp_path):
    rise, episodes, (b1, b2), sampling = rollout(tmp_path)
    prompt = rise.config.prompt
    by_id = {e.id: e for e in episodes}
    assert [e.id for e in episodes] == ["qa", "qb", "qc", "qd"]
    assert all(e.task_id == e.id for e in episodes)
    for p in PROBLEMS:
        assert [(m.role, m.content) for m in by_id[p.id].prompt] == [
            ("user", prompt.first_message(p.question))
        ]

    # turn count, and stop at success
    assert [len(by_id[k].turns) for k in ["qa", "qb", "qc", "qd"]] == [1, 2, 2, 2]

    qa = by_id["qa"].turns[0]
    assert (qa.action, qa.reward, qa.answer, qa.feedback, qa.sample_rewards) == (
        r"\boxed{5}",
        1.0,
        "5",
        None,
        [1.0],
    )

    # wrong at turn 1: the retry message (with the question) is the feedback
    qb1, qb2 = by_id["qb"].turns
    assert (qb1.action, qb1.reward, qb1.answer) == (r"\boxed{0}", 0.0, "0")
    assert qb1.feedback == RETRY.format(question="What is qb?")
    # best of 3: the first highest-reward sample; the last turn has no feedback
    assert (qb2.action, qb2.reward, qb2.answer, qb2.feedback) == (r"first \boxed{7}", 1.0, "7", None)
    assert qb2.sample_rewards == [-1.0, 1.0, 1.0]

    # an empty action scores -1; the degenerate (but correct) sample is dropped before scoring
    qc1, qc2 = by_id["qc"].turns
    assert (qc1.action, qc1.reward, qc1.answer) == ("", -1.0, None)
    assert qc1.feedback == RETRY.format(question="What is qc?")
    assert (qc2.action, qc2.reward, qc2.answer, qc2.feedback) == (r"\boxed{0}", 0.0, "0", None)
    assert qc2.sample_rewards == [0.0, -1.0]

    # every sample degenerate: the turn's action is empty, reward -1, the episode ends (last turn)
    qd2 = by_id["qd"].turns[1]
    assert (qd2.action, qd2.reward, qd2.answer, qd2.feedback, qd2.sample_rewards) == (
        "",
        -1.0,
        None,
        None,
        [-1.0],
    )


def test_rollout_calls_each_turns_backend_with_the_dialogue_so_far(tmp_path):
    rise, _, (b1, b2), sampling = rollout(tmp_path)
    assert len(b1.calls) == 1 and len(b2.calls) == 1
    assert b1.keys_asked() == ["qa", "qb", "qc", "qd"]
    assert b2.keys_asked() == ["qb", "qc", "qd"]  # qa was solved
    assert [c[1] for c in (b1.calls[0], b2.calls[0])] == [1, 3]
    assert b1.calls[0][2] == sampling and b2.calls[0][2] == sampling
    first = rise.config.prompt.first_message("What is qb?")
    assert b1.calls[0][0][1] == [{"role": "user", "content": first}]
    assert b2.calls[0][0][0] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": r"\boxed{0}"},
        {"role": "user", "content": RETRY.format(question="What is qb?")},
    ]


def test_rollout_stops_when_all_solved(tmp_path):
    solved = {"qa": [r"\boxed{5}"], "qb": [r"\boxed{ 7 }"]}
    later = {"qa": ["unused"], "qb": ["unused"]}
    _, episodes, backends, _ = rollout(tmp_path, PROBLEMS[:2], (solved, later, later))
    assert [len(e.turns) for e in episodes] == [1, 1]
    assert [e.turns[0].reward for e in episodes] == [1.0, 1.0]
    assert [len(b.calls) for b in backends] == [1, 0, 0]


def test_a_fresh_turn_samples_on_the_opening_and_answers_the_retry(tmp_path):
    later = {"qb": ["no answer", r"\boxed{7}"], "qc": [r"\boxed{1}", r"\boxed{2}"]}
    rise, episodes, (_, b2), _ = rollout(
        tmp_path,
        [PROBLEMS[1], PROBLEMS[2]],
        ({"qb": [r"\boxed{0}"], "qc": [""]}, later),
        collect={"turns": [{}, {"n": 2, "fresh": True}]},
    )
    opening = [m.model_dump() for m in rise.config.prompt.opening("What is qb?")]
    assert b2.calls[0][0][0] == opening  # the earlier attempt and the retry message are not shown
    qb, qc = episodes
    assert [t.action for t in qb.turns] == [r"\boxed{0}", r"\boxed{7}"] and qb.turns[1].reward == 1.0
    assert qb.conversation()[-2].content == RETRY.format(question="What is qb?")  # it answers the retry
    assert (qc.turns[1].action, qc.turns[1].sample_rewards) == (r"\boxed{1}", [0.0, 0.0])


def test_rollout_three_turns_feedback_on_all_but_the_last(tmp_path):
    wrong = {"qa": [r"\boxed{4}"]}
    _, (ep,), _, _ = rollout(tmp_path, PROBLEMS[:1], (wrong, wrong, wrong))
    assert [t.feedback is not None for t in ep.turns] == [True, True, False]
    assert [t.reward for t in ep.turns] == [0.0, 0.0, 0.0]


# --- collect: killed, then resumed -----------------------------------------------------------------------


class Killed(Exception):
    """Stands for the process being killed mid-collection."""


class FakePolicy:
    """Turn 1: no answer; turn 2 (n=2): the gold for every other problem. Raises on call `die_on_call`."""

    def __init__(self, problems: list[MathProblem], prompt, die_on_call: int | None = None):
        self.index = {prompt.first_message(p.question): i for i, p in enumerate(problems)}
        self.problems = problems
        self.die_on_call = die_on_call
        self.calls = 0
        self.asked: list[str] = []

    def generate(self, conversations, n, sampling, keys=None):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise Killed
        replies = []
        for conv in conversations:
            i = self.index[conv[0]["content"]]
            self.asked.append(self.problems[i].id)
            if len(conv) == 1:
                replies.append(["I do not know."] * n)
            elif i % 2 == 0:
                replies.append(["still unsure", f"So \\boxed{{{self.problems[i].answer}}}"])
            else:
                replies.append(["no idea", "none"])
        return replies


@pytest.fixture
def no_model(monkeypatch):
    """Collect without loading a model: the policy is whatever `use(backend)` sets."""
    loads = []
    monkeypatch.setattr(Rise, "base_model_path", lambda self: "unused-base-model")
    current = {}
    monkeypatch.setattr(
        Rise, "generation_backend", lambda self, path: loads.append(path) or current["backend"]
    )

    def use(backend):
        current["backend"] = backend

    use.loads = loads
    return use


@pytest.mark.parametrize("torn", [False, True])
def test_killed_collect_resumes_without_loss_or_duplicates(tmp_path, no_model, torn):
    cfg = rise_config(tmp_path, collect={"turns": [{"n": 1}, {"n": 2}], "chunk_size": 3})
    problems = cfg.train_problems.load("train")
    ids = [p.id for p in problems]
    assert len(ids) == 10 == len(set(ids))
    store = open_run(cfg.run_dir, "resume", cfg.model_dump(mode="json"))
    path = store.path / "iter1" / "collect" / "episodes.jsonl"

    # 2 calls per chunk (nobody is right at turn 1): call 5 is the first of chunk 3, after 2 chunks saved
    no_model(FakePolicy(problems, cfg.prompt, die_on_call=5))
    with pytest.raises(Killed):
        Rise(cfg, store, progress=False).collect(1)
    before = path.read_text().splitlines(keepends=True)
    assert [json.loads(line)["id"] for line in before] == ids[:6]

    if torn:  # killed mid-write: half a record of the next problem, no newline
        whole = json.dumps({"id": ids[6], "task_id": ids[6], "prompt": [], "turns": []})
        with path.open("a") as f:
            f.write(whole[: len(whole) // 2])

    resumed = FakePolicy(problems, cfg.prompt)
    no_model(resumed)
    out = Rise(cfg, store, progress=False).collect(1)
    assert out == path
    assert sorted(set(resumed.asked)) == sorted(ids[6:])  # only the missing problems were rolled out

    after = path.read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in after)
    assert after[:6] == before  # the records written before the kill are kept unchanged
    episodes = read_jsonl(path, Episode)
    got = [e.id for e in episodes]
    assert len(got) == len(ids) and sorted(got) == sorted(ids)  # each problem exactly once
    for e in episodes:
        i = ids.index(e.id)
        assert [t.reward for t in e.turns] == ([-1.0, 1.0] if i % 2 == 0 else [-1.0, -1.0])
    rows = [json.loads(line) for line in (store.path / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["stage"] == "iter1/collect"][-1]["episodes"] == 10
    assert [r for r in rows if r["stage"] == "iter1/collect"][-1]["solved_rate"] == 0.5


def test_a_grader_failure_in_collect_is_counted_in_its_metrics(tmp_path, no_model, monkeypatch):
    """An answer math_verify raised on counts as wrong and is reported with the stage's counts."""
    from feedlearn.envs import math_env
    from feedlearn.verifiers import math_answers

    real, calls = math_env.score_answer, 0

    def failing_twice(action, gold):
        nonlocal calls
        calls += 1
        if calls <= 2:
            math_answers._grader_failed("a test parser broke")
            return -1.0, None
        return real(action, gold)

    monkeypatch.setattr(math_env, "score_answer", failing_twice)
    cfg = rise_config(tmp_path, collect={"turns": [{"n": 1}, {"n": 2}], "chunk_size": 4})
    problems = cfg.train_problems.load("train")
    store = open_run(cfg.run_dir, "grader", cfg.model_dump(mode="json"))
    no_model(FakePolicy(problems, cfg.prompt))
    Rise(cfg, store, progress=False).collect(1)
    rows = [json.loads(line) for line in (store.path / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in rows if r["stage"] == "iter1/collect"][-1]
    assert summary["episodes"] == 10 and summary["grader_failures"] == 2


def test_finished_collect_does_not_load_the_policy(tmp_path, no_model):
    cfg = rise_config(tmp_path, collect={"turns": [{"n": 1}, {"n": 2}], "chunk_size": 4})
    problems = cfg.train_problems.load("train")
    store = open_run(cfg.run_dir, "done", cfg.model_dump(mode="json"))
    no_model(FakePolicy(problems, cfg.prompt))
    path = Rise(cfg, store, progress=False).collect(1)
    content = path.read_text()
    assert len(no_model.loads) == 1

    no_model(FakePolicy(problems, cfg.prompt, die_on_call=1))  # any rollout would raise
    Rise(cfg, store, progress=False).collect(1)
    assert len(no_model.loads) == 1
    assert path.read_text() == content


# --- a tiny real run, end to end -------------------------------------------------------------------------

METRIC_KEYS = {"acc@t1", "acc@t2", "m1@t1", "m2@t1", "m1@t2", "p1@t2", "p2@t1"}


def test_tiny_tokenizer_comes_from_the_warm_start_problems(tmp_path, monkeypatch):
    """With a warm start, the tiny model (and its tokenizer) is built on the warm-start problems: changing
    the collection set reuses it; without a warm start it is built on the collection problems."""
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    sft = {"problems": {"synthetic": {"n": 30, "seed": 3, "levels": [1]}}}

    def base(train_n: int, **overrides) -> str:
        train = {"synthetic": {"n": train_n, "seed": 1, "levels": [1]}}
        config = rise_config(tmp_path, train_problems=train, **overrides)
        return Rise(config, RunStore(tmp_path / "runs", "r"), progress=False).base_model_path()

    assert base(10, sft=sft) == base(40, sft=sft)
    assert base(10) != base(40) != base(10, sft=sft)


def test_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    config = RiseConfig.model_validate(
        {
            "run_dir": str(tmp_path / "runs"),
            "model": {"path": "tiny"},
            "tiny": TINY,
            "generation_batch_size": 64,
            "prompt": {"worked_example": False},
            "train_problems": {"synthetic": {"n": 16, "seed": 1, "levels": [1]}},
            "test_problems": {"synthetic": {"n": 8, "seed": 2, "levels": [1]}},
            "sft": {
                "problems": {"synthetic": {"n": 64, "seed": 3, "levels": [1]}},
                "train": {
                    "learning_rate": 3e-3,
                    "batch_size": 8,
                    "grad_accum": 1,
                    "epochs": 1,
                    "max_length": 512,
                },
            },
            "collect": {"turns": [{"n": 1}, {"n": 2}], "max_new_tokens": 24},
            # keep empty actions: however the model answers, there is something to train on
            "convert": {"dedupe": False},
            "train": {"learning_rate": 1e-3, "batch_size": 4, "grad_accum": 1, "max_length": 512},
            "evaluate": {"turns": 2, "parallel_samples": 2, "max_new_tokens": 24},
        }
    )
    Rise(config, open_run(tmp_path, "e2e", config.model_dump(mode="json")), progress=False).run()
    run = tmp_path / "e2e"
    files = [
        "sft/model/done.json",
        "evaluate/base/metrics.json",
        "iter1/collect/episodes.jsonl",
        "iter1/convert/examples.jsonl",
        "iter1/train/model/done.json",
        "evaluate/iter1/metrics.json",
    ]
    for name in files:
        assert (run / name).is_file(), name
    assert list((tmp_path / "cache" / "tiny").iterdir())  # the tiny base model was cached there

    episodes = read_jsonl(run / "iter1/collect/episodes.jsonl", Episode)
    assert len(episodes) == 16 == len({e.id for e in episodes})
    assert all(1 <= len(e.turns) <= 2 for e in episodes)
    examples = read_jsonl(run / "iter1/convert/examples.jsonl", SFTExample)
    assert len(examples) == sum(len(e.turns) for e in episodes)  # criterion 'all', no dedupe
    assert all(ex.messages[-1].role == "assistant" for ex in examples)
    for stage in ["base", "iter1"]:
        metrics = json.loads((run / "evaluate" / stage / "metrics.json").read_text())
        assert set(metrics) == METRIC_KEYS, stage
        played = read_jsonl(run / "evaluate" / stage / "episodes.jsonl", Episode)  # the metrics are theirs
        assert len(played) == 8
        for k in (0, 1):
            assert metrics[f"acc@t{k + 1}"] == 100 * sum(e.turns[k].reward == 1 for e in played) / 8
        assert metrics["p1@t2"] == 100 * sum(any(t.reward == 1 for t in e.turns) for e in played) / 8
        outcomes = json.loads(
            (run / "evaluate" / stage / "outcomes.json").read_text()
        )  # per problem, in order
        assert outcomes["problems"] == [e.id for e in played]
        assert outcomes["acc@t2"] == [e.turns[1].reward == 1 for e in played]
        assert {k: 100 * sum(v) / 8 for k, v in outcomes.items() if k != "problems"} == metrics

    sft = load_file(run / "sft/model/model.safetensors")
    trained = load_file(run / "iter1/train/model/model.safetensors")
    assert sft.keys() == trained.keys()
    assert any(not torch.equal(sft[k], trained[k]) for k in sft)

    # a second run finds every stage done: nothing is retrained, collected or evaluated again
    watched = [*files, "evaluate/iter1/episodes.jsonl"]
    stamps = {name: ((run / name).stat().st_mtime_ns, (run / name).read_bytes()) for name in watched}
    Rise(config, open_run(tmp_path, "e2e", config.model_dump(mode="json")), progress=False).run()
    for name in watched:
        if name == "iter1/convert/examples.jsonl":  # conversion is cheap and rewritten whole; same content
            assert (run / name).read_bytes() == stamps[name][1]
        else:
            assert ((run / name).stat().st_mtime_ns, (run / name).read_bytes()) == stamps[name], name


# --- training on too few examples -------------------------------------------------------------------------


def write_examples(store: RunStore, n: int) -> None:
    path = RiseLayout(store.path, "rise").examples(1)
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": r"\boxed{2}"}]}
    path.write_text("".join(json.dumps({"id": f"e{i}", **row}) + "\n" for i in range(n)))


def test_train_on_fewer_examples_than_one_step_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    cfg = rise_config(tmp_path, train={"batch_size": 1, "grad_accum": 4, "max_length": 512})
    store = open_run(cfg.run_dir, "few", cfg.model_dump(mode="json"))
    write_examples(store, 2)
    with pytest.raises(FeedlearnError, match="2 training examples, fewer than one optimizer step"):
        Rise(cfg, store, progress=False).train(1)


def test_train_with_no_examples_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    cfg = rise_config(tmp_path, train={"batch_size": 2, "grad_accum": 1})
    store = open_run(cfg.run_dir, "none", cfg.model_dump(mode="json"))
    write_examples(store, 0)
    with pytest.raises(FeedlearnError, match="examples"):
        Rise(cfg, store, progress=False).train(1)


# --- the CLI ---------------------------------------------------------------------------------------------


def write_recipe(tmp_path: Path) -> Path:
    recipe = {
        "method": "rise",
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": "tiny"},
        "tiny": TINY,
        "train_problems": {"synthetic": {"n": 4, "seed": 1}},
        "test_problems": {"synthetic": {"n": 4, "seed": 2}},
        "convert": {"criterion": "better", "temperature": 0.4},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def episode_row(id: str, *turns: tuple[str, float]) -> dict:
    return {
        "id": id,
        "task_id": id,
        "prompt": [{"role": "user", "content": f"question {id}"}],
        "turns": [
            {"action": a, "reward": r, "feedback": "again" if i < len(turns) - 1 else None}
            for i, (a, r) in enumerate(turns)
        ],
    }


def test_cli_convert(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    collect = tmp_path / "runs" / "hand" / "iter1" / "collect"
    collect.mkdir(parents=True)
    rows = [
        episode_row("a", ("no box", -1.0), (r"\boxed{3}", 0.0), (r"\boxed{4}", 1.0)),
        episode_row("b", (r"\boxed{1}", 0.0), (r"\boxed{2}", 0.0)),
    ]
    (collect / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main(["rise", "convert", str(recipe), "--run-id", "hand"]) == 0
    out = tmp_path / "runs" / "hand" / "iter1" / "convert" / "examples.jsonl"
    assert str(out) in capsys.readouterr().out
    examples = read_jsonl(out, SFTExample)
    assert [e.id for e in examples] == ["a-t1", "a-t2", "a-t3", "b-t1"]  # criterion 'better'
    assert [round(e.weight, 2) for e in examples] == [0.08, 1.0, 12.18, 1.0]
    assert [m.content for m in examples[2].messages] == [
        "question a",
        "no box",
        "again",
        r"\boxed{3}",
        "again",
        r"\boxed{4}",
    ]


@pytest.mark.parametrize(
    ("bad_line", "detail"),
    [
        ('{"id": "b", "task_id": "b", "prompt": [], "turns": [{"action": "x"}]}', "turns.0.reward"),
        ('{"id": "b", "task_id": ', "invalid JSON"),
    ],
)
def test_cli_convert_malformed_episodes(tmp_path, capsys, bad_line, detail):
    recipe = write_recipe(tmp_path)
    collect = tmp_path / "runs" / "bad" / "iter1" / "collect"
    collect.mkdir(parents=True)
    good = json.dumps(episode_row("a", (r"\boxed{1}", 0.0)))
    (collect / "episodes.jsonl").write_text(good + "\n" + bad_line + "\n")

    assert main(["rise", "convert", str(recipe), "--run-id", "bad"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert f"{collect / 'episodes.jsonl'}:2:" in err
    assert detail in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "bad" / "iter1" / "convert" / "examples.jsonl").exists()


# --- the reference's collection, prompt and recipes (issue 23) -------------------------------------------


class RecordingBackend:
    """A `Backend` that answers every conversation with `answers(conversation, n)` and records each call's
    conversations, n, sampling and keys."""

    def __init__(self, answers):
        self.answers = answers
        self.calls: list[tuple[list, int, SamplingParams, list[str]]] = []

    def generate(self, conversations, n, sampling, keys=None):
        self.calls.append(([list(c) for c in conversations], n, sampling, list(keys)))
        return [self.answers(c, n) for c in conversations]


def test_rollout_redraws_a_turn_whose_samples_are_all_degenerate(tmp_path):
    # the reference draws a turn again until a sample passes the filter (workflow_gen.py)
    draws = iter([[DEGENERATE, DEGENERATE], [DEGENERATE, DEGENERATE], [DEGENERATE, r"\boxed{5}"]])
    backend = RecordingBackend(
        lambda conv, n: next(draws) if "qa" in conv[-1]["content"] else [r"\boxed{3}"] * n
    )
    cfg = rise_config(tmp_path, collect={"turns": [{"n": 2}], "redraws": 3})
    rise = Rise(cfg, RunStore(tmp_path / "runs", "r"), progress=False)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    qa, qd = rise._rollout([PROBLEMS[0], PROBLEMS[3]], [backend], sampling, iteration=1)
    assert [call[3] for call in backend.calls] == [
        ["collect/iter1/qa/turn1", "collect/iter1/qd/turn1"],
        ["collect/iter1/qa/turn1/redraw1"],  # only the turn with nothing left is drawn again
        ["collect/iter1/qa/turn1/redraw2"],
    ]
    assert (qa.turns[0].action, qa.turns[0].reward, qa.turns[0].sample_rewards) == (r"\boxed{5}", 1.0, [1.0])
    assert (qd.turns[0].action, qd.turns[0].reward) == (r"\boxed{3}", 1.0)


def test_rollout_turn_sets_its_own_sampling(tmp_path):
    # the reference samples its teacher at temperature 0.7 and 512 tokens (utils/gpt_api.py), the policy at
    # 1.0 and 1000 (policies.py)
    first, second = RecordingBackend(lambda c, n: ["no"] * n), RecordingBackend(lambda c, n: ["no"] * n)
    turns = [{"n": 1}, {"n": 1, "temperature": 0.7, "max_new_tokens": 512}]
    cfg = rise_config(tmp_path, collect={"turns": turns})
    rise = Rise(cfg, RunStore(tmp_path / "runs", "r"), progress=False)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=1000)
    rise._rollout(PROBLEMS[:1], [first, second], sampling, iteration=1)
    assert first.calls[0][2] == sampling
    assert second.calls[0][2] == SamplingParams(temperature=0.7, max_new_tokens=512)


DIALOGUE = {
    "layout": "dialogue",
    "instruction": "Solve it.",
    "example": {"question": "1+1?", "answer": r"\boxed{2}"},
    "next_question": "Good. Next:\n{question}",
    "retry_message": RETRY,
}


def test_rollout_and_evaluation_in_the_dialogue_layout(tmp_path):
    opening = [
        {"role": "user", "content": "Solve it.\n\n1+1?"},
        {"role": "assistant", "content": r"\boxed{2}"},
        {"role": "user", "content": "Good. Next:\nWhat is qb?"},
    ]
    wrong = RecordingBackend(lambda conv, n: [r"\boxed{0}"] * n)
    cfg = rise_config(
        tmp_path, prompt=DIALOGUE, evaluate={"turns": 2, "parallel_samples": 2, "context_window": 2}
    )
    rise = Rise(cfg, RunStore(tmp_path / "runs", "r"), progress=False)
    (ep,) = rise._rollout([PROBLEMS[1]], [wrong, wrong], SamplingParams(), iteration=1)
    assert [m.model_dump() for m in ep.prompt] == opening
    retry = {"role": "user", "content": "Incorrect. Again: What is qb?"}
    assert wrong.calls[1][0] == [[*opening, {"role": "assistant", "content": r"\boxed{0}"}, retry]]

    test = RecordingBackend(lambda conv, n: [r"\boxed{0}"] * n)
    ((played, parallel),) = rise._play_test([PROBLEMS[1]], test)
    assert [m.model_dump() for m in played.prompt] == opening
    sequential, first_turns = test.calls[1][0][0], test.calls[2][0][0]
    assert sequential == [*opening, {"role": "assistant", "content": r"\boxed{0}"}, retry]
    assert first_turns == opening  # the parallel samples see the whole opening too
    assert parallel == [(0.0, "0"), (0.0, "0")]


def no_sft_training(monkeypatch):
    """The sft stage builds its chats but loads no model and trains nothing."""
    from feedlearn.methods.rise import stages as rise_module

    tokenizer = SimpleNamespace(pad_token_id=0)
    monkeypatch.setattr(Rise, "base_model_path", lambda self: "unused-base-model")
    monkeypatch.setattr(rise_module, "load_policy", lambda *args, **kwargs: (None, tokenizer))
    monkeypatch.setattr(Rise, "fit", lambda self, *args: None)
    return rise_module


def test_sft_chats_in_the_dialogue_layout_open_once(tmp_path, monkeypatch):
    rise_module = no_sft_training(monkeypatch)
    chats = []
    monkeypatch.setattr(rise_module, "tokenize_sft", lambda examples, *args, **kwargs: chats.extend(examples))
    sft = {"problems": {"synthetic": {"n": 3, "seed": 3, "levels": [1]}}, "chat_turns": 3}
    cfg = rise_config(tmp_path, prompt=DIALOGUE, sft=sft, seed=1)
    Rise(cfg, RunStore(tmp_path / "runs", "r"), progress=False).sft()
    long = max(chats, key=lambda ex: len(ex.messages))
    asked = [m.content for m in long.messages if m.role == "user"]
    assert asked[0] == "Solve it.\n\n1+1?" and long.messages[1].content == r"\boxed{2}"
    assert len(asked) > 2 and all(q.startswith("Good. Next:\n") for q in asked[1:])
    assert [m.role for m in long.messages] == ["user", "assistant"] * len(asked)


def test_sft_retries_ask_a_share_of_problems_again_and_solve_them_again(tmp_path, monkeypatch):
    rise_module = no_sft_training(monkeypatch)

    def chats(retries: float) -> list:
        made = []
        monkeypatch.setattr(
            rise_module, "tokenize_sft", lambda examples, *args, **kwargs: made.extend(examples)
        )
        sft = {
            "problems": {"synthetic": {"n": 40, "seed": 3, "levels": [1]}},
            "chat_turns": 3,
            "retries": retries,
        }
        cfg = rise_config(tmp_path / str(retries), sft=sft, seed=1)
        Rise(cfg, RunStore(tmp_path / str(retries) / "runs", "r"), progress=False).sft()
        return made

    plain, every, some = chats(0.0), chats(1.0), chats(0.5)
    assert [ex.id for ex in plain] == [ex.id for ex in every]  # the same chats, the same problems in them
    cfg = rise_config(tmp_path, sft={"problems": {"synthetic": {"n": 40, "seed": 3, "levels": [1]}}})
    by_opening = {
        cfg.prompt.opening(p.question)[-1].content: p.question for p in cfg.sft.problems.load("sft")
    }
    for before, after in zip(plain, every, strict=True):
        asked = before.messages[0::2]
        assert len(after.messages) == 2 * len(before.messages)
        for k, question in enumerate(asked):  # each problem, then its retry: the same solution twice
            first, solution, retry, again = after.messages[4 * k : 4 * k + 4]
            assert (first, solution) == (question, before.messages[2 * k + 1])
            assert retry.content == cfg.prompt.retry(by_opening[question.content])
            assert again == solution
    retries = {cfg.prompt.retry(q) for q in by_opening.values()}
    retried = sum(m.content in retries for ex in some for m in ex.messages)
    assert 10 < retried < 30  # about half of the 40 problems


RISE_RECIPES = Path(__file__).resolve().parents[1] / "feedlearn" / "recipes" / "rise"


def test_paper_recipes_take_the_references_settings():
    from feedlearn.cli import load_method

    paper, _ = load_method(str(RISE_RECIPES / "mistral7b_gsm8k_self_distill.yaml"), [])
    # workflow_gen.py as the README runs it: 2 turns, 1 then 16 samples, 1000 new tokens, temperature 1
    assert [(t.n, t.teacher, t.fresh) for t in paper.collect.turns] == [(1, None, False), (16, None, False)]
    assert (paper.collect.max_new_tokens, paper.collect.temperature) == (1000, 1.0)
    # workflow_eval.py: 5 sequential turns, context window 2; 5 parallel samples; 1000 new tokens
    ev = paper.evaluate
    assert (ev.turns, ev.context_window, ev.parallel_samples, ev.max_new_tokens) == (5, 2, 5, 1000)
    # workflow_convert.py --criteria all --remove_duplication; FastChat's train.py, full fine-tuning
    assert (paper.convert.criterion, paper.convert.dedupe, paper.convert.dedupe_scope) == (
        "all",
        True,
        "trajectory",
    )
    assert paper.model.lora is None and paper.train.learning_rate == 1e-5
    # HF's Trainer under the reference's DeepSpeed config: no clipping, examples in random order
    assert paper.train.max_grad_norm >= 1e9 and not paper.train.group_by_length
    assert paper.prompt.layout == "dialogue"
    assert paper.prompt.opening("Q?")[0].content.startswith("\nYou are an AI language model designed")

    lora, _ = load_method(str(RISE_RECIPES / "mistral7b_gsm8k_self_distill_lora.yaml"), [])
    assert lora.model.lora is not None and lora.train.learning_rate > paper.train.learning_rate
    # the LoRA variant differs in nothing else
    same = lora.model_copy(
        update={
            "model": lora.model.model_copy(update={"lora": None}),
            "train": lora.train.model_copy(update={"learning_rate": paper.train.learning_rate}),
        }
    )
    assert same == paper

    distill, _ = load_method(str(RISE_RECIPES / "gsm8k_teacher_distill.yaml"), [])
    policy, teacher = distill.collect.turns
    assert (policy.n, policy.teacher, teacher.n, teacher.teacher.model) == (1, None, 1, "gpt-3.5-turbo")
    assert (teacher.temperature, teacher.max_new_tokens) == (0.7, 512)
    assert (
        distill.prompt == paper.prompt and distill.train == paper.train and distill.evaluate == paper.evaluate
    )
