"""Load a policy from a local folder or hub id, with an optional LoRA adapter (peft)."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedlearn.errors import FeedlearnError
from feedlearn.models.gguf import NAMED_GGUF, converted_folder, gguf_source, named_gguf
from feedlearn.processes import process_state
from feedlearn.seeds import derive_seed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

BUNDLED = Path(str(files("feedlearn") / "models" / "bundled"))
"""Models shipped inside the package, one folder each, loaded by folder name (`model.path: rise-tiny-base`);
each folder's `provenance.json` says how it was built."""


def resolve_model_path(path: str) -> str:
    """A bundled model's name -> its folder in the package; any other path (a local folder first) as is."""
    if Path(path).is_dir() or "/" in path or path.startswith("."):
        return path
    return str(BUNDLED / path) if (BUNDLED / path / "config.json").is_file() else path


class LoraSettings(BaseModel):
    """A LoRA adapter to train instead of the full weights."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, gt=0, description="Rank of the adapter matrices.")
    alpha: int = Field(default=32, gt=0, description="Scaling numerator (the update is scaled by alpha/r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear", description="Module names to adapt, or every linear layer."
    )


class ModelSettings(BaseModel):
    """Which model to load and how."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="A local folder (weights or a saved LoRA adapter), a bundled model's name (a folder of "
        "feedlearn/models/bundled, e.g. rise-tiny-base), a named GGUF model (smollm2-135m-instruct) or a hub "
        "id."
    )
    gguf_file: str | None = Field(
        default=None,
        description="A GGUF file in `path` (a local folder or a hub repo), dequantized once into a cached "
        "safetensors folder that every later load reads (needs the gguf package).",
    )
    lora: LoraSettings | None = Field(default=None, description="Train a new LoRA adapter; None = full.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype; auto = bfloat16 on a GPU that supports it, else float32."
    )
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template for tokenizers that have none of their own."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        default="none",
        description="Base weights in 4-bit NF4 or 8-bit (bitsandbytes, a GPU only), for QLoRA with `lora`.",
    )

    @model_validator(mode="after")
    def _resolve(self) -> ModelSettings:
        """The folder `path` names: a GGUF model's converted folder (converted the first time it is read),
        a bundled model's folder, or `path` as given."""
        if self.gguf_file is not None:
            self.path = str(converted_folder(self.path, self.gguf_file))
        elif self.path in NAMED_GGUF and not Path(self.path).is_dir():
            self.path = str(converted_folder(*named_gguf(self.path), source=self.path))
        else:
            self.path = resolve_model_path(self.path)
        return self

    @field_serializer("path")
    def _named(self, path: str) -> str:
        """A bundled or converted model is written as the recipe named it, so saved configs and recipes
        work on any install."""
        if Path(path).parent == BUNDLED:
            return Path(path).name
        source = gguf_source(path)
        return source["path"] if source else path


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype for a settings name (auto picks bfloat16 on capable GPUs, float32 otherwise)."""
    if name == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return DTYPES[name]


def load_tokenizer(path: str, chat_template: str | None = None):
    """The tokenizer of a model, left-padded for generation, with a pad token and a chat template."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise FeedlearnError(f"model '{path}' has no chat template: set model.chat_template in the recipe")
    return tokenizer


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""What a hub id looks like: `name` or `namespace/name`."""


def check_model_source(path: str) -> None:
    """Raise a `FeedlearnError` for a model path that names a local folder that is not there (a hub id,
    `name` or `namespace/name`, is left to the hub)."""
    if Path(path).is_dir():
        return
    if Path(path).exists():
        raise FeedlearnError(f"model '{path}' is a file: give the model's folder")
    if not HUB_ID.fullmatch(path) or path.startswith("."):
        raise FeedlearnError(
            f"model folder '{path}' does not exist: check model.path (or the stage that writes it)"
        )


def load_policy(settings: ModelSettings, trainable: bool = False, seed: int = 0):
    """Load (model, tokenizer) onto this process's device (a GPU when there is one). A folder holding a
    LoRA adapter loads its base model plus the adapter.

    With `trainable` and `settings.lora`, a fresh LoRA adapter, initialised from `seed`, is added and only
    it is trained.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    check_model_source(settings.path)
    dtype = resolve_dtype(settings.dtype)
    quantized = settings.quantization != "none"
    extra = _quantized(settings, dtype) if quantized else {}
    adapter_config = Path(settings.path) / "adapter_config.json"
    try:
        if adapter_config.exists():
            base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, **extra)
            model = PeftModel.from_pretrained(base, settings.path, is_trainable=trainable)
        else:
            model = AutoModelForCausalLM.from_pretrained(settings.path, dtype=dtype, **extra)
        tokenizer = load_tokenizer(settings.path, settings.chat_template)
    except OSError as e:
        where = "the folder" if Path(settings.path).exists() else "no local folder of that name; as a hub id"
        raise FeedlearnError(
            f"cannot load model '{settings.path}' ({where}): {str(e).splitlines()[0]} "
            "(give a model folder, or a hub id with network access)"
        ) from None
    if trainable and settings.lora is not None and not isinstance(model, PeftModel):
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        lora = settings.lora
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(seed, "init", "lora"))
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
    if not quantized:  # a quantized model is placed by its device_map
        model.to(process_state().device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _quantized(settings: ModelSettings, dtype: torch.dtype) -> dict:
    """`from_pretrained` arguments for 4-bit NF4 or 8-bit weights on this process's GPU."""
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise FeedlearnError(
            f"model '{settings.path}': quantization {settings.quantization} needs a CUDA GPU and the "
            "bitsandbytes package (pip install bitsandbytes); set model.quantization: none to load it "
            "unquantized"
        )
    from transformers import BitsAndBytesConfig

    if settings.quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return {"quantization_config": config, "device_map": {"": process_state().device}}
