"""Loading preference data (TRL forms and feedlearn's canonical form) from .jsonl, .json and .parquet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedlearn.data.preferences import load_pairs
from feedlearn.data.records import Message, PreferencePair
from feedlearn.errors import DataError

FORMATS = ["jsonl", "json", "parquet"]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def msgs(*messages: dict) -> list[Message]:
    return [Message(**m) for m in messages]


def write(tmp_path: Path, rows: list, fmt: str = "jsonl") -> Path:
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def place(path: Path, fmt: str, n: int) -> str:
    return f"{path}:{n}: " if fmt == "jsonl" else f"{path}: row {n}: "


# ---- forms ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_standard_explicit_prompt(tmp_path, fmt):
    path = write(tmp_path, [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}], fmt)
    [pair] = load_pairs(path)
    assert (pair.prompt, pair.a, pair.b, pair.label) == ("The sky is", " blue.", " green.", 1)
    assert not pair.conversational


@pytest.mark.parametrize("fmt", FORMATS)
def test_conversational(tmp_path, fmt):
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Sky color?")],
        "chosen": [bot("Blue.")],
        "rejected": [bot("Green.")],
    }
    [pair] = load_pairs(write(tmp_path, [row], fmt))
    assert pair.prompt == msgs({"role": "system", "content": "Be brief."}, user("Sky color?"))
    assert pair.a == msgs(bot("Blue."))
    assert pair.b == msgs(bot("Green."))
    assert pair.label == 1 and pair.conversational


@pytest.mark.parametrize("fmt", FORMATS)
def test_ultrafeedback_rows_repeat_prompt_and_extra_columns_are_ignored(tmp_path, fmt):
    row = {
        "prompt": "Sky color?",
        "prompt_id": "abc123",
        "chosen": [user("Sky color?"), bot("Blue.")],
        "rejected": [user("Sky color?"), bot("Green.")],
        "messages": [user("Sky color?"), bot("Blue.")],
        "score_chosen": 8.0,
        "score_rejected": 3.5,
    }
    [pair] = load_pairs(write(tmp_path, [row], fmt))
    assert pair.prompt == msgs(user("Sky color?"))
    assert (pair.a, pair.b, pair.label) == (msgs(bot("Blue.")), msgs(bot("Green.")), 1)


def test_responses_repeating_a_message_prompt_are_split(tmp_path):
    prompt = [user("q"), bot("a0"), user("q2")]
    row = {"prompt": prompt, "chosen": [*prompt, bot("yes")], "rejected": [*prompt, bot("no")]}
    [pair] = load_pairs(write(tmp_path, [row]))
    assert pair.prompt == msgs(*prompt)
    assert (pair.a, pair.b) == (msgs(bot("yes")), msgs(bot("no")))


def test_implicit_prompt_messages_is_the_shared_start(tmp_path):
    rows = [
        {
            "chosen": [user("q"), bot("a0"), user("q2"), bot("yes")],
            "rejected": [user("q"), bot("a0"), user("q2"), bot("no")],
        },
        # one response continues the other: each still keeps its final assistant message
        {"chosen": [user("q"), bot("a1")], "rejected": [user("q"), bot("a1"), user("more"), bot("a2")]},
    ]
    first, second = load_pairs(write(tmp_path, rows))
    assert first.prompt == msgs(user("q"), bot("a0"), user("q2"))
    assert (first.a, first.b, first.label) == (msgs(bot("yes")), msgs(bot("no")), 1)
    assert second.prompt == msgs(user("q"))
    assert second.a == msgs(bot("a1"))
    assert second.b == msgs(bot("a1"), user("more"), bot("a2"))


def test_implicit_prompt_text_follows_trl(tmp_path):
    rows = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # the space goes to the responses
        {"chosen": "Yes", "rejected": "No"},  # nothing shared: empty prompt
    ]
    first, second = load_pairs(write(tmp_path, rows))
    assert (first.prompt, first.a, first.b) == ("The sky is", " blue.", " green.")
    assert (second.prompt, second.a, second.b) == ("", "Yes", "No")


@pytest.mark.parametrize("fmt", FORMATS)
def test_canonical_rows_with_and_without_label(tmp_path, fmt):
    rows = [
        {"id": "p1", "prompt": "Q", "a": " x", "b": " y", "label": None},
        {"id": "p2", "prompt": "Q", "a": " x", "b": " z", "label": -1},
        {"id": "p3", "prompt": "Q", "a": " y", "b": " z", "label": 1},
    ]
    pairs = load_pairs(write(tmp_path, rows, fmt))
    assert [(p.id, p.prompt, p.a, p.b, p.label) for p in pairs] == [
        ("p1", "Q", " x", " y", None),
        ("p2", "Q", " x", " z", -1),
        ("p3", "Q", " y", " z", 1),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_canonical_records_round_trip(tmp_path, fmt):
    records = [
        PreferencePair(id="t", prompt="Q", a=" x", b=" y", label=1),
        PreferencePair(id="m", prompt=msgs(user("q")), a=msgs(bot("x")), b=msgs(bot("y"))),
        PreferencePair(id="n", prompt=msgs(user("q")), a=msgs(bot("y")), b=msgs(bot("x")), label=-1),
    ]
    path = write(tmp_path, [r.model_dump() for r in records], fmt)
    assert load_pairs(path) == records


def test_parquet_nulls_count_as_absent(tmp_path):
    rows = [
        {"id": None, "prompt": "Q", "a": " x", "b": " y", "label": None},
        {"id": "k", "prompt": "Q", "a": " x", "b": " z", "label": -1},
    ]
    first, second = load_pairs(write(tmp_path, rows, "parquet"))
    assert first.id.startswith("pair-") and first.label is None
    assert (second.id, second.label) == ("k", -1)


# ---- ids and limit -------------------------------------------------------------------------------------


def test_ids_given_converted_or_derived_from_content(tmp_path):
    rows = [
        {"id": "given", "prompt": "Q", "chosen": " x", "rejected": " y"},
        {"id": 7, "prompt": "Q", "chosen": " x", "rejected": " z"},
        {"prompt": "Q", "chosen": " y", "rejected": " z"},
    ]
    pairs = load_pairs(write(tmp_path, rows))
    assert [p.id for p in pairs[:2]] == ["given", "7"]
    assert re.fullmatch(r"pair-[0-9a-f]{12}", pairs[2].id)


def test_derived_ids_are_stable_and_depend_on_canonical_content(tmp_path):
    ultra = {"prompt": "q", "chosen": [user("q"), bot("x")], "rejected": [user("q"), bot("y")]}
    explicit = {"prompt": [user("q")], "chosen": [bot("x")], "rejected": [bot("y")]}
    implicit = {"chosen": [user("q"), bot("x")], "rejected": [user("q"), bot("y")]}
    swapped = {"prompt": [user("q")], "chosen": [bot("y")], "rejected": [bot("x")]}
    ids = [load_pairs(write(tmp_path, [row]))[0].id for row in (ultra, explicit, implicit, swapped)]
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert load_pairs(write(tmp_path, [ultra], "parquet"))[0].id == ids[0]


def test_limit_keeps_the_first_rows_and_reads_no_further(tmp_path):
    rows = [{"prompt": "Q", "chosen": f" {i}", "rejected": " no"} for i in range(4)]
    path = write(tmp_path, rows)
    assert [p.a for p in load_pairs(path, limit=2)] == [" 0", " 1"]
    assert len(load_pairs(path, limit=10)) == 4
    assert load_pairs(path, limit=0) == []
    with path.open("a", encoding="utf-8") as f:
        f.write("{not json\n")
    assert len(load_pairs(path, limit=4)) == 4


# ---- errors --------------------------------------------------------------------------------------------

GOOD = {"prompt": "Q", "chosen": " x", "rejected": " y"}

BAD_ROWS = [
    ({"prompt": "Q", "chosen": " x"}, ["missing field 'rejected'", "prompt/chosen/rejected", "prompt/a/b"]),
    ({"prompt": "Q", "text": "hi"}, ["missing field 'a', 'b'", "prompt/chosen/rejected"]),
    ({"prompt": "Q", "a": " x", "b": " y", "chosen": " x"}, ["chosen/rejected and a/b"]),
    ({"prompt": "Q", "chosen": 3, "rejected": " y"}, ["field 'chosen'", "text or a list of messages"]),
    ({"prompt": {"q": 1}, "chosen": " x", "rejected": " y"}, ["field 'prompt'", "got dict"]),
    ({"chosen": [{"role": "tool", "content": "x"}], "rejected": [bot("y")]}, ["field 'chosen.0.role'"]),
    (
        {"chosen": [bot("x")], "rejected": [{"role": "assistant", "content": 5}]},
        ["field 'rejected.0.content'"],
    ),
    ({"chosen": [bot("x")], "rejected": [{"role": "assistant"}]}, ["field 'rejected.0.content'", "required"]),
    ({"prompt": "Q", "chosen": "", "rejected": " y"}, ["field 'chosen' is empty"]),
    ({"prompt": [user("q")], "a": [bot("x")], "b": []}, ["field 'b' is empty"]),
    ({"chosen": " x", "rejected": [bot("y")]}, ["field 'rejected' is messages but 'chosen' is text"]),
    (
        {"prompt": "Q", "chosen": [bot("x")], "rejected": [bot("y")]},
        ["'chosen' is messages but 'prompt' is text"],
    ),
    (
        {"prompt": [user("q")], "chosen": [bot("x"), user("?")], "rejected": [bot("y")]},
        ["field 'chosen' must end"],
    ),
    ({"prompt": "Q", "a": " x", "b": " y", "label": 2}, ["field 'label'", "1", "-1"]),
    ({"prompt": "Q", "a": " x", "b": " y", "label": True}, ["field 'label'"]),
    ({"prompt": "Q", "a": " x", "b": " y", "label": "1"}, ["field 'label'"]),
    ({**GOOD, "id": 1.5}, ["field 'id'", "string or an integer"]),
    ([GOOD], ["expected a JSON object, got list"]),
]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize(("row", "expected"), BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, fmt, row, expected):
    path = write(tmp_path, [GOOD, row], fmt)
    with pytest.raises(DataError) as e:
        load_pairs(path)
    msg = str(e.value)
    assert msg.startswith(place(path, fmt, 2)) and "\n" not in msg
    for part in expected:
        assert part in msg


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_ids_name_both_rows(tmp_path, fmt):
    rows = [{**GOOD, "id": "same"}, {**GOOD, "id": "other"}, {**GOOD, "id": "same", "chosen": " z"}]
    path = write(tmp_path, rows, fmt)
    with pytest.raises(DataError) as e:
        load_pairs(path)
    msg = str(e.value)
    assert msg.startswith(place(path, fmt, 3)) and f"also used at {place(path, fmt, 1).rstrip(': ')}" in msg


def test_duplicate_content_without_ids_is_an_error(tmp_path):
    path = write(tmp_path, [GOOD, GOOD])
    with pytest.raises(DataError, match=r":2: id 'pair-[0-9a-f]{12}' is also used at .*:1;"):
        load_pairs(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(csv)
    assert str(e.value).startswith(f"{csv}: unsupported file type '.csv'")
    assert ".jsonl, .json, .parquet" in str(e.value)


def test_invalid_jsonl_names_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"prompt": \n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}:3: invalid JSON")


def test_invalid_json_names_position(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[\n  {"prompt": "Q",\n  }\n]', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}:3: invalid JSON") and "at column" in str(e.value)


def test_json_file_must_be_an_array(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}: expected a JSON array of objects, got dict")


@pytest.mark.parametrize(("text", "kind"), [("3", "int"), ('"pairs"', "str"), ("null", "NoneType")])
def test_json_file_that_is_a_scalar(tmp_path, text, kind):
    path = tmp_path / "pairs.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: expected a JSON array of objects, got {kind};"
    ):
        load_pairs(path)


def test_json_nested_too_deeply(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.json: invalid JSON \(nested too deeply\)$"):
        load_pairs(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_with_no_rows(tmp_path, fmt):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    else:
        path.write_text("[]" if fmt == "json" else "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: no preference pairs in the file$"):
        load_pairs(path)
    assert load_pairs(path, limit=0) == []  # nothing was asked for


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}: not a readable parquet file")


def test_parquet_bad_row_names_row_and_field(tmp_path):
    rows = [GOOD, {"prompt": "Q", "chosen": "", "rejected": " y"}]
    path = write(tmp_path, rows, "parquet")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}: row 2: field 'chosen' is empty")
