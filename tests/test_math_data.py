"""GSM8K / MATH / feedlearn problem files: loading, saving, and errors that name file, line and field."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from feedlearn.data.jsonl import write_jsonl_atomic
from feedlearn.errors import DataError
from feedlearn.tasks.math_data import (
    MathProblem,
    load_gsm8k,
    load_math,
    load_problems,
)


def write_lines(path, *lines):
    """Write raw lines (dicts are dumped as JSON) to a JSONL file and return its path."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A car costs $1,200 more than 800. Price?", "answer": "800 + 1200 = 2000\n#### 2,000"},
    {"question": "Id given", "answer": "#### -3", "id": "custom-1", "extra_key": [1, 2]},
    {"question": "Numeric id", "answer": "#### 0.5", "id": 17},
]

MATH_ROWS = [
    {
        "problem": "What is $1/2 + 1/4$?",
        "level": "Level 2",
        "type": "Prealgebra",
        "solution": r"We have $\frac{1}{2}+\frac{1}{4} = \boxed{\frac{3}{4}}$.",
    },
    {
        "problem": "Find x.",
        "level": "Level ?",
        "type": "Algebra",
        "solution": r"First $\boxed{1}$, but really $x = \boxed{\left( 1, 2 \right)}$.",
    },
    {"problem": "No level.", "solution": r"\boxed{5}"},
    {"problem": "Int level.", "level": 4, "solution": r"\boxed{\{1, 2\}}", "unique_id": "x/y.json"},
]


def assert_names(err: pytest.ExceptionInfo, path, line: int, field: str | None):
    message = str(err.value)
    assert path.name in message
    assert f":{line}:" in message
    if field is not None:
        assert f"'{field}" in message


# --- GSM8K -----------------------------------------------------------------------------------------------


def test_load_gsm8k(tmp_path):
    path = write_lines(tmp_path / "gsm8k.jsonl", *[GSM8K_ROWS[0], GSM8K_ROWS[1]], "", *GSM8K_ROWS[2:])
    problems = load_gsm8k(path)
    assert [p.id for p in problems] == ["gsm8k-0", "gsm8k-1", "custom-1", "17"]
    assert [p.answer for p in problems] == ["7", "2000", "-3", "0.5"]
    assert problems[0].question == GSM8K_ROWS[0]["question"]
    assert problems[0].solution == GSM8K_ROWS[0]["answer"]
    assert {p.source for p in problems} == {"gsm8k"}
    assert all(p.level is None for p in problems)


def test_gsm8k_invalid_json(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", GSM8K_ROWS[0], '{"question": "q", "answer": ')
    with pytest.raises(DataError) as err:
        load_gsm8k(path)
    assert_names(err, path, 2, None)  # a line that is not JSON has no field to name
    assert "invalid JSON" in str(err.value)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"question": "q"}, "answer"),  # missing
        ({"answer": "#### 1"}, "question"),  # missing
        ({"question": 5, "answer": "#### 1"}, "question"),  # wrong type
        ({"question": "q", "answer": ["#### 1"]}, "answer"),  # wrong type
        ({"question": "q", "answer": "the answer is 1"}, "answer"),  # no ####
        ({"question": "q", "answer": "#### "}, "answer"),  # nothing after ####
        ({"question": "q", "answer": "#### 1", "id": [1]}, "id"),  # wrong type
    ],
)
def test_gsm8k_bad_rows_name_file_line_field(tmp_path, row, field):
    path = write_lines(tmp_path / "gsm8k_bad.jsonl", GSM8K_ROWS[0], "", row)
    with pytest.raises(DataError) as err:
        load_gsm8k(path)
    assert_names(err, path, 3, field)


def test_gsm8k_not_an_object(tmp_path):
    path = write_lines(tmp_path / "list.jsonl", "[1, 2]")
    with pytest.raises(DataError) as err:
        load_gsm8k(path)
    assert_names(err, path, 1, None)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_gsm8k(tmp_path / "nope.jsonl")


