"""Verbal feedback: one sentence of what to change, where, and how to check that it was applied."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from feedlearn.data.jsonl import (
    describe_validation_error,
    json_lines,
    parse_json,
    parse_yaml,
    read_text,
    require_file,
)
from feedlearn.data.records import Record
from feedlearn.errors import DataError

FEEDBACK_NAMESPACE = uuid.UUID("6f1c3a52-2b61-4c7e-9d3e-0c5a7f7e4b11")
"""Namespace of feedback ids: uuid5(namespace, content + domain + effect)."""

COUNT_KINDS = ("words", "characters", "lines")
"""Metric kinds that count, compared with the baseline's count; the other kinds are true or false."""


class Metric(Record):
    """A programmatic check of whether a response follows a feedback."""

    kind: Literal[
        "words",
        "characters",
        "lines",
        "contains_any",
        "contains_all",
        "contains_none",
        "regex",
        "starts_with",
        "ends_with",
    ] = Field(
        description="words / characters / lines: a count, compared with the baseline response's by "
        "`comparison`; the others: whether the response matches `value`."
    )
    value: str | list[str] | None = Field(
        default=None,
        validate_default=True,
        description="The text(s) or regular expression(s) to look for (not for counts).",
    )
    comparison: Literal["greater_than", "less_than"] | None = Field(
        default=None,
        validate_default=True,
        description="For counts: the response follows the feedback when its count is strictly "
        "greater / less than the baseline's (a tie is not adherence).",
    )
    case_sensitive: bool = Field(default=False, description="Match letter case exactly.")

    @field_validator("value")
    @classmethod
    def _value_fits_kind(cls, value: str | list[str] | None, info: ValidationInfo):
        kind = info.data.get("kind")
        if kind is None:  # the kind itself is invalid and reported
            return value
        if kind in COUNT_KINDS:
            if value is not None:
                raise ValueError(f"a '{kind}' count takes no value (it is compared by 'comparison')")
            return value
        texts = _texts(value)
        if not texts or not all(texts):
            raise ValueError(f"a '{kind}' metric needs a non-empty text or list of texts")
        if kind == "regex":
            for pattern in texts:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"regex {pattern!r} does not compile: {e}") from None
        return value

    @field_validator("comparison")
    @classmethod
    def _comparison_fits_kind(cls, comparison: str | None, info: ValidationInfo):
        kind = info.data.get("kind")
        if kind in COUNT_KINDS and comparison is None:
            raise ValueError(f"a '{kind}' count needs a comparison: greater_than or less_than")
        if kind is not None and kind not in COUNT_KINDS and comparison is not None:
            raise ValueError(f"only counts ({', '.join(COUNT_KINDS)}) take a comparison, not '{kind}'")
        return comparison


class Feedback(Record):
    """One sentence of verbal feedback and where it applies."""

    content: str = Field(min_length=1, description="The feedback as the user said it.")
    domain: str = Field(min_length=1, description="Where it applies, e.g. 'emails to my boss Jared'.")
    effect: str = Field(
        min_length=1, description="What to do there, e.g. 'end with the sign-off Best, Alex'."
    )
    scope: Literal["global", "regional", "local"] = Field(
        default="local", description="How wide the domain is."
    )
    type: Literal["quantitative", "qualitative"] = Field(
        description="quantitative: checked by `metric`; qualitative: judged by a model."
    )
    metric: Metric | None = Field(
        default=None, validate_default=True, description="The check of a quantitative feedback."
    )
    categories: list[str] = Field(default_factory=list, description="Tags to select feedbacks by.")

    @field_validator("metric")
    @classmethod
    def _quantitative_has_metric(cls, metric: Metric | None, info: ValidationInfo):
        if metric is None and info.data.get("type") == "quantitative":
            raise ValueError("a quantitative feedback needs a metric")
        return metric

    @property
    def id(self) -> str:
        """uuid5 of content, domain and effect: stable across files and runs."""
        return str(uuid.uuid5(FEEDBACK_NAMESPACE, f"{self.content}\n{self.domain}\n{self.effect}"))

    @property
    def short_id(self) -> str:
        """The id's first 8 characters: the feedback's folder in a C3PO run and its name in messages."""
        return self.id[:8]


# ---- feedback files ------------------------------------------------------------------------------------


def load_feedbacks(path: str | Path) -> list[Feedback]:
    """The feedbacks of a YAML or JSON file (a list of them, or a mapping with a `feedbacks:` list), or of
    a JSONL file (one per line).

    A problem raises a one-line DataError naming the file, the entry (counted from 1) and the field; a
    file with no feedbacks is a problem too.
    """
    path = Path(path)
    entries = _read_entries(path)
    feedbacks: list[Feedback] = []
    first_entry: dict[str, int] = {}
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: {_entry_name(i, entry)}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected a mapping of fields, got {type(entry).__name__}")
        try:
            feedback = Feedback.model_validate(entry)
        except ValidationError as e:
            raise DataError(f"{where}: {describe_validation_error(e)}") from None
        if feedback.id in first_entry:
            j = first_entry[feedback.id]
            raise DataError(
                f"{where}: same id {feedback.short_id} as {_entry_name(j, entries[j - 1])} "
                "(same content, domain and effect)"
            )
        first_entry[feedback.id] = i
        feedbacks.append(feedback)
    return feedbacks


