"""Losses as pure tensor functions, testable without a model.

Conventions: `logits` is [batch, seq, vocab] from a causal LM over `input_ids`; `labels` is [batch, seq],
aligned with `input_ids`, holding -100 where a token is not trained on (prompt, padding). Position t's
logits predict token t+1, so both are shifted by one inside.
"""

from __future__ import annotations

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


def token_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over each sequence's completion tokens [batch]."""
    logps, mask = token_logprobs(logits, labels)
    return -logps.sum(-1) / mask.sum(-1).clamp(min=1)


def weighted_sft_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reward-weighted regression: batch mean of weight x token-mean NLL of each example's completion."""
    return (weights * token_mean_nll(logits, labels)).mean()
