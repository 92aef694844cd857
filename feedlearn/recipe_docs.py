"""Recipes that explain themselves: a resolved config written as YAML with every field's description and
default beside it (`feedlearn recipe show`), and a commented starter recipe per method (`feedlearn recipe
new`). The comments come from the settings' own field descriptions, so they cannot drift from the code.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

CHANGED = "  # *"
"""The mark of a value the recipe (or `--set`) gave, where `show` marks changes."""


def yaml_value(value: Any) -> str:
    """A value in YAML's flow style that PyYAML reads back as the same value (floats keep a dot, so that
    1e-05 is not read as a string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa if '.' in mantissa else mantissa + '.0'}{e}{exponent}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {yaml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no YAML form for {type(value).__name__}")


def _default(field) -> Any:
    """A field's default as the recipe would write it (PydanticUndefined: required)."""
    if field.default_factory is not None:
        made = field.default_factory()
        return made.model_dump(mode="json") if isinstance(made, BaseModel) else made
    if isinstance(field.default, BaseModel):
        return field.default.model_dump(mode="json")
    return field.default


def annotated_yaml(config: BaseModel, mark_changes: bool) -> str:
    """`config` as YAML, each key preceded by its description and default; with `mark_changes`, the values
    the recipe set (differing from the default or not) are marked `# *`."""
    lines: list[str] = []
    _write(config, config.model_dump(mode="json"), 0, lines, mark_changes)
    return "\n".join(lines) + "\n"


def _write(model: BaseModel, dumped: dict, depth: int, lines: list[str], mark: bool) -> None:
    """`model`'s keys with their docs; values as `dumped` (the model as saved: serializers applied)."""
    indent = "  " * depth
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        default = _default(field)
        about = field.description or ""
        if isinstance(value, BaseModel):
            lines.append(f"{indent}# {about}" if about else f"{indent}#")
            lines.append(f"{indent}{name}:{CHANGED if mark and name in model.model_fields_set else ''}")
            _write(value, dumped[name], depth + 1, lines, mark)
            continue
        note = "required" if default is PydanticUndefined else f"default: {yaml_value(_plain(default))}"
        lines.append(f"{indent}# {about} ({note})" if about else f"{indent}# ({note})")
        changed = CHANGED if mark and name in model.model_fields_set else ""
        lines.append(f"{indent}{name}: {yaml_value(dumped[name])}{changed}")


def _plain(value: Any) -> Any:
    """Nested models (in lists or unions) as plain data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