def _read_entries(path: Path) -> list[Any]:
    """The raw list of feedback entries of a file; a file with none is an error."""
    require_file(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".jsonl"):
        raise DataError(f"{path}: expected a .yaml, .yml, .json or .jsonl feedback file")
    if suffix == ".jsonl":  # one feedback per line (a `datasets` split is exported so)
        entries = [row for _, row in json_lines(path)]
        if not entries:
            raise DataError(f"{path}: no feedbacks in the file")
        return entries
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: no feedbacks in the file")
    data = parse_json(path, text) if suffix == ".json" else parse_yaml(path, text)
    if data is None:  # YAML of only comments, or a JSON null
        raise DataError(f"{path}: no feedbacks in the file")
    if isinstance(data, dict):
        unknown = sorted(str(k) for k in data if k != "feedbacks")
        if unknown:
            raise DataError(f"{path}: unknown key '{unknown[0]}'; the only top-level key is 'feedbacks'")
        data = data.get("feedbacks")
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a list of feedbacks or a mapping with a 'feedbacks' list, "
            f"got {type(data).__name__}"
        )
    if not data:
        raise DataError(f"{path}: no feedbacks in the file")
    return data


def _entry_name(i: int, entry: Any) -> str:
    """`entry 2 ("Always sign off with...")`: the index and the content's first words when present."""
    content = entry.get("content") if isinstance(entry, dict) else None
    if not isinstance(content, str) or not content.split():
        return f"entry {i}"
    words = content.split()
    short = " ".join(words[:4])[:40]
    return f'entry {i} ("{short}{"..." if short != " ".join(words) else ""}")'


def select_feedbacks(
    feedbacks: Iterable[Feedback], ids: Iterable[str] | None = None, categories: Iterable[str] | None = None
) -> list[Feedback]:
    """The feedbacks whose id starts with one of `ids` or that carry one of `categories`; none given: all.

    A prefix or category that matches no feedback raises DataError listing the available ones.
    """
    feedbacks = list(feedbacks)
    ids, categories = list(ids or ()), list(categories or ())
    if not ids and not categories:
        return feedbacks
    for prefix in ids:
        if not any(f.id.startswith(prefix) for f in feedbacks):
            raise DataError(f"no feedback id starts with '{prefix}'; {_available(feedbacks)}")
    for category in categories:
        if not any(category in f.categories for f in feedbacks):
            raise DataError(f"no feedback has the category '{category}'; {_available(feedbacks)}")
    return [
        f
        for f in feedbacks
        if any(f.id.startswith(p) for p in ids) or any(c in f.categories for c in categories)
    ]


def _available(feedbacks: list[Feedback]) -> str:
    ids = ", ".join(f.short_id for f in feedbacks) or "none"
    categories = ", ".join(sorted({c for f in feedbacks for c in f.categories})) or "none"
    return f"available ids: {ids}; categories: {categories}"


# ---- metrics -------------------------------------------------------------------------------------------


def _texts(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or ())


def metric_value(metric: Metric, text: str) -> float | bool:
    """A count (words: whitespace-split tokens; characters, surrounding whitespace not counted; lines:
    non-empty ones) or whether `text` matches the metric's value(s). `text` is only ever matched, as data.
    """
    if metric.kind == "words":
        return len(text.split())
    if metric.kind == "characters":
        return len(text.strip())
    if metric.kind == "lines":
        return sum(1 for line in text.splitlines() if line.strip())
    values = _texts(metric.value)
    if metric.kind == "regex":
        flags = 0 if metric.case_sensitive else re.IGNORECASE
        return any(re.search(pattern, text, flags) for pattern in values)
    if not metric.case_sensitive:
        text, values = text.casefold(), [v.casefold() for v in values]
    if metric.kind == "contains_any":
        return any(v in text for v in values)
    if metric.kind == "contains_all":
        return all(v in text for v in values)
    if metric.kind == "contains_none":
        return not any(v in text for v in values)
    if metric.kind == "starts_with":
        return any(text.strip().startswith(v.strip()) for v in values)
    return any(text.strip().endswith(v.strip()) for v in values)  # ends_with


def adheres(metric: Metric, response: str, baseline: str) -> bool:
    """Whether `response` follows the feedback: a match, or a count strictly beyond the baseline's."""
    value = metric_value(metric, response)
    if metric.kind not in COUNT_KINDS:
        return value
    base = metric_value(metric, baseline)
    return value > base if metric.comparison == "greater_than" else value < base


def changed(metric: Metric, response: str, baseline: str) -> bool:
    """Whether the behaviour the metric checks differs between `response` and `baseline`."""
    return metric_value(metric, response) != metric_value(metric, baseline)


def scope_scores(
    feedback: Feedback, responses: dict[str, list[str]], baseline: dict[str, list[str]]
) -> dict[str, list[float]]:
    """Per scope, 1 or 0 per response: whether it follows the feedback (`<scope>_scope_adherence`) and
    whether it changed versus its baseline (`<scope>_scope_changed`), by the feedback's metric; a tie with
    the baseline is not adherence. A scope without responses is left out."""
    out = {}
    for scope in responses:
        pairs = list(zip(responses[scope], baseline[scope], strict=True))
        if pairs:
            out[f"{scope}_scope_adherence"] = [float(adheres(feedback.metric, r, b)) for r, b in pairs]
            out[f"{scope}_scope_changed"] = [float(changed(feedback.metric, r, b)) for r, b in pairs]
    return out


def scope_metrics(
    feedback: Feedback, responses: dict[str, list[str]], baseline: dict[str, list[str]]
) -> dict[str, float]:
    """Per scope, the share (%) of responses that follow the feedback and that changed versus the
    baseline (`scope_scores`, averaged)."""
    return {
        key: round(100.0 * sum(values) / len(values), 2)
        for key, values in scope_scores(feedback, responses, baseline).items()
    }
