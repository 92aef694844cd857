"""A small synthetic code repository for offline AutoExplore runs (tests, tiny recipes, the benchmark).

Files sit at depths 0-2 and follow a naming convention, as real projects do: everything a file defines
starts with the file's name (`encoder_build` and `EncoderCache` in `app/models/encoder.py`, the key
`train_epochs` in `configs/train.yaml`), so a held-out question names its file but not its folder.
"""

from __future__ import annotations

import random
from pathlib import Path

LAYOUT = {
    "": ["main.py", "setup.toml"],
    "configs": ["train.yaml", "serve.yaml"],
    "scripts": ["export.py", "benchmark.py"],
    "app/models": ["encoder.py", "decoder.py", "heads.py"],
    "app/data": ["loader.py", "tokens.py"],
    "app/web": ["routes.py", "auth.py"],
}
"""Folder -> its files."""
VERBS = ["build", "reset", "load", "save", "check", "merge", "split", "score", "render", "sync"]
NOUNS = ["Cache", "Config", "State", "Plan", "Index", "Queue"]
KEYS = ["epochs", "workers", "port", "timeout", "batch", "retries", "device", "seed"]


def write_mini_repo(root: str | Path, seed: int = 0) -> Path:
    """Write the repository under `root` (created; existing files of the same names are overwritten)."""
    rng = random.Random(seed)
    root = Path(root)
    readme = ["# mini", "", "A small project: models, data, web routes, configs and scripts."]
    for folder, files in LAYOUT.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            stem, suffix = name.rsplit(".", 1)
            if suffix == "py":
                lines = [f'"""The {stem} module."""', ""]
                for verb in rng.sample(VERBS, 3):
                    lines += [f"def {stem}_{verb}(x):", f"    return x  # {verb}", ""]
                lines += [f"class {stem.capitalize()}{rng.choice(NOUNS)}:", "    pass", ""]
            elif suffix == "toml":
                lines = ["[project]"] + [f"{stem}_{k} = {rng.randint(1, 99)}" for k in rng.sample(KEYS, 3)]
            else:
                lines = [f"{stem}_{k}: {rng.randint(1, 99)}" for k in rng.sample(KEYS, 3)]
            (root / folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README.md").write_text("\n".join(readme) + "\n", encoding="utf-8")
    return root
