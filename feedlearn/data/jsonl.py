"""JSONL and JSON files: validated reading with file/line/field errors, crash-safe appends, atomic writes.

Also the checks every text file a user gives goes through (it is a file, it is UTF-8, its JSON or YAML
parses), each problem raised on one line naming the file and, where it applies, the line.
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from feedlearn.errors import DataError, FeedlearnError

T = TypeVar("T", bound=BaseModel)


UNION_TAGS = {"str", "int", "float", "bool", "none"}
NEWLINE = "\n"


def field_path(loc: tuple) -> tuple:
    """A pydantic error location without the union-member tags it inserts (`str`, `list[str]`, `Model`)."""
    return tuple(p for p in loc if isinstance(p, int) or not ("[" in p or p[:1].isupper() or p in UNION_TAGS))


def describe_validation_error(err: ValidationError) -> str:
    """The first problem of a pydantic error as `field 'a.b': message`."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in field_path(first["loc"])) or "<record>"
    return f"field '{field}': {first['msg']}"


def require_file(
    path: str | Path, error: type[FeedlearnError] = DataError, missing: str = "file not found"
) -> Path:
    """`path`, if it is a file; else `error`: '<path>: is a folder, not a file' or '<path>: <missing>'."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a file")
    if not path.exists():
        raise error(f"{path}: {missing}")
    return path


def _not_utf8(path: Path, lineno: int, byte: int, offset: int) -> str:
    return f"{path}:{lineno}: not valid UTF-8 (byte 0x{byte:02x} at offset {offset})"


def _cannot_read(path: Path, err: OSError) -> str:
    return f"{path}: cannot read the file ({err.strerror or err})"


def read_text(
    path: str | Path, error: type[FeedlearnError] = DataError, missing: str = "file not found"
) -> str:
    """The whole text of a UTF-8 file (a leading byte-order mark is dropped). A byte that is not UTF-8
    raises `error` as '<path>:<line>: not valid UTF-8 (byte 0xff at offset 57)', the offset counted in
    bytes from the start of the file."""
    path = require_file(path, error, missing)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(_cannot_read(path, e)) from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        raise error(_not_utf8(path, data.count(b"\n", 0, at) + 1, data[at], at)) from None


def json_problem(err: ValueError | RecursionError) -> str:
    """What a `json.loads` failure that is not a JSONDecodeError says, on one line."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split(";")[0]  # e.g. an integer over Python's 4300-digit limit


def parse_json(path: str | Path, text: str, line: int | None = None) -> Any:
    """The JSON value of `text` from `path` (one line of it: `line`, or the whole file); a problem raises
    DataError as '<path>:<line>: invalid JSON (...)'."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line or e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        where = f"{path}:{line}" if line else str(path)
        raise DataError(f"{where}: invalid JSON ({json_problem(e)})") from None


def parse_yaml(path: str | Path, text: str, error: type[FeedlearnError] = DataError) -> Any:
    """The YAML value of a file's text; a problem raises `error` as '<path>:<line>: invalid YAML (...)'."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        where = f":{e.problem_mark.line + 1}" if e.problem_mark else ""
        problem = " ".join(str(e.problem or e.context or type(e).__name__).split())
    except yaml.reader.ReaderError as e:  # a character YAML does not allow, e.g. a NUL or other control
        where = f":{text.count(NEWLINE, 0, e.position) + 1}"
        code = e.character if isinstance(e.character, int) else ord(e.character)
        problem = f"character #x{code:04x} is not allowed"
    except yaml.YAMLError as e:
        where, problem = "", " ".join(str(e).split())
    except RecursionError:
        where, problem = "", "nested too deeply"
    except ValueError as e:  # a value its tag cannot build, e.g. the date 2024-13-45
        where, problem = "", " ".join(str(e).split())
    raise error(f"{path}{where}: invalid YAML ({problem})") from None


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; invalid JSON names file and line.

    The file is read and decoded one line at a time (lines end at a newline; a carriage return before
    it is whitespace). A byte that is not UTF-8 is reported with its line and its offset in the file.
    """
    path = require_file(path)
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(_cannot_read(path, e)) from None
    with f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            start = len(codecs.BOM_UTF8) if lineno == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as e:
                at = start + e.start
                raise DataError(_not_utf8(path, lineno, raw[at], offset + at)) from None
            offset += len(raw)
            if not line.strip():
                continue
            yield lineno, parse_json(path, line, lineno)


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


def update_json_sections(path: str | Path, sections: dict, legacy: str | None = None) -> dict:
    """Merge `sections` into the JSON object at `path` (written atomically) and return the whole: a
    benchmark's rerun of one arm keeps the other arms' sections. `legacy`: a top-level key that marks a
    file from before the arms were sections; such a file becomes the `tiny` section."""
    path = Path(path)
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if legacy is not None and legacy in earlier:
        earlier = {"tiny": earlier}
    merged = {**earlier, **sections}
    write_json_atomic(path, merged)
    return merged


def write_jsonl_atomic(path: str | Path, records: Iterable[BaseModel]) -> None:
    """Write a whole JSONL file of records, atomically."""
    write_text_atomic(path, "".join(r.model_dump_json() + "\n" for r in records))


def drop_torn_tail(path: Path) -> None:
    """Cut a JSONL file after its last complete line: a line without its newline was torn by a crash."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class JsonlAppender:
    """Append records to a JSONL file one durable line at a time, keyed by the record's `id`.

    Opening repairs a line torn by a crash (it is dropped: its record was not finished) and reads the ids
    already written, so a resumed stage skips them: nothing is lost and nothing is written twice.
    """

    def __init__(self, path: str | Path, model: type[T]):
        self.path = Path(path)
        self.model = model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self.ids: set[str] = set()
        if self.path.exists():
            self.ids = {r.id for r in iter_jsonl(self.path, model)}

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
