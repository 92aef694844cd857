"""Data sets from the Hugging Face hub or a local `datasets` folder, read as feedlearn reads its files.

A `DatasetSource` names a hub id (`load_dataset`) or a folder written by `save_to_disk` (`load_from_disk`),
a split, an optional subset and a column mapping. Its rows are exported once, with the columns renamed, to
a JSONL file in the cache ($FEEDLEARN_CACHE/datasets), which the method's usual loader then reads: the same
validation, and an error names that file's line, which can be opened to see the row as feedlearn saw it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from feedlearn.cache import cache_home
from feedlearn.data.jsonl import write_text_atomic
from feedlearn.errors import DataError


class DatasetSource(BaseModel):
    """A split of a `datasets` data set: a hub id or a folder saved with `save_to_disk`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A hub id (e.g. 'openai/gsm8k') or a local folder saved with save_to_disk.")
    split: str = Field(default="train", description="The split to read.")
    subset: str | None = Field(default=None, description="The hub data set's configuration (e.g. 'main').")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="feedlearn field -> the data set's column, for columns named otherwise "
        "(e.g. {question: problem_text}).",
    )


def export_rows(source: DatasetSource) -> Path:
    """The JSONL file of the source's rows, columns renamed (exported on first use; a local folder is
    exported again when its files change)."""
    local = _is_local(source.name)
    stamp = (
        [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(source.name).iterdir())]
        if local
        else []
    )
    key = hashlib.sha256(json.dumps([source.model_dump(), stamp], default=str).encode()).hexdigest()[:16]
    path = cache_home() / "datasets" / f"{key}.jsonl"
    if path.exists():
        return path
    rows = _open(source, local)
    missing = sorted(set(source.columns.values()) - set(rows.column_names))
    if missing:
        raise DataError(
            f"dataset '{source.name}' ({source.split}): no column {', '.join(map(repr, missing))}; "
            f"its columns are {', '.join(rows.column_names)}"
        )
    renamed = {column: field for field, column in source.columns.items()}
    text = "".join(
        json.dumps({renamed.get(k, k): v for k, v in row.items()}, ensure_ascii=False, default=str) + "\n"
        for row in rows
    )
    write_text_atomic(path, text)
    return path


def _is_local(name: str) -> bool:
    """Whether `name` means a local folder (it exists, or is written as a path: absolute, relative with
    ./ or ../, under ~, or with more folders than a hub id's owner/name); a file is refused."""
    path = Path(name).expanduser()
    if path.is_file():
        raise DataError(
            f"dataset '{name}' is a file: a dataset is a hub id or a folder saved with save_to_disk; give a "
            "JSONL, JSON or Parquet file as `path` instead"
        )
    if path.is_dir():
        return True
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise DataError(f"dataset '{name}': no such folder (a hub id is 'name' or 'owner/name')")
    return False


def _open(source: DatasetSource, local: bool):
    """The split as a `datasets.Dataset`, or a one-line DataError."""
    import datasets

    try:
        if local:
            loaded = datasets.load_from_disk(str(Path(source.name).expanduser()))
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise DataError(
                        f"dataset '{source.name}': no split '{source.split}'; it has {', '.join(loaded)}"
                    )
                return loaded[source.split]
            if source.split != (loaded.split or "train"):
                kind = f"split '{loaded.split}'" if loaded.split else "no splits"
                raise DataError(
                    f"dataset '{source.name}' is a single data set ({kind}), so it has no split "
                    f"'{source.split}': drop `split`, or save a DatasetDict with that split"
                )
            return loaded
        return datasets.load_dataset(source.name, source.subset, split=source.split)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError, ConnectionError) as e:
        where = "a local folder saved with save_to_disk" if local else "a hub id, which needs network access"
        raise DataError(f"cannot load dataset '{source.name}' as {where}: {str(e).splitlines()[0]}") from None
