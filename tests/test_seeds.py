"""Seeds by purpose: disjoint ranges by construction, and train / test streams of every method's shipped
recipe that never meet (episodes' seeds, generated problems, pairs and prompts)."""

from __future__ import annotations

from importlib.resources import files

import pytest

from feedlearn.config import load_recipe
from feedlearn.data.store import RunStore
from feedlearn.envs.autoexplore import AutoExplore
from feedlearn.envs.taxi import DangerousTaxi
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.stages import C3PO
from feedlearn.methods.dpo.config import ActiveDPOConfig, DPOConfig
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.methods.reflect_rl.stages import ReflectRL
from feedlearn.methods.rise.config import ProblemSet, RiseConfig
from feedlearn.seeds import KEY_BITS, PURPOSES, derive_seed, held_out, purpose_of

RECIPES = files("feedlearn") / "recipes"


def test_each_purpose_owns_its_range_of_seeds():
    for purpose in PURPOSES:
        for seed in (0, 1, -3, 2**70):
            for keys in [(), (0,), ("episode", 17), ("a/b", 2.5)]:
                value = derive_seed(seed, purpose, *keys)
                assert 0 <= value < 2**63
                assert purpose_of(value) == purpose
                assert value >> KEY_BITS == PURPOSES.index(purpose)
    assert derive_seed(0, "train", 1) == derive_seed(0, "train", 1)
    assert derive_seed(0, "train", 1) != derive_seed(0, "train", 2) != derive_seed(1, "train", 1)
    with pytest.raises(ValueError, match="unknown seed purpose 'eval'"):
        derive_seed(0, "eval")


def test_held_out_takes_its_share_of_items():
    items = [f"item {i}" for i in range(20000)]
    share = sum(held_out(x, 0.2) for x in items) / len(items)
    assert share == pytest.approx(0.2, abs=0.01)
    assert held_out("item 3", 0.2) == held_out("item 3", 0.2)
    assert not any(held_out(x, 0.0) for x in items[:100])


def recording_resets(monkeypatch, env_class) -> list[int]:
    seeds: list[int] = []
    real = env_class.reset

    def reset(self, seed=None, **kwargs):
        seeds.append(seed)
        return real(self, seed=seed, **kwargs)

    monkeypatch.setattr(env_class, "reset", reset)
    return seeds


@pytest.mark.slow  # 300 teacher episodes of Taxi: about 3 s each
@pytest.mark.parametrize(
    ("recipe", "env_class"), [("tiny.yaml", DangerousTaxi), ("tiny_autoexplore.yaml", AutoExplore)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_reflect_rl_never_trains_on_a_test_episode(tmp_path, monkeypatch, recipe, env_class, seed):
    config = load_recipe(
        ReflectRLConfig, str(RECIPES / "reflect-rl" / recipe), [f"run_dir={tmp_path}", f"seed={seed}"]
    )
    method = ReflectRL(config, RunStore(tmp_path, "r"), progress=False)
    resets = recording_resets(monkeypatch, env_class)
    method.teacher_steps()
    assert len(resets) >= config.teacher.episodes + config.teacher.negatives
    train = set(resets) | {s for k in range(1, config.rl.iterations + 1) for s in method.train_seeds(k)}
    test = set(method.test_seeds())
    assert len(test) == config.evaluate.episodes
    assert not train & test
    assert {purpose_of(s) for s in test} == {"test"}


def test_rise_test_problems_share_no_question_with_training_problems():
    config = load_recipe(RiseConfig, str(RECIPES / "rise" / "tiny-from-scratch.yaml"))
    test = {p.question for p in config.test_problems.load("test", "test")}
    for problems in (config.train_problems, config.sft.problems):
        assert not test & {p.question for p in problems.load("train")}
    # the same generator seed for both sets, as a recipe that leaves it at its default has
    same = ProblemSet(synthetic={"n": 500, "levels": [1]})
    assert not {p.question for p in same.load("t", "test")} & {p.question for p in same.load("t")}


@pytest.mark.parametrize("method", ["dpo", "active-dpo"])
def test_dpo_eval_pairs_are_never_training_pairs(method):
    config = load_recipe(
        ActiveDPOConfig if method == "active-dpo" else DPOConfig, str(RECIPES / method / "tiny.yaml")
    )

    def content(pairs):
        return {(p.prompt, frozenset([p.a, p.b])) for p in pairs}

    train = content(config.train_data.load("train"))
    assert not train & content(config.eval_data.load("eval", "test"))
    same = config.train_data.model_copy(update={"synthetic": config.eval_data.synthetic})
    assert not content(same.load("train")) & content(config.eval_data.load("eval", "test"))


@pytest.mark.parametrize("seed", [0, 1])
def test_c3po_test_prompts_are_never_training_prompts(tmp_path, seed):
    config = load_recipe(
        C3POConfig, str(RECIPES / "c3po" / "tiny.yaml"), [f"run_dir={tmp_path}", f"seed={seed}"]
    )
    method = C3PO(config, RunStore(tmp_path, "c"), progress=False)
    for feedback in method.feedbacks():
        prompts = method._prompts(feedback, method.layout.folder(feedback.short_id))
        texts = [p["prompt"] for p in prompts]
        assert len(texts) == len(set(texts))  # one scope and one split per prompt
        for scope in ("in", "near", "out"):
            rows = [p for p in prompts if p["scope"] == scope]
            assert {p["split"] for p in rows} == {"train", "test"}, scope
        assert len([p for p in prompts if p["scope"] == "out"]) >= 100  # out of scope is not a handful


def test_rise_warns_when_test_files_share_questions_with_training_files(tmp_path, caplog):
    from feedlearn.data.jsonl import write_jsonl_atomic
    from feedlearn.methods.rise.stages import Rise
    from feedlearn.tasks.synthetic_math import generate_problems

    problems = generate_problems(10, 0, [1])
    write_jsonl_atomic(tmp_path / "train.jsonl", problems)
    write_jsonl_atomic(tmp_path / "test.jsonl", problems[:3] + generate_problems(2, 0, [1], split="test"))
    files = {"format": "feedlearn"}
    config = RiseConfig.model_validate(
        {
            "model": {"path": "tiny"},
            "train_problems": {"path": str(tmp_path / "train.jsonl"), **files},
            "test_problems": {"path": str(tmp_path / "test.jsonl"), **files},
        }
    )
    with caplog.at_level("WARNING", logger="feedlearn.methods.rise"):
        Rise(config, RunStore(tmp_path, "r"), progress=False).warn_of_test_questions_in_training()
    assert [r.getMessage() for r in caplog.records] == ["3 of 5 test problems are also training problems"]
