"""Policy loading (local path or hub id, optional LoRA) and tiny models built locally for offline runs."""
