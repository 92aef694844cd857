"""Recipes: YAML files validated into a method's config, with `--set key=value` overrides.

Every mistake is reported on one line with the key's path: an unknown key comes with the closest valid
name, a wrong type with the value that was given.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from feedlearn.data.jsonl import field_path, parse_yaml, read_text
from feedlearn.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file, a folder, a byte that is not UTF-8, malformed YAML or
    an empty recipe raises a one-line ConfigError naming the file (and the line where there is one)."""
    path = Path(path)
    text = read_text(path, ConfigError, missing="recipe not found")
    data = parse_yaml(path, text, ConfigError)
    if data is None:
        raise ConfigError(f"{path}: the recipe is empty; write a YAML mapping of keys to values")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a YAML mapping of keys to values, got {_yaml_kind(data)}"
        )
    return data


def _yaml_kind(value: Any) -> str:
    """A YAML value's kind as a recipe writer says it: 'a list', 'a string', ..."""
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML; list items by index: `turns.1.n=8`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{assignment}': expected key=value, e.g. train.learning_rate=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: invalid YAML value {raw!r}") from None
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_index(part, node, parts[: i + 1])]
        elif isinstance(node, dict):
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, parts)] = value
    else:
        node[last] = value


def _index(part: str, node: list, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a recipe mapping; the first problem is raised as ConfigError with its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = field_path(first["loc"])
        path = ".".join(str(p) for p in loc)
        if first["type"] == "extra_forbidden":
            hint = _suggest(model, loc)
            raise ConfigError(f"{source}: unknown key '{path}'{hint}") from None
        if first["type"] == "missing":
            raise ConfigError(f"{source}: missing key '{path}'") from None
        given = f" (got {first['input']!r})" if not isinstance(first["input"], (dict, list)) else ""
        raise ConfigError(f"{source}: key '{path}': {first['msg']}{given}") from None


def _suggest(model: type[BaseModel], loc: tuple) -> str:
    """'; did you mean ...?' naming the closest field at the location of an unknown key."""
    node: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = node.model_fields.get(part) if isinstance(node, type) else None
        node = _model_of(field.annotation) if field else None
        if node is None:
            return ""
    names = list(node.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{'.'.join(str(p) for p in (*loc[:-1], close[0]))}'?"
    return f"; valid keys here: {', '.join(names)}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def load_recipe(model: type[M], path: str | Path, overrides: list[str] = ()) -> M:
    """Read, override and validate a recipe."""
    data = read_yaml(path)
    for assignment in overrides:
        apply_override(data, assignment)
    return validate(model, data, str(path))
