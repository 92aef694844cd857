"""Every method feedlearn runs, by the name a recipe's `method` key gives: what the CLI, `serve`, `report`
and `recipe new` read, so none of them branches on a method's name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feedlearn.errors import ConfigError
from feedlearn.methods.adarefiner import figure as adarefiner_figure
from feedlearn.methods.adarefiner.config import AdaRefinerConfig
from feedlearn.methods.adarefiner.stages import STAGES as ADAREFINER_STAGES
from feedlearn.methods.adarefiner.stages import AdaRefiner
from feedlearn.methods.c3po import figure as c3po_figure
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.stages import C3PO
from feedlearn.methods.c3po.stages import STAGES as C3PO_STAGES
from feedlearn.methods.common import Method, RecipeConfig
from feedlearn.methods.dpo import figure as dpo_figure
from feedlearn.methods.dpo.config import ActiveDPOConfig, DPOConfig
from feedlearn.methods.dpo.stages import STAGES as DPO_STAGES
from feedlearn.methods.dpo.stages import PreferenceLearning
from feedlearn.methods.layout import Layout
from feedlearn.methods.reflect_rl import figure as reflect_rl_figure
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.methods.reflect_rl.stages import STAGES as REFLECT_RL_STAGES
from feedlearn.methods.reflect_rl.stages import ReflectRL
from feedlearn.methods.rise import figure as rise_figure
from feedlearn.methods.rise.config import RiseConfig
from feedlearn.methods.rise.stages import STAGES as RISE_STAGES
from feedlearn.methods.rise.stages import Rise

Figure = Callable[[dict[str, dict[str, float]], Path, Path], Path]
"""A run's report figure: (its evaluation columns, the run folder, the report folder) -> the PNG written."""


@dataclass(frozen=True)
class MethodInfo:
    """One method: its recipe class, its stages class, each stage with a line on what it does, the
    stages that take `--iteration` (the method's numbered rounds), and its report figure."""

    config: type[RecipeConfig]
    method: type[Method]
    stages: dict[str, str]
    figure: Figure
    iterated: tuple[str, ...] = field(default=())
    iteration_help: str = ""

    def layout(self, run: Path, name: str) -> Layout:
        """The layout of the run folder `run` of this method (called `name`)."""
        return self.method.layout_class(run, name)


METHODS: dict[str, MethodInfo] = {
    "rise": MethodInfo(
        RiseConfig,
        Rise,
        RISE_STAGES,
        rise_figure.figure,
        ("collect", "convert", "train", "evaluate"),
        "which iteration (evaluate: 0 = the base)",
    ),
    "dpo": MethodInfo(DPOConfig, PreferenceLearning, DPO_STAGES, dpo_figure.figure),
    "active-dpo": MethodInfo(ActiveDPOConfig, PreferenceLearning, DPO_STAGES, dpo_figure.figure),
    "c3po": MethodInfo(C3POConfig, C3PO, C3PO_STAGES, c3po_figure.figure),
    "reflect-rl": MethodInfo(ReflectRLConfig, ReflectRL, REFLECT_RL_STAGES, reflect_rl_figure.figure),
    "adarefiner": MethodInfo(
        AdaRefinerConfig,
        AdaRefiner,
        ADAREFINER_STAGES,
        adarefiner_figure.figure,
        ("train", "sft", "evaluate"),
        "which iteration of play and refinement (1 .. the recipe's iterations)",
    ),
}


def method_info(name: object, where: str) -> MethodInfo:
    """The method called `name` (a recipe's `method` key, read from `where`), or a clear error."""
    if name not in METHODS:
        raise ConfigError(f"{where}: key 'method' must be one of {', '.join(METHODS)} (got {name!r})")
    return METHODS[name]
