"""Reflect-RL's objective: the policy as a softmax over the offered labels (its prompt, its labels' token
ids), the critic head, and one RL update (REINFORCE on the cost-to-go, or clipped PPO with the critic's
advantages) with CleanRL's diagnostics, and the learner that RL trains and checkpoints."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from feedlearn.data.jsonl import write_json_atomic
from feedlearn.errors import FeedlearnError
from feedlearn.losses import (
    choice_entropy,
    choice_logprobs,
    explained_variance,
    ppo_loss,
    ppo_ratio_stats,
    reinforce_loss,
)
from feedlearn.methods.reflect_rl.rollout import LABELS, Episode, Step
from feedlearn.processes import gathered, process_state, sum_gradients, total
from feedlearn.seeds import derive_seed

if TYPE_CHECKING:
    from feedlearn.methods.reflect_rl.config import RLSettings


def label_ids(tokenizer, n: int) -> torch.Tensor:
    """The token ids of the first `n` labels ("1".."9", then "a".."z"); each must be one token."""
    if n > len(LABELS):
        raise FeedlearnError(f"a state offers {n} choices; the policy can label at most {len(LABELS)}")
    ids = []
    for label in LABELS[:n]:
        tokens = tokenizer.encode(label, add_special_tokens=False)
        if len(tokens) != 1:
            raise FeedlearnError(f"label '{label}' is {len(tokens)} tokens in this tokenizer; it must be one")
        ids.append(tokens[0])
    return torch.tensor(ids)


class ChoiceObjective:
    """The policy as a softmax over the offered labels ("shrink head"): log-probs at the last prompt token;
    as a training `Objective`, SFT on the teacher's labels."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        self.labels = label_ids(tokenizer, 9)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded prompts, their lengths, choice counts and labels."""
        most = max(r["n"] for r in rows)
        if most > len(self.labels):
            self.labels = label_ids(self.tokenizer, most)  # letters after 9; each must be one token
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            attention[i, : len(r["input_ids"])] = 1
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "n": torch.tensor([r["n"] for r in rows]),
            "label": torch.tensor([r["label"] for r in rows]),
        }

    def forward(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """([batch, labels] log-probabilities over each row's offered labels, [batch, hidden] last-layer
        hidden state at the last prompt token, detached)."""
        device = next(model.parameters()).device
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            output_hidden_states=True,
        )
        last = batch["attention_mask"].sum(-1).to(device) - 1
        rows = torch.arange(len(last), device=device)
        logps = choice_logprobs(out.logits[rows, last], self.labels.to(device), batch["n"].to(device))
        return logps, out.hidden_states[-1][rows, last].detach().float()

    def logprobs(self, model, batch) -> torch.Tensor:
        """[batch, labels] log-probabilities over the labels offered in each row."""
        return self.forward(model, batch)[0]

    def loss(self, model, batch) -> torch.Tensor:
        """The SFT loss: cross-entropy of the teacher's label over the offered labels."""
        return -chosen_logprobs(self.logprobs(model, batch), batch).mean()

    def step_metrics(self) -> dict[str, float]:
        """None beyond the trainer's."""
        return {}


class Critic(torch.nn.Module):
    """PPO's value head: a linear map of the policy's last hidden state to the expected cost-to-go."""

    def __init__(self, policy, seed: int):
        super().__init__()
        torch.manual_seed(derive_seed(seed, "init", "critic"))
        self.head = torch.nn.Linear(policy.config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).squeeze(-1)


def chosen_logprobs(logps: torch.Tensor, batch: dict) -> torch.Tensor:
    """Each row's log-probability of its label."""
    return logps.gather(1, batch["label"].to(logps.device)[:, None]).squeeze(1)


