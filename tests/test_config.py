"""Recipes: YAML loading, `--set` overrides and one-line errors with key paths (RiseConfig as the model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedlearn import cli
from feedlearn.config import apply_override, load_recipe, read_yaml
from feedlearn.errors import ConfigError
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.models import loading
from feedlearn.models.gguf import NAMED_GGUF, named_gguf

RECIPES_DIR = Path(cli.__file__).parent / "recipes"

# A copy of recipes/rise/tiny-from-scratch.yaml, so edits to the shipped recipe do not move these tests.
TINY = r"""# RISE on a tiny model built locally.
method: rise
seed: 0
model:
  path: tiny
tiny: {vocab_size: 512, hidden_size: 128, intermediate_size: 384, num_layers: 4, num_heads: 4}
generation_batch_size: 512
prompt:
  instruction: "Solve step by step. Put the final answer in \\boxed{}."
  worked_example: false
train_problems: {synthetic: {n: 2000, seed: 1, levels: [1, 2]}}
test_problems: {synthetic: {n: 300, seed: 2, levels: [1, 2]}}
sft:
  problems: {synthetic: {n: 30000, seed: 3, levels: [1, 2]}}
  train: {learning_rate: 3.0e-3, batch_size: 32, grad_accum: 1, warmup_ratio: 0.05, max_length: 256}
collect:
  turns: [{n: 1}, {n: 16}]
  temperature: 1.0
  max_new_tokens: 64
train: {learning_rate: 1.0e-3, batch_size: 32, grad_accum: 1, epochs: 2, max_length: 512}
evaluate: {turns: 5, parallel_samples: 5, temperature: 1.0, max_new_tokens: 64}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


