"""AdaRefiner's RL agent: Stable-Baselines3 PPO on a dict observation (the environment's observation and
the instruction's embedding), with a features extractor that adds a projection of the instruction to the
state's features, and linear policy and value heads (spec: shared/methods/adarefiner.md).

Networks: `reference` (the paper's: 4 convolutions of 64 channels, 5x5, stride 1, then Linear 512; 134M
parameters in that layer alone: a GPU network), `cnn` (a small strided CNN for images on a CPU), `mlp`
(for the symbolic observation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import gymnasium
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

Network = Literal["reference", "cnn", "mlp"]


def _state_network(network: Network, space: gymnasium.spaces.Box, features: int) -> nn.Module:
    """The network from the environment's observation to `features` features."""
    if network == "mlp":
        if len(space.shape) != 1:
            raise ValueError("network 'mlp' needs the symbolic observation (env.observation: symbolic)")
        return nn.Sequential(nn.Linear(space.shape[0], 256), nn.ReLU(), nn.Linear(256, features), nn.ReLU())
    if len(space.shape) != 3:
        raise ValueError(f"network '{network}' needs the image observation (env.observation: image)")
    channels, height, width = space.shape
    if network == "reference":
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(channels if i == 0 else 64, 64, 5, stride=1, padding=2), nn.ReLU()]
        flat = 64 * height * width
    else:
        layers = [
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
        ]
        with torch.no_grad():
            flat = nn.Sequential(*layers)(torch.zeros(1, channels, height, width)).numel()
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, features), nn.ReLU())


class InstructedExtractor(BaseFeaturesExtractor):
    """features = f(state) + Linear(instruction embedding): the instruction is an input, never a reward."""

    def __init__(
        self, observation_space: gymnasium.spaces.Dict, network: Network = "mlp", features: int = 512
    ):
        super().__init__(observation_space, features)
        self.state = _state_network(network, observation_space["state"], features)
        self.instruction = nn.Linear(observation_space["instruction"].shape[0], features)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.state(observations["state"]) + self.instruction(observations["instruction"])


class ReinitializedEncoder:
    """The reference's instruction encoder (`agent.instruction: reinitialized`): its policy holds its own
    copy of the sentence embedder inside the features extractor, so Stable-Baselines3's orthogonal
    initialization of that extractor (gain sqrt 2, biases 0) overwrites the embedder's linear layers too;
    the agent reads the raw (unnormalized) output of that copy, never trained (it is run without
    gradients). Here: a copy of `model` initialized that way from `seed`."""

    def __init__(self, model: str, seed: int):
        from feedlearn.feedback.comprehension import SentenceTransformerEmbedder

        self.model = SentenceTransformerEmbedder(model).model
        self.dim = SentenceTransformerEmbedder.dimension(self.model)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for module in self.model.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), convert_to_numpy=True).astype(np.float32)


def build_ppo(env, network: Network, features: int, ppo: dict, device: str = "auto") -> PPO:
    """A new PPO agent on `env` with the given network and PPO hyperparameters (SB3's names); its logger
    keeps values in memory (the stage logs them under CleanRL's names)."""
    agent = PPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={
            "features_extractor_class": InstructedExtractor,
            "features_extractor_kwargs": {"network": network, "features": features},
            "net_arch": [],
            "share_features_extractor": True,
        },
        verbose=0,
        device=device,
        **ppo,
    )
    quiet(agent)
    return agent


def load_ppo(path, env=None, device: str = "auto", reset: bool = True) -> PPO:
    """A saved agent with its optimizer, attached to `env`: reset on the first `learn` (new worlds), or
    with `reset` False continuing from the saved last observation (a resumed stage)."""
    agent = PPO.load(path, env=env, device=device, force_reset=reset)
    quiet(agent)
    return agent


def quiet(agent: PPO) -> None:
    """Give the agent a logger with no outputs: its values are read from `agent.logger.name_to_value`."""
    agent.set_logger(Logger(folder=None, output_formats=[]))


SB3_NAMES = {
    "train/policy_gradient_loss": "losses/policy_loss",
    "train/value_loss": "losses/value_loss",
    "train/entropy_loss": "losses/entropy",
    "train/approx_kl": "losses/approx_kl",
    "train/clip_fraction": "losses/clipfrac",
    "train/explained_variance": "losses/explained_variance",
}
"""SB3's logged values under the names CleanRL users know."""


def ppo_metrics(agent: PPO) -> dict[str, float]:
    """The last update's losses, renamed (see `SB3_NAMES`), then cleared."""
    values = agent.logger.name_to_value
    out = {new: float(values[old]) for old, new in SB3_NAMES.items() if old in values}
    values.clear()
    return out
