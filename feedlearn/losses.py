"""Losses as pure tensor functions, testable without a model.

Conventions: `logits` is [batch, seq, vocab] from a causal LM over `input_ids`; `labels` is [batch, seq],
aligned with `input_ids`, holding -100 where a token is not trained on (prompt, padding). Position t's
logits predict token t+1, so both are shifted by one inside.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next label token [batch, seq-1], and the mask of trained positions."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.masked_fill(~mask, 0).reshape(-1),
        reduction="none",
    ).view_as(labels)
    return -nll * mask, mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each sequence's completion tokens [batch]."""
    logps, _ = token_logprobs(logits, labels)
    return logps.sum(-1)


def segment_logprobs(logits: torch.Tensor, labels: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each sequence's completion tokens [n] for rows that may hold several
    sequences: `sequence` [batch, seq] numbers the sequence each token belongs to (0..n-1; -1 filler)."""
    logps, mask = token_logprobs(logits, labels)
    owner = sequence[:, 1:][mask]
    return logps.new_zeros(int(sequence.max()) + 1).index_add(0, owner, logps[mask])


def token_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over each sequence's completion tokens [batch]."""
    logps, mask = token_logprobs(logits, labels)
    return -logps.sum(-1) / mask.sum(-1).clamp(min=1)


def weighted_sft_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reward-weighted regression: batch mean of weight x token-mean NLL of each example's completion."""
    return (weights * token_mean_nll(logits, labels)).mean()


DPOLoss = Literal["sigmoid", "ipo", "hinge"]


def dpo_loss(
    policy_a: torch.Tensor,
    policy_b: torch.Tensor,
    ref_a: torch.Tensor,
    ref_b: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    kind: DPOLoss = "sigmoid",
) -> torch.Tensor:
    """Per-pair preference loss [batch] from summed sequence log-probs of responses a and b.

    `labels` is 1 where a is preferred and -1 where b is. With h = label x [(log pi(a) - log ref(a)) -
    (log pi(b) - log ref(b))]: sigmoid (DPO) -log sigmoid(beta h); hinge (SLiC) max(0, 1 - beta h);
    ipo (h - 1 / (2 beta))^2, on summed log-probs as in the IPO paper (TRL averages them per token).
    """
    h = labels * ((policy_a - ref_a) - (policy_b - ref_b))
    if kind == "sigmoid":
        return -F.logsigmoid(beta * h)
    if kind == "hinge":
        return torch.relu(1 - beta * h)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss '{kind}'")


def implicit_reward_margin(
    policy_a: torch.Tensor, policy_b: torch.Tensor, ref_a: torch.Tensor, ref_b: torch.Tensor, beta: float
) -> torch.Tensor:
    """m = r(a) - r(b) with r(y) = beta (log pi(y) - log ref(y)): how sure the policy is that a is better."""
    return beta * ((policy_a - ref_a) - (policy_b - ref_b))


def reward_sums(
    policy_a: torch.Tensor,
    policy_b: torch.Tensor,
    ref_a: torch.Tensor,
    ref_b: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Over the pairs with a preference (target 1: a is chosen, -1: b is), the sums of the chosen and the
    rejected response's implicit reward r(y) = beta (log pi(y) - log ref(y)) (`rewards/chosen`,
    `rewards/rejected`), of their margin, of the margins above 0 (`rewards/accuracies`), and the number of
    such pairs (`rewards/pairs`): `reward_metrics` turns them into TRL's means."""
    r_a, r_b = beta * (policy_a - ref_a), beta * (policy_b - ref_b)
    used = targets != 0
    chosen = torch.where(targets > 0, r_a, r_b)[used]
    rejected = torch.where(targets > 0, r_b, r_a)[used]
    margins = chosen - rejected
    sums = [chosen.sum(), rejected.sum(), margins.sum(), (margins > 0).sum(), used.sum()]
    return dict(zip(REWARD_SUMS, [v.float() for v in sums], strict=True))


REWARD_SUMS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "rewards/pairs")
"""The names of `reward_sums`."""


def reward_metrics(sums: dict[str, float]) -> dict[str, float]:
    """TRL's `rewards/*` metrics (means over the pairs with a preference) from summed `reward_sums`, which
    it removes from `sums`; none when no pair had a preference."""
    pairs = sums.pop("rewards/pairs")
    totals = {name: sums.pop(name) for name in REWARD_SUMS[:-1]}
    return {name: value / pairs for name, value in totals.items()} if pairs else {}


