"""Verbal feedback: loading files, ids, selection, and metric evaluation (adherence and change)."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from pydantic import ValidationError

from feedlearn.errors import DataError
from feedlearn.verifiers.verbal import (
    Feedback,
    Metric,
    adheres,
    changed,
    load_feedbacks,
    metric_value,
    select_feedbacks,
)

SIGN_OFF = {
    "content": "Always sign off emails to Jared with Best, Alex",
    "domain": "emails to my boss Jared",
    "effect": "end with the sign-off Best, Alex",
    "type": "quantitative",
    "metric": {"kind": "ends_with", "value": "Best, Alex"},
    "categories": ["email"],
}
CONCISE = {
    "content": "Be more concise when writing code comments",
    "domain": "code comments",
    "effect": "use fewer words",
    "scope": "regional",
    "type": "quantitative",
    "metric": {"kind": "words", "comparison": "less_than"},
    "categories": ["code", "style"],
}
FRIENDLY = {
    "content": "Sound friendlier in customer support replies",
    "domain": "customer support replies",
    "effect": "use a warm, friendly tone",
    "type": "qualitative",
}


def write(tmp_path, name, data):
    path = tmp_path / name
    text = data if isinstance(data, str) else (json.dumps if name.endswith(".json") else yaml.safe_dump)(data)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path, name, data) -> str:
    path = write(tmp_path, name, data)
    with pytest.raises(DataError) as e:
        load_feedbacks(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


# ---- loading -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fb.yaml", "fb.yml", "fb.json"])
@pytest.mark.parametrize("wrap", [False, True])
def test_load_list_or_feedbacks_mapping(tmp_path, name, wrap):
    entries = [SIGN_OFF, CONCISE, FRIENDLY]
    feedbacks = load_feedbacks(write(tmp_path, name, {"feedbacks": entries} if wrap else entries))
    assert [f.content for f in feedbacks] == [e["content"] for e in entries]
    assert feedbacks[0].metric == Metric(kind="ends_with", value="Best, Alex")
    assert feedbacks[0].scope == "local" and feedbacks[1].scope == "regional"
    assert feedbacks[1].metric.comparison == "less_than"
    assert feedbacks[2].metric is None and feedbacks[2].categories == []


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("fb.yaml", {"feedbacks": []}),
        ("fb.yaml", []),
        ("fb.yaml", ""),
        ("fb.yaml", "# to do\n"),
        ("fb.json", "[]"),
        ("fb.json", "\n"),
    ],
)
def test_file_with_no_feedbacks(tmp_path, name, data):
    assert load_error(tmp_path, name, data) == f"{tmp_path / name}: no feedbacks in the file"


def test_id_is_a_stable_uuid_of_content_domain_effect():
    a = Feedback.model_validate(SIGN_OFF)
    same = Feedback.model_validate(
        {**SIGN_OFF, "scope": "global", "categories": ["x"], "type": "qualitative", "metric": None}
    )
    assert str(uuid.UUID(a.id)) == a.id
    assert same.id == a.id  # scope, type, metric and categories are not part of the id
    assert Feedback.model_validate(SIGN_OFF).id == a.id
    assert Feedback.model_validate({**SIGN_OFF, "effect": "end with Cheers, Alex"}).id != a.id
    assert Feedback.model_validate({**SIGN_OFF, "domain": "all emails"}).id != a.id
    assert Feedback.model_validate({**SIGN_OFF, "content": "Sign off with Best, Alex"}).id != a.id


def test_ids_do_not_depend_on_the_file_format(tmp_path):
    from_yaml = load_feedbacks(write(tmp_path, "fb.yaml", [SIGN_OFF, CONCISE]))
    from_json = load_feedbacks(write(tmp_path, "fb.json", {"feedbacks": [SIGN_OFF, CONCISE]}))
    assert [f.id for f in from_yaml] == [f.id for f in from_json]


# ---- loading errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.yaml: file not found"):
        load_feedbacks(tmp_path / "nope.yaml")


def test_unsupported_extension(tmp_path):
    assert ".yaml, .yml, .json or .jsonl" in load_error(tmp_path, "fb.txt", "[]")


def test_jsonl_feedbacks_one_per_line_and_their_errors(tmp_path):
    path = tmp_path / "fb.jsonl"
    path.write_text(
        '{"content": "Be brief.", "domain": "weather", "effect": "short", "scope": "regional", '
        '"type": "qualitative"}\n\n'
    )
    assert [f.content for f in load_feedbacks(path)] == ["Be brief."]
    assert load_error(tmp_path, "empty.jsonl", "\n").endswith("empty.jsonl: no feedbacks in the file")
    assert "bad.jsonl:2: invalid JSON" in load_error(tmp_path, "bad.jsonl", '{"content": "a"}\n{oops\n')


def test_invalid_yaml_names_the_line(tmp_path):
    msg = load_error(tmp_path, "fb.yaml", "- content: a\n  domain: b\n  effect: [c\n")
    assert msg.startswith(f"{tmp_path / 'fb.yaml'}:") and "invalid YAML" in msg
    assert msg.split(":")[1].isdigit()


def test_invalid_json_names_the_line(tmp_path):
    msg = load_error(tmp_path, "fb.json", '[\n  {"content": "a",\n  }\n]')
    assert msg.startswith(f"{tmp_path / 'fb.json'}:3: invalid JSON")


@pytest.mark.parametrize("data", ["just text\n", "feedbacks: 3\n", "feedbacks:\n"])
def test_not_a_list(tmp_path, data):
    assert "expected a list of feedbacks or a mapping with a 'feedbacks' list" in load_error(
        tmp_path, "fb.yaml", data
    )


def test_bad_byte_names_line_and_offset(tmp_path):
    path = tmp_path / "fb.yaml"
    path.write_bytes(b"- content: a\n  domain: b\xe9\n")
    with pytest.raises(DataError) as e:
        load_feedbacks(path)
    assert str(e.value) == f"{path}:2: not valid UTF-8 (byte 0xe9 at offset 24)"


def test_characters_yaml_does_not_allow(tmp_path):
    msg = load_error(tmp_path, "fb.yaml", "- content: a\n  domain: \x07b\n")
    assert msg == f"{tmp_path / 'fb.yaml'}:2: invalid YAML (character #x0007 is not allowed)"


def test_folder_is_not_a_feedback_file(tmp_path):
    folder = tmp_path / "feedbacks"
    folder.mkdir()
    with pytest.raises(DataError, match=r"feedbacks: is a folder, not a file$"):
        load_feedbacks(folder)


def test_unknown_top_level_key(tmp_path):
    msg = load_error(tmp_path, "fb.yaml", {"feedbacks": [SIGN_OFF], "feedback": []})
    assert "unknown key 'feedback'" in msg


def test_entry_not_a_mapping(tmp_path):
    assert "entry 2: expected a mapping" in load_error(tmp_path, "fb.yaml", [SIGN_OFF, "oops"])


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        (
            {**CONCISE, "metric": {"kind": "sentences", "comparison": "less_than"}},
            "metric.kind",
            "Input should be",
        ),
        ({**CONCISE, "metric": {"kind": "words"}}, "metric.comparison", "needs a comparison"),
        (
            {**CONCISE, "metric": {"kind": "words", "comparison": "less_than", "value": "x"}},
            "metric.value",
            "no value",
        ),
        ({**SIGN_OFF, "metric": {"kind": "ends_with"}}, "metric.value", "non-empty"),
        ({**SIGN_OFF, "metric": {"kind": "contains_any", "value": []}}, "metric.value", "non-empty"),
        ({**SIGN_OFF, "metric": {"kind": "contains_any", "value": ["a", ""]}}, "metric.value", "non-empty"),
        ({**SIGN_OFF, "metric": {"kind": "contains_any", "value": 5}}, "metric.value", "valid string"),
        (
            {**SIGN_OFF, "metric": {"kind": "ends_with", "value": "x", "comparison": "less_than"}},
            "metric.comparison",
            "only counts",
        ),
        (
            {**SIGN_OFF, "metric": {"kind": "regex", "value": ["ok", "(unclosed"]}},
            "metric.value",
            "'(unclosed'",
        ),
        ({**SIGN_OFF, "metric": None}, "metric", "quantitative feedback needs a metric"),
        ({k: v for k, v in SIGN_OFF.items() if k != "metric"}, "metric", "needs a metric"),
        ({**SIGN_OFF, "metric": {"kind": "ends_with", "value": "x", "cased": True}}, "metric.cased", "Extra"),
        ({**SIGN_OFF, "scope": "planet"}, "scope", "Input should be"),
        ({**SIGN_OFF, "domain": ""}, "domain", "at least 1 character"),
        ({**SIGN_OFF, "effect": None}, "effect", "valid string"),
        ({k: v for k, v in SIGN_OFF.items() if k != "type"}, "type", "Field required"),
    ],
)
def test_bad_entry_names_file_entry_and_field(tmp_path, entry, field, words):
    msg = load_error(tmp_path, "feedback.yaml", [FRIENDLY, entry])
    first_words = " ".join(entry["content"].split()[:4])
    assert msg.startswith(f'{tmp_path / "feedback.yaml"}: entry 2 ("{first_words}..."): ')
    assert f"field '{field}': " in msg and words in msg


def test_entry_without_content_is_named_by_index(tmp_path):
    msg = load_error(tmp_path, "fb.json", [{k: v for k, v in SIGN_OFF.items() if k != "content"}])
    assert msg == f"{tmp_path / 'fb.json'}: entry 1: field 'content': Field required"


def test_short_content_is_quoted_whole(tmp_path):
    msg = load_error(tmp_path, "fb.yaml", [{**FRIENDLY, "content": "Be brief", "scope": 1}])
    assert "entry 1 (\"Be brief\"): field 'scope'" in msg


def test_duplicate_ids_name_both_entries(tmp_path):
    twin = {**SIGN_OFF, "categories": ["other"], "scope": "global"}
    msg = load_error(tmp_path, "fb.yaml", [SIGN_OFF, FRIENDLY, twin])
    assert 'entry 3 ("Always sign off emails...")' in msg and 'entry 1 ("Always sign off emails...")' in msg
    assert Feedback.model_validate(SIGN_OFF).short_id in msg


def test_qualitative_feedback_may_omit_metric():
    assert Feedback.model_validate(FRIENDLY).metric is None


# ---- selection -----------------------------------------------------------------------------------------


@pytest.fixture
def feedbacks():
    return [Feedback.model_validate(e) for e in (SIGN_OFF, CONCISE, FRIENDLY)]


def test_select_all_when_nothing_given(feedbacks):
    assert select_feedbacks(feedbacks) == feedbacks
    assert select_feedbacks(feedbacks, ids=[], categories=[]) == feedbacks


def test_select_by_id_prefix(feedbacks):
    target = feedbacks[1]
    assert select_feedbacks(feedbacks, ids=[target.id[:6]]) == [target]
    assert select_feedbacks(feedbacks, ids=[target.id]) == [target]
    both = select_feedbacks(feedbacks, ids=[feedbacks[2].short_id, feedbacks[0].short_id])
    assert both == [feedbacks[0], feedbacks[2]]  # file order kept


def test_select_by_category(feedbacks):
    assert select_feedbacks(feedbacks, categories=["style"]) == [feedbacks[1]]
    assert select_feedbacks(feedbacks, categories=["email", "code"]) == feedbacks[:2]


def test_select_by_id_or_category(feedbacks):
    chosen = select_feedbacks(feedbacks, ids=[feedbacks[2].short_id], categories=["email"])
    assert chosen == [feedbacks[0], feedbacks[2]]


def test_unknown_prefix_lists_what_is_available(feedbacks):
    missing = next(c for c in "0123456789abcdef" if not any(f.id.startswith(c) for f in feedbacks))
    with pytest.raises(DataError) as e:
        select_feedbacks(feedbacks, ids=[feedbacks[0].short_id, missing])
    msg = str(e.value)
    assert f"'{missing}'" in msg and all(f.short_id in msg for f in feedbacks)
    assert "code, email, style" in msg


def test_unknown_category_lists_what_is_available(feedbacks):
    with pytest.raises(DataError, match=r"category 'legal'.*available ids: .*categories: code, email, style"):
        select_feedbacks(feedbacks, ids=[feedbacks[0].short_id], categories=["legal"])


# ---- metrics -------------------------------------------------------------------------------------------


def m(kind, value=None, comparison=None, case_sensitive=False) -> Metric:
    return Metric(kind=kind, value=value, comparison=comparison, case_sensitive=case_sensitive)


@pytest.mark.parametrize(
    ("kind", "text", "count"),
    [
        ("words", "one two  three\nfour\t five", 5),
        ("words", "   \n ", 0),
        ("characters", "  abc de \n", 6),
        ("characters", "", 0),
        ("lines", "a\n\n  \nb\nc", 3),
        ("lines", "single line", 1),
        ("lines", "", 0),
    ],
)
def test_counts(kind, text, count):
    assert metric_value(m(kind, comparison="less_than"), text) == count


@pytest.mark.parametrize(
    ("metric", "text", "expected"),
    [
        (m("contains_any", ["apple", "pear"]), "I like PEARS", True),
        (m("contains_any", ["apple", "pear"], case_sensitive=True), "I like PEARS", False),
        (m("contains_any", "plum"), "I like pears", False),
        (m("contains_all", ["apple", "pear"]), "Apple and pear", True),
        (m("contains_all", ["apple", "pear"]), "apple only", False),
        (m("contains_all", ["Apple", "pear"], case_sensitive=True), "apple and pear", False),
        (m("contains_none", ["sorry", "apolog"]), "Here you go.", True),
        (m("contains_none", ["sorry", "apolog"]), "I APOLOGIZE.", False),
        (m("contains_none", ["sorry"], case_sensitive=True), "SORRY", True),
        (m("regex", r"^\d+\.\s"), "1. first", True),
        (m("regex", r"\bBEST\b"), "all the best", True),
        (m("regex", r"\bBEST\b", case_sensitive=True), "all the best", False),
        (m("regex", ["xyz", r"\d"]), "room 4", True),
        (m("starts_with", "Dear Jared"), "\n  dear jared, hi", True),
        (m("starts_with", "Dear Jared", case_sensitive=True), "dear jared, hi", False),
        (m("starts_with", ["Hi", "Hello"]), "Hello there", True),
        (m("starts_with", "Dear"), "Oh Dear", False),
        (m("ends_with", "Best, Alex"), "Thanks!\nbest, alex\n\n  ", True),
        (m("ends_with", " Best, Alex\n"), "Thanks! Best, Alex", True),
        (m("ends_with", "Best, Alex", case_sensitive=True), "best, alex", False),
        (m("ends_with", "Best, Alex"), "Best, Alex. P.S.", False),
    ],
)
def test_match_kinds(metric, text, expected):
    assert metric_value(metric, text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "(?P<x>a)(?P=x)(unclosed [ ( \\",
        "__import__('os').system('echo pwned')",
        "{{7*7}} ${7*7} %s %(x)s \x00 \u202e",
        "a" * 10_000 + "!",
    ],
)
def test_hostile_text_is_matched_as_data(text):
    assert metric_value(m("regex", r"pwned|unclosed|7\*7"), text) is any(
        s in text for s in ("pwned", "unclosed", "7*7")
    )
    assert metric_value(m("contains_any", ["(", "$", "!"]), text) is True
    assert metric_value(m("words", comparison="greater_than"), text) == len(text.split())
    assert adheres(m("contains_none", ["rm -rf"]), text, "") is True


def test_regex_metacharacters_in_text_are_literal_for_contains():
    assert metric_value(m("contains_any", ".*"), "abc") is False
    assert metric_value(m("contains_any", ".*"), "a.*b") is True
    assert metric_value(m("regex", ".*"), "abc") is True


@pytest.mark.parametrize(
    ("metric", "response", "baseline", "adherent", "different"),
    [
        (m("words", comparison="less_than"), "short answer", "a much longer answer here", True, True),
        (m("words", comparison="less_than"), "a much longer answer here", "short answer", False, True),
        (m("words", comparison="less_than"), "two words", "also two", False, False),  # tie
        (m("words", comparison="greater_than"), "one two three", "one two", True, True),
        (m("words", comparison="greater_than"), "one two", "three four", False, False),  # tie
        (m("characters", comparison="less_than"), "abc", "abcd", True, True),
        (m("characters", comparison="less_than"), " abcd\n", "abcd", False, False),  # tie after strip
        (m("characters", comparison="greater_than"), "abcde", "abcd", True, True),
        (m("lines", comparison="greater_than"), "a\nb\nc", "a\nb", True, True),
        (m("lines", comparison="greater_than"), "a\n\nb", "a\nb", False, False),  # tie: blank not counted
        (m("lines", comparison="less_than"), "a", "a\nb", True, True),
        (m("ends_with", "Best, Alex"), "Hi.\nBest, Alex", "Hi.\nBest, Alex", True, False),
        (m("ends_with", "Best, Alex"), "Hi.\nBest, Alex", "Hi.", True, True),
        (m("ends_with", "Best, Alex"), "Hi.", "Hi.\nBest, Alex", False, True),
        (m("ends_with", "Best, Alex"), "Hi.", "Bye.", False, False),
        (m("contains_none", "sorry"), "Sure.", "Sorry!", True, True),
        (m("contains_all", ["a", "b"]), "a b", "b a", True, False),
        (m("regex", r"\d"), "no digits", "4 digits", False, True),
        (m("starts_with", "Dear"), "Dear X", "Hello X", True, True),
        (m("contains_any", "x", case_sensitive=True), "X", "x", False, True),
    ],
)
def test_adheres_and_changed(metric, response, baseline, adherent, different):
    assert adheres(metric, response, baseline) is adherent
    assert changed(metric, response, baseline) is different


def test_metric_validation_outside_files():
    with pytest.raises(ValidationError, match="does not compile"):
        Metric(kind="regex", value="[")
    with pytest.raises(ValidationError, match="needs a comparison"):
        Metric(kind="lines")
    assert Metric(kind="lines", comparison="greater_than").value is None