def write(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(recipe, overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_recipe(RiseConfig, recipe, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- valid recipes and overrides --------------------------------------------------------------------------


def test_valid_recipe_loads(recipe):
    c = load_recipe(RiseConfig, recipe)
    assert c.method == "rise" and c.model.path == "tiny" and c.model.lora is None
    assert c.tiny.vocab_size == 512 and c.tiny.num_layers == 4
    assert c.prompt.instruction == "Solve step by step. Put the final answer in \\boxed{}."
    assert c.prompt.worked_example is False
    assert c.train_problems.synthetic.levels == [1, 2] and c.test_problems.synthetic.n == 300
    assert c.sft.train.learning_rate == 3e-3 and c.sft.train.warmup_ratio == 0.05
    assert [t.n for t in c.collect.turns] == [1, 16]
    assert c.train.learning_rate == 1e-3 and c.train.epochs == 2 and c.train.max_length == 512
    # defaults fill what the recipe leaves out
    assert c.convert.temperature == 0.4 and c.iterations == 1 and c.train.lr_schedule == "cosine"


def test_overrides_nested_list_items_and_yaml_types(recipe):
    c = load_recipe(
        RiseConfig,
        recipe,
        [
            "train.learning_rate=1e-4",
            "collect.turns.1.n=8",
            "sft.train.batch_size=4",
            "prompt.worked_example=true",
            "train.lr_schedule=constant",
            "seed=7",
        ],
    )
    assert isinstance(c.train.learning_rate, float) and c.train.learning_rate == 1e-4
    assert [t.n for t in c.collect.turns] == [1, 8]
    assert c.sft.train.batch_size == 4
    assert c.prompt.worked_example is True
    assert c.train.lr_schedule == "constant"
    assert c.seed == 7
    # untouched siblings keep their values
    assert c.train.epochs == 2 and c.sft.train.learning_rate == 3e-3


def test_overrides_create_missing_sections_and_replace_whole_values(recipe):
    c = load_recipe(RiseConfig, recipe, ["model.lora.r=4", "collect.turns=[{n: 2}]", "sft=null"])
    assert c.model.lora is not None and c.model.lora.r == 4 and c.model.lora.alpha == 32
    assert [t.n for t in c.collect.turns] == [2]
    assert c.sft is None


def test_later_override_wins_and_empty_value_is_empty_string():
    data = {"a": {"b": 1}}
    apply_override(data, "a.b=2")
    apply_override(data, "a.b=3")
    apply_override(data, "a.c=")
    assert data == {"a": {"b": 3, "c": ""}}
    apply_override(data, "a.b=x=y")  # only the first '=' splits
    assert data["a"]["b"] == "x=y"


# ---- errors ---------------------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_closest(recipe):
    msg = error_of(recipe, ["trian.epochs=1"])
    assert msg == f"{recipe}: unknown key 'trian'; did you mean 'train'?"


def test_unknown_top_level_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, TINY + "zzz: 1\n")
    msg = error_of(path, [])
    assert msg.startswith(f"{path}: unknown key 'zzz'; valid keys here: method, seed, run_dir, model")


def test_unknown_nested_key_names_path_and_points_to_learning_rate(recipe):
    msg = error_of(recipe, ["train.lr=1e-4"])
    assert msg.startswith(f"{recipe}: unknown key 'train.lr'")
    assert "learning_rate" in msg
    msg = error_of(recipe, ["train.learningrate=1e-4"])
    assert msg == f"{recipe}: unknown key 'train.learningrate'; did you mean 'train.learning_rate'?"


def test_unknown_key_inside_list_item_and_optional_section(recipe):
    msg = error_of(recipe, ["collect.turns.1.nn=3"])
    assert msg == f"{recipe}: unknown key 'collect.turns.1.nn'; did you mean 'collect.turns.1.n'?"
    msg = error_of(recipe, ["model.lora.rank=4"])
    assert msg.startswith(f"{recipe}: unknown key 'model.lora.rank'")
    msg = error_of(recipe, ["sft.train.learnig_rate=1"])
    assert msg.endswith("did you mean 'sft.train.learning_rate'?")


def test_wrong_type_names_key_and_shows_value(recipe):
    msg = error_of(recipe, ["train.epochs=abc"])
    assert msg.startswith(f"{recipe}: key 'train.epochs': ")
    assert "integer" in msg and msg.endswith("(got 'abc')")


def test_out_of_range_value(recipe):
    msg = error_of(recipe, ["train.learning_rate=-1"])
    assert msg.startswith(f"{recipe}: key 'train.learning_rate': ")
    assert "greater than 0" in msg and msg.endswith("(got -1)")


def test_invalid_choice_in_list_item(recipe):
    msg = error_of(recipe, ["collect.turns.0.n=0"])
    assert msg.startswith(f"{recipe}: key 'collect.turns.0.n': ") and msg.endswith("(got 0)")


def test_missing_required_key(tmp_path):
    text = "\n".join(line for line in TINY.splitlines() if not line.startswith("train_problems"))
    path = write(tmp_path, text)
    assert error_of(path, []) == f"{path}: missing key 'train_problems'"


def test_missing_nested_required_key(recipe):
    msg = error_of(recipe, ["train_problems={synthetic: {seed: 1}}"])
    assert msg == f"{recipe}: missing key 'train_problems.synthetic.n'"


def test_model_validator_error_names_section(recipe):
    msg = error_of(recipe, ["train_problems.path=problems.jsonl"])
    assert msg.startswith(f"{recipe}: key 'train_problems': ")
    assert "exactly one of 'path', 'dataset', 'synthetic' or 'reasoning_gym'" in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "method: rise\nseed: 0\nmodel: {path: tiny}\ntrain: x: y\nseed: 1\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path)
    assert str(e.value).startswith(f"{path}:4: invalid YAML")


def test_malformed_yaml_tab_indent(tmp_path):
    path = write(tmp_path, "method: rise\nmodel:\n  path: tiny\n\tbad: 1\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:4: invalid YAML"):
        load_recipe(RiseConfig, path)


def test_recipe_must_be_a_mapping_and_exist(tmp_path):
    with pytest.raises(ConfigError, match="must be a YAML mapping of keys to values, got a list$"):
        read_yaml(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="must be a YAML mapping of keys to values, got a string$"):
        read_yaml(write(tmp_path, "method rise\n"))
    with pytest.raises(ConfigError, match=r"empty\.yaml: the recipe is empty; write a YAML mapping"):
        read_yaml(write(tmp_path, "", name="empty.yaml"))
    with pytest.raises(ConfigError, match="recipe not found"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "recipes").mkdir()
    with pytest.raises(ConfigError, match=r"recipes: is a folder, not a file$"):
        read_yaml(tmp_path / "recipes")


def test_bad_byte_in_recipe_names_line_and_offset(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b'method: rise\nseed: 0\nmodel: {path: "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(ConfigError) as e:
        load_recipe(RiseConfig, path)
    assert str(e.value) == f"{path}:3: not valid UTF-8 (byte 0xe9 at offset 39)"


def test_characters_yaml_does_not_allow_are_one_line(tmp_path):
    path = write(tmp_path, "method: rise\nseed: 0\x00\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path)
    assert str(e.value) == f"{path}:2: invalid YAML (character #x0000 is not allowed)"


def test_yaml_value_its_tag_cannot_build(tmp_path):
    path = write(tmp_path, "method: rise\nseed: 2024-13-45\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path)
    assert str(e.value) == f"{path}: invalid YAML (month must be in 1..12)"


@pytest.mark.parametrize("bad", ["train.learning_rate", "=5", ""])
def test_bad_set_syntax(recipe, bad):
    msg = error_of(recipe, [bad])
    assert msg == f"--set '{bad}': expected key=value, e.g. train.learning_rate=1e-5"


def test_out_of_range_list_index(recipe):
    assert error_of(recipe, ["collect.turns.5.n=1"]) == (
        "--set collect.turns.5: '5' is not an index of a list of 2"
    )
    assert error_of(recipe, ["collect.turns.2=1"]) == (
        "--set collect.turns.2: '2' is not an index of a list of 2"
    )
    assert error_of(recipe, ["collect.turns.first.n=1"]) == (
        "--set collect.turns.first: 'first' is not an index of a list of 2"
    )
    assert error_of(recipe, ["collect.turns.-1.n=1"]).startswith("--set collect.turns.-1: '-1' is not")


def test_set_value_that_is_invalid_yaml(recipe):
    msg = error_of(recipe, ["collect.turns=[{n: 2}"])
    assert "collect.turns" in msg


@pytest.mark.parametrize(
    "bad", ["train_problems.synthetic.levels.0.x=1", "train_problems.synthetic.levels.1.x.y=1"]
)
def test_set_below_a_scalar_list_item(recipe, bad):
    msg = error_of(recipe, [bad])
    assert "train_problems.synthetic.levels" in msg


def test_union_field_error_names_the_real_key(recipe):
    msg = error_of(recipe, ["model.lora.target_modules=5"])
    assert msg.startswith(f"{recipe}: key 'model.lora.target_modules': ")
    assert msg.endswith("(got 5)")


# ---- CLI ------------------------------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_cli_bad_override_exits_2_with_one_line(recipe, capsys, tmp_path):
    code = cli.main(["rise", "train", str(recipe), "--set", "train.lr=1e-4", "--set", f"run_dir={tmp_path}"])
    assert code == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: {recipe}: unknown key 'train.lr'")
    assert not (tmp_path / "tiny").exists()  # nothing was started


def test_cli_bad_recipe_file(tmp_path, capsys):
    path = write(tmp_path, "method: rise\ntrain: x: y\n")
    assert cli.main(["run", str(path)]) == 2
    assert one_line_error(capsys).startswith(f"error: {path}:2: invalid YAML")


def test_cli_recipe_with_a_bad_byte(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_bytes(TINY.encode("utf-8").replace(b"Solve", b"\xffSolve"))
    offset = TINY.encode("utf-8").index(b"Solve")
    line = TINY[:offset].count("\n") + 1
    assert cli.main(["run", str(path)]) == 2
    assert one_line_error(capsys) == f"error: {path}:{line}: not valid UTF-8 (byte 0xff at offset {offset})"
    assert cli.main(["run", str(tmp_path)]) == 2
    assert one_line_error(capsys) == f"error: {tmp_path}: is a folder, not a file"


def test_cli_unknown_method_and_missing_recipe(tmp_path, capsys):
    path = write(tmp_path, "method: ppo\n")
    assert cli.main(["run", str(path)]) == 2
    assert (
        one_line_error(capsys)
        == f"error: {path}: key 'method' must be one of rise, dpo, active-dpo, c3po, reflect-rl, adarefiner "
        "(got 'ppo')"
    )
    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert one_line_error(capsys) == f"error: {tmp_path / 'nope.yaml'}: recipe not found"


def test_cli_wrong_type(recipe, capsys):
    assert cli.main(["rise", "evaluate", str(recipe), "--set", "train.epochs=abc"]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: {recipe}: key 'train.epochs'") and line.endswith("(got 'abc')")


def test_cli_set_value_that_is_invalid_yaml(recipe, capsys):
    assert cli.main(["run", str(recipe), "--set", "collect.turns=[1,"]) == 2
    one_line_error(capsys)


@pytest.mark.parametrize(
    "recipe",
    sorted(p for p in RECIPES_DIR.glob("*/*.yaml") if p.parent.name != "accelerate"),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_shipped_recipe_validates(recipe, monkeypatch):
    """A named GGUF model resolves to its source (conversion itself: tests/test_gguf_models.py), so the
    fast suite never dequantizes SmolLM2."""
    converted = []
    monkeypatch.setattr(loading, "converted_folder", lambda *args, **kw: converted.append(args) or args[0])
    config, _ = cli.load_method(str(recipe), [])
    assert config.method == recipe.parent.name
    named = read_yaml(recipe)["model"]["path"]
    assert converted == ([named_gguf(named)] if named in NAMED_GGUF else [])


@pytest.mark.parametrize("name", sorted(p.name for p in (RECIPES_DIR / "accelerate").glob("*.yaml")))
def test_the_shipped_accelerate_configs_load(name):
    """accelerate's own loader reads each shipped config (DDP, FSDP, DeepSpeed ZeRO-2/3, multi-node)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES_DIR / "accelerate" / name))
    assert config.num_processes >= 8 and config.mixed_precision == "bf16"
    if "deepspeed" in name:
        assert config.deepspeed_config["zero_stage"] == int(name.split("zero")[1][0])