def active_targets(
    margins: torch.Tensor, labels: torch.Tensor, pseudo_label: Literal["flip", "drop"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training label and weight of each pair under Active DPO's selection rule.

    `labels` holds the labeler's answer where one is known (1 / -1, or 0 for no usable preference) and
    NaN where the pair was not queried. Known 1 / -1 labels are used; 0 gets weight 0; an unqueried pair
    takes the policy's own prediction sign(m) ("flip") or is left out ("drop").
    """
    known = ~torch.isnan(labels)
    pseudo = torch.where(margins >= 0, 1.0, -1.0)
    targets = torch.where(known, labels.nan_to_num(0.0), pseudo)
    weights = torch.where(known, (labels.nan_to_num(0.0) != 0).float(), float(pseudo_label == "flip"))
    return targets, weights


def select_queries(margins: torch.Tensor, gamma: float) -> torch.Tensor:
    """Active DPO's rule: ask for a label where the policy is unsure, |m| <= gamma (beta-scaled units)."""
    return margins.abs() <= gamma


def anchor_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    lam: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """C3PO's anchor L_c per sequence [batch]: keep the policy's behaviour on the completion `labels`.

    L_c = (1 - lam) x token-mean cross-entropy + lam x T^2 x sum over completion tokens of
    KL(softmax(ref / T) || softmax(policy / T)). `ref_logits` are needed only when lam > 0.
    """
    loss = (1 - lam) * token_mean_nll(logits, labels) if lam < 1 else 0.0
    if lam > 0:
        if ref_logits is None:
            raise ValueError("anchor_loss with lam > 0 needs the reference's logits")
        mask = (labels[:, 1:] != IGNORE).float()
        log_p = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
        log_q = F.log_softmax(ref_logits[:, :-1].float() / temperature, dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
        loss = loss + lam * temperature**2 * (kl * mask).sum(-1)
    return loss


def cost_to_go(rewards: list[float]) -> list[float]:
    """Undiscounted return from each step to the end of an episode: G_t = r_t + r_{t+1} + ..."""
    returns, total = [], 0.0
    for r in reversed(rewards):
        total += r
        returns.append(total)
    return returns[::-1]


def choice_logprobs(
    last_logits: torch.Tensor, label_ids: torch.Tensor, n_choices: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities over the choices only ("shrink head"): the next-token logits [batch, vocab] cut
    to the label tokens [n_labels] and softmaxed; labels beyond each row's `n_choices` get -inf."""
    logits = last_logits.float()[:, label_ids]
    offered = torch.arange(len(label_ids), device=logits.device)[None, :] < n_choices[:, None]
    return F.log_softmax(logits.masked_fill(~offered, float("-inf")), dim=-1)


def reinforce_loss(action_logprobs: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """REINFORCE without a critic: -mean over steps of log pi(a_t | s_t) x G_t (G_t the cost-to-go)."""
    return -(action_logprobs * returns).mean()


def choice_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """[batch] entropy of each row's distribution over its choices (log-probs; -inf entries, the labels a
    row does not offer, add 0)."""
    return torch.special.entr(logprobs.exp()).sum(-1)


def ppo_ratio_stats(action_logprobs: torch.Tensor, old_logprobs: torch.Tensor, clip: float) -> torch.Tensor:
    """[2]: CleanRL's approx_kl, mean((r - 1) - log r), and clipfrac, the share of |r - 1| > clip, of the
    ratios r = pi / pi_old."""
    log_ratio = action_logprobs - old_logprobs
    ratio = log_ratio.exp()
    return torch.stack([((ratio - 1) - log_ratio).mean(), ((ratio - 1).abs() > clip).float().mean()])


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 for a perfect critic, 0 for one that predicts the mean,
    NaN when the targets do not vary."""
    variance = target.var(unbiased=False)
    return float("nan") if variance == 0 else float(1 - (target - predicted).var(unbiased=False) / variance)


def ppo_loss(
    action_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped surrogate: -mean of min(r A, clip(r, 1 - clip, 1 + clip) A), r = pi / pi_old."""
    ratio = torch.exp(action_logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()
