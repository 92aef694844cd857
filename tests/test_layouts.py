"""Each method's run layout, frozen: every path and sampling key at the value existing run folders and
recorded samples have (a change here is a change of where runs resume and what they sample); the
registry that the CLI, serve and report read; stage inputs that are missing name the stage to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedlearn.cli import main
from feedlearn.data.store import DONE
from feedlearn.errors import FeedlearnError
from feedlearn.methods.adarefiner.layout import AdaRefinerLayout
from feedlearn.methods.c3po.layout import C3POLayout
from feedlearn.methods.dpo.layout import DPOLayout
from feedlearn.methods.layout import Layout, MissingInput
from feedlearn.methods.reflect_rl.layout import ReflectRLLayout
from feedlearn.methods.registry import METHODS
from feedlearn.methods.rise.layout import RiseLayout

RECIPES = Path(__file__).resolve().parents[1] / "feedlearn" / "recipes"


def relative(layout: Layout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def test_rise_paths_and_keys(tmp_path):
    lay = RiseLayout(tmp_path, "rise")
    paths = {
        "sft": lay.sft(),
        "episodes": lay.episodes(2),
        "examples": lay.examples(2),
        "train": lay.train(2),
        "base": lay.evaluation(0),
        "evaluation": lay.evaluation(2),
        "replies": lay.replies("teacher"),
    }
    assert {k: relative(lay, p) for k, p in paths.items()} == {
        "sft": "sft",
        "episodes": "iter2/collect/episodes.jsonl",
        "examples": "iter2/convert/examples.jsonl",
        "train": "iter2/train",
        "base": "evaluate/base",
        "evaluation": "evaluate/iter2",
        "replies": "replies/teacher.jsonl",
    }
    assert lay.collect_key(2, "p7", 3) == "collect/iter2/p7/turn3"
    assert lay.redraw_key("collect/iter2/p7/turn3", 1) == "collect/iter2/p7/turn3/redraw1"
    assert lay.test_key("p7", 3) == "evaluate/p7/turn3"
    assert lay.parallel_key("p7") == "evaluate/p7/parallel"


def test_a_stage_folder_is_created_on_first_use(tmp_path):
    folder = RiseLayout(tmp_path / "run", "rise").folder("iter1/train")
    assert folder == tmp_path / "run" / "iter1" / "train" and folder.is_dir()


def test_dpo_paths(tmp_path):
    lay = DPOLayout(tmp_path, "dpo")
    assert [relative(lay, p) for p in (lay.train(), lay.labels(), lay.evaluation())] == [
        "train",
        "train/labels.jsonl",
        "evaluate",
    ]


def test_c3po_paths_and_keys(tmp_path):
    lay = C3POLayout(tmp_path, "c3po")
    paths = [lay.sft(), lay.samples("f1"), lay.train("f1", "scd"), lay.combined(), lay.evaluation("f1")]
    assert [relative(lay, p) for p in paths] == [
        "sft",
        "f1/sample/samples.jsonl",
        "f1/train/scd",
        "combined/combined",
        "evaluate/f1",
    ]
    assert lay.sample_key("f1", "in-3", "revised") == "f1/in-3/revised"


def test_reflect_rl_paths_and_keys(tmp_path):
    lay = ReflectRLLayout(tmp_path, "reflect-rl")
    paths = [
        lay.repo(),
        lay.teacher(),
        lay.reflector(),
        lay.policy("sft"),
        lay.policy("rl"),
        lay.evaluation("rl"),
    ]
    assert [relative(lay, p) for p in paths] == [
        "repo",
        "teacher",
        "sft/reflector",
        "sft/policy/model",
        "rl/model",
        "evaluate/rl",
    ]
    assert lay.teacher_key(2) == "level2"


def test_adarefiner_paths_and_keys(tmp_path):
    lay = AdaRefinerLayout(tmp_path, "adarefiner")
    paths = [lay.warmup(), lay.play(2), lay.agent(2), lay.queries(2), lay.refine(2), lay.evaluation(2)]
    assert [relative(lay, p) for p in paths] == [
        "warmup",
        "stage2/train",
        "stage2/train/agent.zip",
        "stage2/train/queries.jsonl",
        "stage2/sft",
        "evaluate/stage2",
    ]
    assert (lay.play_key(2), lay.test_key(2), lay.WARMUP_KEY) == ("stage2", "test2", "warmup")


def test_policies_are_the_newest_trained_first_and_only_looked_for(tmp_path):
    run = tmp_path / "run"
    for name in ("iter1/train/model", "iter10/train/model", "iter2/train/model", "iterx/train/model"):
        (run / name).mkdir(parents=True)
    policies = RiseLayout(run, "rise").policies()
    assert [relative(RiseLayout(run, "rise"), p) for p in policies] == [
        "iter10/train/model",
        "iter2/train/model",
        "iter1/train/model",
        "sft/model",
    ]
    assert not (run / "sft").exists()  # looking creates nothing


def test_several_c3po_adapters_are_served_once_combined(tmp_path):
    lay = C3POLayout(tmp_path, "c3po")
    for feedback in ("a", "b"):
        (lay.train(feedback, "c3po") / "model").mkdir()
        (lay.train(feedback, "c3po") / "model" / DONE).write_text("{}")
    with pytest.raises(FeedlearnError, match="run `feedlearn c3po combine`"):
        lay.policies()
    lay.combined().mkdir(parents=True)
    (lay.combined() / DONE).write_text("{}")
    assert lay.policies()[0] == lay.combined()


def test_every_method_is_registered_with_its_layout_and_figure(tmp_path):
    assert set(METHODS) == {p.name for p in RECIPES.iterdir() if p.is_dir()} - {"accelerate"}
    for name, info in METHODS.items():
        assert info.config.model_fields["method"].annotation.__args__ == (name,)
        layout = info.layout(tmp_path / name, name)
        assert type(layout) is info.method.layout_class and type(layout) is not Layout
        assert callable(info.figure)
        assert set(info.iterated) <= set(info.stages)


def test_a_missing_input_names_the_stage_to_run_first(tmp_path):
    with pytest.raises(
        MissingInput, match=r"iter3/convert/examples.jsonl is missing: run `feedlearn rise convert"
    ):
        RiseLayout(tmp_path, "rise").require(
            RiseLayout(tmp_path, "rise").examples(3), "convert --iteration 3"
        )


def test_a_single_stage_on_a_fresh_run_says_which_stage_comes_first(tmp_path, capsys):
    recipe = RECIPES / "rise" / "tiny.yaml"
    assert main(["rise", "train", str(recipe), "--set", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "iter1/convert/examples.jsonl is missing: run `feedlearn rise convert --iteration 1` first" in err


def test_an_evaluation_in_its_old_place_is_refused_with_the_command_that_moves_it(tmp_path, capsys):
    run = tmp_path / "rise-tiny"
    (run / "iter1" / "evaluate").mkdir(parents=True)
    recipe = RECIPES / "rise" / "tiny.yaml"
    assert main(["rise", "evaluate", str(recipe), "--set", f"run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"mv {run / 'iter1' / 'evaluate'} {run / 'evaluate' / 'iter1'}" in err


def test_evaluations_are_named_by_their_folder_under_evaluate(tmp_path):
    run = tmp_path / "dpo-run"
    (run / "evaluate").mkdir(parents=True)
    (run / "evaluate" / "metrics.json").write_text("{}")
    assert DPOLayout(run, "dpo").evaluations() == {"dpo-run": run / "evaluate"}
    rise = RiseLayout(tmp_path / "rise-run", "rise")
    for i in (0, 2):
        (rise.evaluation(i) / "metrics.json").write_text("{}")
    (rise.root / "evaluate" / "iter3").mkdir()  # unfinished: no metrics.json
    assert rise.evaluations() == {"base": rise.evaluation(0), "iter2": rise.evaluation(2)}


@pytest.mark.parametrize("layout", [C3POLayout, RiseLayout, DPOLayout])
def test_any_method_refuses_an_evaluation_in_its_old_place(tmp_path, layout):
    (tmp_path / "d1c27ec1" / "evaluate").mkdir(parents=True)
    lay = layout(tmp_path, "m")
    assert lay.moved() == {"d1c27ec1/evaluate": "evaluate/d1c27ec1"}
    with pytest.raises(FeedlearnError, match="mv .*d1c27ec1/evaluate .*evaluate/d1c27ec1"):
        lay.check_moved()
    (tmp_path / "evaluate" / "d1c27ec1").mkdir(parents=True)  # moved already: nothing to refuse
    lay.check_moved()