def update(
    policy, critic, objective, optimizer, params, steps: list[Step], rl: RLSettings
) -> dict[str, float]:
    """One update on `steps`: a REINFORCE step on the cost-to-go, or `ppo_epochs` clipped PPO steps with
    advantages from the critic; forward passes of `rl.batch_size` steps, gradients accumulated. Under
    several processes each takes every n-th batch and the gradients are summed across processes
    before the step, so every process takes the step one process would. Returns the diagnostics of
    its last pass, with CleanRL's names (`losses/*`), over every process's steps."""
    state = process_state()
    chunks = [steps[i : i + rl.batch_size] for i in range(0, len(steps), rl.batch_size)]
    mine = chunks[state.process_index :: state.num_processes]
    batches = [objective.collate([{**s.row(), "length": len(s.input_ids)} for s in c]) for c in mine]
    device = next(policy.parameters()).device
    returns = [torch.tensor([s.ret for s in c], dtype=torch.float32, device=device) for c in mine]
    if critic is None:
        passes, olds, advantages, values = 1, None, returns, None
    else:
        with torch.no_grad():
            outs = [objective.forward(policy, b) for b in batches]
            olds = [chosen_logprobs(logps, b) for (logps, _), b in zip(outs, batches, strict=True)]
            values = [critic(h) for _, h in outs]
            advantages = [g - v for g, v in zip(returns, values, strict=True)]
        passes = rl.ppo_epochs
    policy.train()
    sums = torch.zeros(5)  # the last pass's loss, entropy, approx_kl, clipfrac, value loss, x steps
    for _ in range(passes):
        optimizer.zero_grad(set_to_none=True)
        sums.zero_()
        for k, batch in enumerate(batches):
            logps, hidden = objective.forward(policy, batch)
            chosen = chosen_logprobs(logps, batch)
            if critic is None:
                loss, extra = reinforce_loss(chosen, returns[k]), torch.zeros(3)
            else:
                value_loss = torch.mean((critic(hidden) - returns[k]) ** 2)
                loss = ppo_loss(chosen, olds[k], advantages[k], rl.ppo_clip) + rl.value_coef * value_loss
                ratios = ppo_ratio_stats(chosen.detach(), olds[k], rl.ppo_clip).cpu()
                extra = torch.cat([ratios, value_loss.detach().cpu()[None]])
            (loss * len(mine[k]) / len(steps)).backward()
            entropy = choice_entropy(logps.detach()).mean().cpu()
            sums += len(mine[k]) * torch.cat([loss.detach().cpu()[None], entropy[None], extra])
        sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, rl.max_grad_norm)
        optimizer.step()
    policy.eval()
    loss, entropy, approx_kl, clipfrac, value_loss = (total(float(x)) / len(steps) for x in sums)
    metrics = {"losses/loss": loss, "losses/entropy": entropy}
    if critic is not None:
        predicted = torch.tensor(gathered([x for v in values for x in v.tolist()]))
        target = torch.tensor(gathered([x for g in returns for x in g.tolist()]))
        metrics |= {
            "losses/approx_kl": approx_kl,
            "losses/clipfrac": clipfrac,
            "losses/value_loss": value_loss,
            "losses/explained_variance": explained_variance(predicted, target),
        }
    return metrics


@dataclass
class Learner:
    """The policy being trained by RL, with its tokenizer, critic (PPO), optimizer, and the replay buffer
    of successful episodes: what an RL checkpoint saves."""

    policy: torch.nn.Module
    tokenizer: object
    critic: Critic | None
    settings: RLSettings
    replay: list[list[Step]] = field(default_factory=list)

    def __post_init__(self):
        if self.critic:
            self.critic.to(next(self.policy.parameters()).device)
        self.objective = ChoiceObjective(self.tokenizer)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.params += list(self.critic.parameters()) if self.critic else []
        rl = self.settings
        self.optimizer = torch.optim.Adam(self.params, lr=rl.learning_rate, weight_decay=rl.weight_decay)

    def learn(self, episodes: list[Episode], rng: random.Random) -> dict[str, float]:
        """One update on `episodes`' steps, then, as in the reference, one on `replay_batch` successful
        episodes drawn by `rng` with replacement from the buffer (these included); returns the first
        update's diagnostics."""
        steps = [s for ep in episodes for s in ep.steps]
        rl = self.settings
        diagnostics = update(self.policy, self.critic, self.objective, self.optimizer, self.params, steps, rl)
        for ep in episodes:
            if ep.success and rl.replay_size:
                self.replay = (self.replay + [ep.steps])[-rl.replay_size :]
        if self.replay:
            drawn = rng.choices(self.replay, k=rl.replay_batch or rl.episodes_per_iteration)
            replayed = [s for ep in drawn for s in ep]
            update(self.policy, self.critic, self.objective, self.optimizer, self.params, replayed, rl)
        return diagnostics

    def save(self, folder: Path, optimizer: bool = True) -> None:
        """The policy, tokenizer and critic in `folder`; with `optimizer`, also the optimizer and replay
        buffer (what resuming needs)."""
        self.policy.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.critic:
            torch.save(self.critic.state_dict(), folder / "critic.pt")
        if optimizer:
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            write_json_atomic(folder / "replay.json", [[step.row() for step in ep] for ep in self.replay])

    def load(self, folder: Path) -> None:
        """The optimizer, critic and replay buffer saved by `save` (the policy loads from `folder` itself)."""
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        saved = json.loads((folder / "replay.json").read_text())
        self.replay = [[Step.from_row(row) for row in ep] for ep in saved]
        if self.critic:
            self.critic.load_state_dict(torch.load(folder / "critic.pt", weights_only=True))
