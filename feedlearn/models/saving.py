"""Write a model folder that every process of a run writes whole (for cache entries built in each process)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file


def save_model(model, tokenizer, folder: Path) -> None:
    """`model`'s weights, config and generation config and `tokenizer` into `folder`, loadable by path."""
    # Weights through safetensors, not `save_pretrained`: under torch.distributed transformers writes
    # weights on global rank 0 only, and another process's build (or another machine's) would be empty.
    # Tied output weights are saved once, under the embeddings' name, as save_pretrained does.
    tied = getattr(model.config, "tie_word_embeddings", False)
    weights = {
        k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it (vLLM reads it)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
