"""Problem sets and preference data from `datasets` folders (the hub itself cannot be reached here: the
same code path reads a hub id with `load_dataset`)."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.data.store import open_run
from feedlearn.errors import DataError
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.stages import C3PO
from feedlearn.methods.dpo.config import PreferenceData
from feedlearn.methods.rise.config import ProblemSet


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))


def gsm8k_folder(tmp_path):
    rows = {
        "problem_text": ["Ann has 3 apples and buys 4. How many?", "What is 10 minus 7?"],
        "worked": ["3 + 4 = 7\n#### 7", "10 - 7 = 3\n#### 3"],
    }
    folder = tmp_path / "gsm8k"
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows).select([1])}).save_to_disk(
        str(folder)
    )
    return folder


def test_a_problem_set_from_a_dataset_folder_with_renamed_columns(tmp_path):
    source = {
        "name": str(gsm8k_folder(tmp_path)),
        "columns": {"question": "problem_text", "answer": "worked"},
    }
    problems = ProblemSet(dataset=source, format="gsm8k").load("train")
    assert [(p.question, p.answer) for p in problems] == [
        ("Ann has 3 apples and buys 4. How many?", "7"),
        ("What is 10 minus 7?", "3"),
    ]
    test = ProblemSet(dataset={**source, "split": "test"}, format="gsm8k").load("test")
    assert [p.answer for p in test] == ["3"]


def test_preference_pairs_from_a_single_dataset_folder_in_trls_form(tmp_path):
    folder = tmp_path / "prefs"
    Dataset.from_dict(
        {"prompt": ["Say hi", "Say bye"], "chosen": ["hi", "bye"], "rejected": ["go away", "stay"]}
    ).save_to_disk(str(folder))
    pairs = PreferenceData(dataset={"name": str(folder)}, limit=1).load("train")
    assert len(pairs) == 1 and (pairs[0].prompt, pairs[0].a, pairs[0].b, pairs[0].label) == (
        "Say hi",
        "hi",
        "go away",
        1,
    )


def test_dataset_problems_are_clear_errors(tmp_path):
    folder = gsm8k_folder(tmp_path)
    with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
        export_rows(DatasetSource(name=str(folder), split="validation"))
    with pytest.raises(DataError, match="no column 'nope'; its columns are problem_text, worked"):
        export_rows(DatasetSource(name=str(folder), columns={"question": "nope"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot load dataset .* as a local folder saved with save_to_disk"):
        export_rows(DatasetSource(name=str(tmp_path / "empty")))
    # a row the loader refuses names the exported file and its line
    with pytest.raises(DataError, match=r"\.jsonl:1: field 'answer'"):
        ProblemSet(dataset={"name": str(folder), "columns": {"question": "problem_text"}}).load("train")


def test_a_split_a_single_dataset_folder_lacks_and_a_missing_folder_or_a_file_are_named(tmp_path):
    folder = tmp_path / "prefs"
    Dataset.from_dict({"prompt": ["Say hi"], "chosen": ["hi"], "rejected": ["no"]}).save_to_disk(str(folder))
    with pytest.raises(
        DataError, match=r"is a single data set \(no splits\), so it has no split 'validation'"
    ):
        export_rows(DatasetSource(name=str(folder), split="validation"))
    for missing in (str(tmp_path / "nowhere"), "./data/gsm8k", "data/gsm8k/main"):
        with pytest.raises(DataError, match=f"dataset '{missing}': no such folder"):
            export_rows(DatasetSource(name=missing))
    (tmp_path / "pairs.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="is a file: .* give a JSONL, JSON or Parquet file as `path`"):
        export_rows(DatasetSource(name=str(tmp_path / "pairs.jsonl")))


def test_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of 'path', 'dataset', 'synthetic' or 'reasoning_gym'"):
        ProblemSet(path="a.jsonl", dataset={"name": "x"})


def test_c3po_feedbacks_and_general_prompts_from_dataset_folders(tmp_path):
    feedbacks = tmp_path / "feedbacks"
    Dataset.from_dict(
        {
            "feedback": ["Be brief when I ask about the weather.", "Use British spelling."],
            "domain": ["weather questions", "any text"],
            "effect": ["short answers", "British spelling"],
            "scope": ["regional", "global"],
            "type": ["qualitative", "qualitative"],
        }
    ).save_to_disk(str(feedbacks))
    prompts = tmp_path / "prompts"
    Dataset.from_dict({"instruction": ["Name a planet.", "Tell me a joke.", "What is rain?"]}).save_to_disk(
        str(prompts)
    )
    config = C3POConfig.model_validate(
        {
            "run_dir": str(tmp_path / "runs"),
            "model": {"path": "tiny", "lora": {"r": 4, "alpha": 8}},
            "feedback_file": {"name": str(feedbacks), "columns": {"content": "feedback"}},
            "teacher": {"kind": "offline"},
            "general_prompts": {"name": str(prompts), "columns": {"prompt": "instruction"}},
        }
    )
    method = C3PO(config, open_run(config.run_dir, "d", config.model_dump(mode="json")), progress=False)
    assert [(f.content, f.scope) for f in method.feedbacks()] == [
        ("Be brief when I ask about the weather.", "regional"),
        ("Use British spelling.", "global"),
    ]
    assert sorted(method.general_prompts(3)) == ["Name a planet.", "Tell me a joke.", "What is rain?"]
    broken = config.model_copy(update={"feedback_file": DatasetSource(name=str(feedbacks))})
    method = C3PO(broken, method.store, progress=False)
    with pytest.raises(DataError, match=r"\.jsonl: entry 1.*field 'content': Field required"):
        method.feedbacks()
