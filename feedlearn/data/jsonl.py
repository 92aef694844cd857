"""JSONL and JSON files: validated reading with file/line/field errors, crash-safe appends, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from feedlearn.errors import DataError

T = TypeVar("T", bound=BaseModel)


UNION_TAGS = {"str", "int", "float", "bool", "none"}


def field_path(loc: tuple) -> tuple:
    """A pydantic error location without the union-member tags it inserts (`str`, `list[str]`, `Model`)."""
    return tuple(p for p in loc if isinstance(p, int) or not ("[" in p or p[:1].isupper() or p in UNION_TAGS))


def describe_validation_error(err: ValidationError) -> str:
    """The first problem of a pydantic error as `field 'a.b': message`."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in field_path(first["loc"])) or "<record>"
    return f"field '{field}': {first['msg']}"


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; invalid JSON names file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def iter_jsonl(path: str | Path, model: type[T]) -> Iterator[T]:
    """Yield each line of `path` as a `model`; a bad line raises DataError naming file, line and field."""
    for lineno, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        try:
            yield model.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}:{lineno}: {describe_validation_error(e)}") from None


def read_jsonl(path: str | Path, model: type[T]) -> list[T]:
    """All records of a JSONL file, validated (see `iter_jsonl`)."""
    return list(iter_jsonl(path, model))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a whole file so that readers see the old content or the new, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as pretty JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[BaseModel]) -> None:
    """Write a whole JSONL file of records, atomically."""
    write_text_atomic(path, "".join(r.model_dump_json() + "\n" for r in records))


class JsonlAppender:
    """Append records to a JSONL file one durable line at a time, keyed by the record's `id`.

    Opening repairs a line torn by a crash (it is dropped: its record was not finished) and reads the ids
    already written, so a resumed stage skips them: nothing is lost and nothing is written twice.
    """

    def __init__(self, path: str | Path, model: type[T]):
        self.path = Path(path)
        self.model = model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.ids: set[str] = set()
        if self.path.exists():
            self.ids = {r.id for r in iter_jsonl(self.path, model)}

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.ids

    def append(self, *records: BaseModel) -> None:
        """Write records one line each, then flush them to disk; an id already written is an error."""
        seen = set(self.ids)
        for record in records:
            if record.id in seen:
                raise DataError(f"{self.path}: record id '{record.id}' is already written")
            seen.add(record.id)
        with self.path.open("a", encoding="utf-8") as f:
            for record in records:
                f.write(record.model_dump_json() + "\n")
                self.ids.add(record.id)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list:
        """Every record written so far."""
        return read_jsonl(self.path, self.model) if self.path.exists() else []
