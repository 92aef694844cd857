"""The run store: `runs/<run_id>/` holds the resolved config, one folder per stage, metrics and reports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from feedlearn.data.jsonl import write_text_atomic
from feedlearn.errors import ConfigError


class RunStore:
    """One run's folder. Stages write into `stage(name)`; metrics go to `metrics.jsonl`."""

    def __init__(self, root: str | Path, run_id: str):
        self.run_id = run_id
        self.path = Path(root) / run_id
        self.path.mkdir(parents=True, exist_ok=True)

    def save_config(self, config: dict[str, Any]) -> None:
        """Write the resolved config as `config.yaml` (secrets never live in configs, only env var names)."""
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def stage(self, name: str) -> Path:
        """The folder of one stage, created on first use."""
        folder = self.path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def log_metrics(self, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one metrics row (stage, step, wall time, values) to `metrics.jsonl`."""
        row = {"stage": stage, "step": step, "time": round(time.time(), 3), **metrics}
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def open_run(run_dir: str | Path, run_id: str, config: dict[str, Any]) -> RunStore:
    """The run folder for a resolved config; an existing run made with a different config is refused,
    so resuming never mixes the outputs of two configs."""
    store = RunStore(run_dir, run_id)
    saved = store.path / "config.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text(encoding="utf-8")) != config:
        raise ConfigError(
            f"run '{store.path}' was made with a different config: pass --run-id NEW to start another run, "
            "or delete the folder"
        )
    store.save_config(config)
    return store
