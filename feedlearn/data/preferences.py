"""Preference data in the forms TRL users have (.jsonl, .json, .parquet), read as `PreferencePair`s."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from feedlearn.data.jsonl import describe_validation_error, json_lines, parse_json, read_text, require_file
from feedlearn.data.records import Completion, Message, PreferencePair
from feedlearn.errors import DataError

_FORMS = "rows need prompt/chosen/rejected (prompt may be left inside chosen/rejected) or prompt/a/b"
_MESSAGES = TypeAdapter(dict[str, list[Message]])  # keyed by field name, so errors name the field


def load_pairs(path: str | Path, limit: int | None = None) -> list[PreferencePair]:
    """Read the first `limit` rows (all by default) of a preference file as canonical pairs.

    Accepted rows: prompt/chosen/rejected as text or messages (chosen/rejected may repeat the prompt, or
    hold it implicitly as their shared start), and canonical prompt/a/b with an optional label. A row
    without an `id` gets one derived from its content. A bad row raises DataError naming file, row and field;
    so does a file with no rows.
    """
    path = require_file(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use {', '.join(_READERS)}")
    pairs: list[PreferencePair] = []
    seen: dict[str, str] = {}
    for place, row in islice(reader(path), limit):
        pair = _pair(row, place)
        if pair.id in seen:
            raise DataError(f"{place}: id '{pair.id}' is also used at {seen[pair.id]}; make ids unique")
        seen[pair.id] = place
        pairs.append(pair)
    if not pairs and limit != 0:
        raise DataError(f"{path}: no preference pairs in the file")
    return pairs


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, row in json_lines(path):
        yield f"{path}:{lineno}", row


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    text = read_text(path)
    if not text.strip():
        return  # no rows: load_pairs says the file is empty
    rows = parse_json(path, text)
    if not isinstance(rows, list):
        raise DataError(
            f"{path}: expected a JSON array of objects, got {type(rows).__name__}; "
            "write one array, or one object per line in a .jsonl file"
        )
    for n, row in enumerate(rows, start=1):
        yield f"{path}: row {n}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    for n, row in enumerate(rows, start=1):
        yield f"{path}: row {n}", row


_READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}


def _pair(row: Any, place: str) -> PreferencePair:
    if not isinstance(row, dict):
        raise DataError(f"{place}: expected a JSON object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}  # parquet gives null for a row's absent columns
    labeled = "chosen" in row or "rejected" in row
    if labeled and ("a" in row or "b" in row):
        raise DataError(f"{place}: has both chosen/rejected and a/b fields; keep one pair of responses")
    first, second = ("chosen", "rejected") if labeled else ("a", "b")
    missing = [k for k in ((first, second) if labeled else ("prompt", "a", "b")) if k not in row]
    if missing:
        raise DataError(f"{place}: missing field {', '.join(repr(k) for k in missing)}; {_FORMS}")

    prompt = _completion(row, "prompt", place) if "prompt" in row else None
    x, y = _completion(row, first, place), _completion(row, second, place)
    for name, value in ((first, x), (second, y)):
        if not value:
            raise DataError(f"{place}: field '{name}' is empty; give a non-empty response")
    _same_form(place, (first, x), (second, y))
    if prompt is None or _repeats_prompt(prompt, x, y):
        prompt, x, y = _split(x, y)
    _same_form(place, ("prompt", prompt), (first, x))
    for name, value in ((first, x), (second, y)):
        if isinstance(value, list) and value[-1].role != "assistant":
            raise DataError(f"{place}: field '{name}' must end with an assistant message")

    label = 1 if labeled else row.get("label")
    if label is not None and (type(label) is not int or label not in (1, -1)):
        raise DataError(
            f"{place}: field 'label' is {label!r}; use 1 (a preferred), -1 (b preferred) or omit it"
        )
    pair_id = row["id"] if "id" in row else _content_id(prompt, x, y)
    if type(pair_id) is int:
        pair_id = str(pair_id)
    if not isinstance(pair_id, str):
        raise DataError(f"{place}: field 'id' must be a string or an integer, got {type(pair_id).__name__}")
    return PreferencePair(id=pair_id, prompt=prompt, a=x, b=y, label=label)


def _completion(row: dict, field: str, place: str) -> Completion:
    value = row[field]
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise DataError(
            f"{place}: field '{field}' must be text or a list of messages, got {type(value).__name__}"
        )
    try:
        return _MESSAGES.validate_python({field: value})[field]
    except ValidationError as e:
        raise DataError(f"{place}: {describe_validation_error(e)}") from None


def _same_form(place: str, *fields: tuple[str, Completion]) -> None:
    text = [name for name, value in fields if isinstance(value, str)]
    messages = [name for name, value in fields if not isinstance(value, str)]
    if text and messages:
        raise DataError(
            f"{place}: field '{messages[0]}' is messages but '{text[0]}' is text; "
            "use one form per row (message responses may repeat a text prompt as their first user message)"
        )


def _repeats_prompt(prompt: Completion, x: Completion, y: Completion) -> bool:
    """Whether message responses both start with the prompt (a text prompt counts as one user message)."""
    if isinstance(x, str):
        return False
    lead = [Message(role="user", content=prompt)] if isinstance(prompt, str) else prompt
    return bool(lead) and x[: len(lead)] == lead == y[: len(lead)]


def _split(x: Sequence, y: Sequence) -> tuple[Any, Any, Any]:
    """Shared start of x and y as the prompt, each keeping at least its last element; then the rests.

    For text, TRL's rule: a space just before the first difference goes to the responses.
    """
    n, stop = 0, min(len(x), len(y)) - 1
    while n < stop and x[n] == y[n]:
        n += 1
    if isinstance(x, str) and n and x[n - 1] == " ":
        n -= 1
    return x[:n], x[n:], y[n:]


def _content_id(prompt: Completion, a: Completion, b: Completion) -> str:
    plain = [v if isinstance(v, str) else [m.model_dump() for m in v] for v in (prompt, a, b)]
    blob = json.dumps(plain, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "pair-" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]
