"""Models shipped inside the package: found by name wherever a model path is read, loadable offline, and the
bundled RISE base is the one its provenance names."""

from __future__ import annotations

import hashlib
import json

from feedlearn.config import load_recipe, read_yaml
from feedlearn.demo import DEMO_RECIPE
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.models.loading import BUNDLED, ModelSettings, load_policy, resolve_model_path
from feedlearn.recipe_docs import annotated_yaml

BASE = BUNDLED / "rise-tiny-base"
FROM_SCRATCH = DEMO_RECIPE.parent / "tiny-from-scratch.yaml"


def test_a_bundled_name_resolves_to_its_package_folder_and_other_paths_stay(tmp_path, monkeypatch):
    settings = ModelSettings(path="rise-tiny-base")
    assert settings.path == str(BASE)
    assert (
        settings.model_dump()["path"] == "rise-tiny-base"
    )  # saved configs name it, not this install's folder
    config = load_recipe(RiseConfig, str(DEMO_RECIPE))
    assert config.model.path == str(BASE)
    assert 'path: "rise-tiny-base"' in annotated_yaml(config, mark_changes=False)  # `recipe show`, `new`
    for other in ("tiny", "HuggingFaceTB/SmolLM2-135M-Instruct", "./rise-tiny-base", "no-such-model"):
        assert resolve_model_path(other) == other
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rise-tiny-base").mkdir()  # a local folder of that name wins
    assert resolve_model_path("rise-tiny-base") == "rise-tiny-base"


def test_the_bundled_rise_base_loads_as_the_from_scratch_recipes_warm_start():
    model, tokenizer = load_policy(ModelSettings(path="rise-tiny-base"))
    shape = read_yaml(FROM_SCRATCH)["tiny"]
    config = model.config
    assert (config.hidden_size, config.intermediate_size) == (
        shape["hidden_size"],
        shape["intermediate_size"],
    )
    assert config.num_hidden_layers == shape["num_layers"] and config.vocab_size <= shape["vocab_size"]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False)
    provenance = json.loads((BASE / "provenance.json").read_text())
    assert provenance["recipe"] == "recipes/rise/tiny-from-scratch.yaml" and provenance["stage"] == "sft"
    weights = (BASE / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == provenance["model.safetensors sha256"]


def test_the_demo_recipe_runs_rise_as_the_from_scratch_recipe_does():
    """The two recipes differ only in where the base comes from (bundled, or built and warm-started)."""
    demo, scratch = read_yaml(DEMO_RECIPE), read_yaml(FROM_SCRATCH)
    assert demo.pop("model") == {"path": "rise-tiny-base"} and scratch.pop("model") == {"path": "tiny"}
    assert "sft" not in demo and "tiny" not in demo
    scratch.pop("sft"), scratch.pop("tiny")
    assert demo == scratch
