"""Experiment trackers (`report_to: [tensorboard, wandb]` in a recipe), through accelerate's tracker
integrations, beside the run's `metrics.jsonl`, which stays the record.

Every metrics row a stage logs goes to each tracker as `<stage>/<metric>` at its step; a stage's summary
row, which has no step, goes to TensorBoard at step 0 and to wandb's run summary. wandb drops a row logged
at a step below one it has seen, so there each stage's steps go on the stage's own axis, `<stage>/step`
(a later stage starts again at step 1). The resolved config and the run id are the tracker's run config;
configs hold the names of key variables, never keys. TensorBoard writes under `RUN/trackers/tensorboard`.
wandb runs offline (`RUN/trackers/wandb`) unless WANDB_MODE or WANDB_API_KEY says otherwise, and a wandb
that cannot start is logged and left out, so a tracker never stops a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Tracker = Literal["tensorboard", "wandb"]


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `a.b.c` keys with scalar values (lists and other values as text), the form
    trackers take as a run config."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{name}."))
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class Trackers:
    """The trackers a recipe asked for, started for one run."""

    def __init__(self, names: list[Tracker], folder: Path, run_id: str, config: dict[str, Any]):
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        self.trackers = []
        self.axes: set[str] = set()
        """The stages whose step axis wandb has been given."""
        params = {"run_id": run_id, **hyperparameters(config)}
        for name in dict.fromkeys(names):
            try:
                if name == "tensorboard":
                    tracker = TensorBoardTracker(run_id, folder / "tensorboard")
                else:
                    offline = "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY")
                    (folder / "wandb").mkdir(parents=True, exist_ok=True)
                    tracker = WandBTracker(
                        run_id,
                        dir=str(folder / "wandb"),
                        name=run_id,
                        mode="offline" if offline else None,
                        settings=_wandb_settings(),
                    )
                tracker.start()
                tracker.store_init_configuration(params)
            except Exception as e:  # a tracker that cannot start never stops the run
                log.warning(
                    "tracker %s not started (%s: %s); metrics.jsonl has every metric",
                    name,
                    type(e).__name__,
                    e,
                )
                continue
            self.trackers.append(tracker)

    def log(self, stage: str, metrics: dict[str, Any], step: int | None) -> None:
        """One metrics row, its numbers as `<stage>/<metric>`."""
        values = {
            f"{stage}/{k}": v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            if tracker.name != "wandb":
                tracker.log(values, step=0 if step is None else step)
            elif step is None:
                tracker.run.summary.update(values)
            else:
                axis = f"{stage}/step"
                if axis not in self.axes:  # wandb's documented form: the stage's metrics against its axis
                    tracker.run.define_metric(axis)
                    tracker.run.define_metric(f"{stage}/*", step_metric=axis)
                    self.axes.add(axis)
                tracker.run.log({**values, axis: step})

    def finish(self) -> None:
        """Flush and close every tracker."""
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _wandb_settings():
    import wandb

    return wandb.Settings(init_timeout=60, silent=True)
