"""`feedlearn recipe new` and `recipe show`: a starter recipe that validates as the method's tiny recipe,
and a resolved recipe that names every field with its description and marks what the recipe set."""

from __future__ import annotations

import math

import pytest
import yaml
from pydantic import BaseModel

from feedlearn.cli import METHODS, load_method, main
from feedlearn.recipe_docs import yaml_value

RECIPES = __import__("pathlib").Path(__file__).resolve().parents[1] / "feedlearn" / "recipes"


def leaves(model: BaseModel, prefix: str = ""):
    """(dotted path, description) of every field that holds a value, nested sections walked."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.description


@pytest.mark.parametrize(
    "value", [1e-05, 2.0e-3, 0.1, 3.0, -1.5e10, 7, True, None, "a: b", [1, "x"], {"k": 0.5}]
)
def test_values_read_back_as_themselves(value):
    assert yaml.safe_load(yaml_value(value)) == value
    assert math.isinf(yaml.safe_load(yaml_value(math.inf)))


@pytest.mark.parametrize("method", list(METHODS))
def test_recipe_new_writes_a_commented_recipe_that_validates_as_the_tiny_one(method, tmp_path, capsys):
    out = tmp_path / "starter.yaml"
    assert main(["recipe", "new", method, "--out", str(out)]) == 0
    written, _ = load_method(str(out), [])
    tiny, _ = load_method(str(RECIPES / method / "tiny.yaml"), [])
    assert written == tiny
    text = out.read_text()
    described = [d for _, d in leaves(tiny) if d]
    assert all(f"# {d}" in text for d in described)  # each field's own description, above it
    assert text.count("(default: ") + text.count("(required)") == len(list(leaves(tiny)))


def test_recipe_show_marks_what_the_recipe_and_set_gave(capsys):
    recipe = str(RECIPES / "dpo" / "tiny.yaml")
    assert main(["recipe", "show", recipe, "--set", "train.learning_rate=2e-4"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "  learning_rate: 0.0002  # *" in shown
    assert "seed: 0  # *" in shown  # the recipe gives it, equal to the default: still the recipe's
    assert 'run_dir: "runs"' in shown  # left at its default: not marked
    config, _ = load_method(recipe, [])
    for path, _ in leaves(config):
        assert any(line.strip().startswith(path.split(".")[-1] + ":") for line in shown), path
    assert main(["recipe", "new", "nosuch"]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err


def test_help_lists_every_command_and_shipped_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in [*METHODS, "run", "demo", "report", "recipe", "serve"]:
        assert command in text
    for recipe in RECIPES.glob("*/*.yaml"):
        if recipe.parent.name in METHODS:
            assert recipe.name in text, recipe


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_help_lists_its_stages_and_each_stage_exists(method, capsys):
    info = METHODS[method]
    with pytest.raises(SystemExit):
        main([method, "--help"])
    text = capsys.readouterr().out
    for stage, does in info.stages.items():
        assert callable(getattr(info.method, stage.replace("-", "_")))
        assert f"{stage} " in text and does[:40] in text


def test_recipe_new_refuses_a_folder_a_missing_parent_and_an_existing_file(tmp_path, capsys):
    existing = tmp_path / "mine.yaml"
    existing.write_text("method: rise\n")
    cases = [
        (tmp_path, "is a folder: name a file to write"),
        (
            tmp_path / "nowhere" / "r.yaml",
            f"is in a folder that does not exist ({tmp_path / 'nowhere'}): name a file to write",
        ),
        (existing, "exists: pass --force to overwrite it"),
    ]
    for out, message in cases:
        assert main(["recipe", "new", "dpo", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"error: --out {out} {message}"
    assert existing.read_text() == "method: rise\n"
    assert main(["recipe", "new", "dpo", "--out", str(existing), "--force"]) == 0
    assert existing.read_text().startswith("# A dpo recipe")