def test_folder_and_empty_file(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(DataError, match=r"gsm8k: is a folder, not a file$"):
        load_problems(tmp_path / "gsm8k", "gsm8k")
    path = write_lines(tmp_path / "empty.jsonl", "", "  ")
    for load in (load_gsm8k, load_math, lambda p: load_problems(p, "feedlearn")):
        with pytest.raises(DataError, match=r"empty\.jsonl: no problems in the file$"):
            load(path)


def test_bad_byte_names_line_and_offset(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(json.dumps(GSM8K_ROWS[0]).encode() + b"\n" + b'{"question": "\xfe"}\n')
    with pytest.raises(DataError) as err:
        load_gsm8k(path)
    offset = len(json.dumps(GSM8K_ROWS[0])) + 1 + len('{"question": "')
    assert str(err.value) == f"{path}:2: not valid UTF-8 (byte 0xfe at offset {offset})"


# --- MATH ------------------------------------------------------------------------------------------------


def test_load_math(tmp_path):
    path = write_lines(tmp_path / "math.jsonl", *MATH_ROWS)
    problems = load_math(path)
    assert [p.id for p in problems] == ["math-0", "math-1", "math-2", "math-3"]
    assert [p.answer for p in problems] == [r"\frac{3}{4}", r"\left( 1, 2 \right)", "5", r"\{1, 2\}"]
    assert [p.level for p in problems] == [2, None, None, 4]
    assert problems[0].question == MATH_ROWS[0]["problem"]
    assert problems[0].solution == MATH_ROWS[0]["solution"]
    assert {p.source for p in problems} == {"math"}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"problem": "p", "level": "Level 1"}, "solution"),  # missing
        ({"solution": r"\boxed{1}"}, "problem"),  # missing
        ({"problem": "p", "solution": 1}, "solution"),  # wrong type
        ({"problem": "p", "solution": "The answer is 1."}, "solution"),  # no \boxed
        ({"problem": "p", "solution": r"so \boxed{1"}, "solution"),  # unbalanced \boxed
        ({"problem": "p", "solution": r"\boxed{1}", "level": [3]}, "level"),  # wrong type
    ],
)
def test_math_bad_rows_name_file_line_field(tmp_path, row, field):
    path = write_lines(tmp_path / "math_bad.jsonl", MATH_ROWS[0], row)
    with pytest.raises(DataError) as err:
        load_math(path)
    assert_names(err, path, 2, field)


def test_math_invalid_json(tmp_path):
    path = write_lines(tmp_path / "math_bad.jsonl", "not json")
    with pytest.raises(DataError) as err:
        load_math(path)
    assert_names(err, path, 1, None)


# --- feedlearn format, dispatch, saving ------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    problems = [
        MathProblem(id="s-1", question="2+2?", answer="4", source="synthetic"),
        MathProblem(id="m-1", question="q", answer=r"\frac{1}{2}", solution="s", level=3, source="math"),
    ]
    path = tmp_path / "out" / "problems.jsonl"
    write_jsonl_atomic(path, problems)
    assert load_problems(path, "feedlearn") == problems
    assert [p.name for p in path.parent.iterdir()] == ["problems.jsonl"]  # no temporary file left


def test_load_problems_dispatch(tmp_path):
    gsm8k = write_lines(tmp_path / "g.jsonl", *GSM8K_ROWS)
    math = write_lines(tmp_path / "m.jsonl", *MATH_ROWS)
    assert load_problems(gsm8k, "gsm8k") == load_gsm8k(gsm8k)
    assert load_problems(math, "math") == load_math(math)
    with pytest.raises(DataError, match="unknown problem format"):
        load_problems(math, "csv")  # type: ignore[arg-type]


def test_feedlearn_format_rejects_unknown_and_missing_fields(tmp_path):
    good = {"id": "a", "question": "q", "answer": "1", "source": "synthetic"}
    path = write_lines(tmp_path / "p.jsonl", good, {**good, "id": "b", "anwser": "2"})
    with pytest.raises(DataError) as err:
        load_problems(path, "feedlearn")
    assert_names(err, path, 2, "anwser")

    path = write_lines(tmp_path / "p2.jsonl", {k: v for k, v in good.items() if k != "source"})
    with pytest.raises(DataError) as err:
        load_problems(path, "feedlearn")
    assert_names(err, path, 1, "source")


def test_math_problem_model():
    with pytest.raises(ValidationError):
        MathProblem(id="a", question="q", answer="1", source="x", bogus=1)  # type: ignore[call-arg]
    fields = MathProblem.model_fields
    assert all(fields[name].description for name in fields)
