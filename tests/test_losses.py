"""Losses against values computed by hand with plain math on tiny logits (vocab 3, sequence 3)."""

from __future__ import annotations

import math

import pytest
import torch

from feedlearn.losses import (
    IGNORE,
    segment_logprobs,
    sequence_logprobs,
    token_logprobs,
    token_mean_nll,
    weighted_sft_loss,
)


def lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


# Position t's logits predict token t+1. The last position's logits are never used.
LOGITS = [
    [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [3.0, -3.0, 9.0]],
    [[0.0, 0.0, 0.0], [2.0, 0.0, -1.0], [5.0, 5.0, 5.0]],
    [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
]
LABELS = [
    [IGNORE, 2, 0],  # prompt token, then two trained tokens
    [IGNORE, 1, IGNORE],  # one trained token, then padding
    [IGNORE, IGNORE, IGNORE],  # nothing trained
]
LP_A = 2.0 - lse([0.0, 1.0, 2.0])  # row 0, position 0 -> token 2
LP_B = 1.0 - lse([1.0, 0.0, 0.0])  # row 0, position 1 -> token 0
LP_C = 0.0 - lse([0.0, 0.0, 0.0])  # row 1, position 0 -> token 1 (= -log 3)


def tensors(rows=3):
    return torch.tensor(LOGITS[:rows]), torch.tensor(LABELS[:rows])


def test_token_logprobs_shift_and_mask():
    logits, labels = tensors()
    logps, mask = token_logprobs(logits, labels)
    assert logps.shape == (3, 2) and mask.shape == (3, 2)
    assert mask.tolist() == [[True, True], [True, False], [False, False]]
    expected = [LP_A, LP_B, LP_C, 0.0, 0.0, 0.0]
    assert logps.flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert math.isclose(LP_C, -math.log(3))


def test_first_label_is_never_predicted():
    logits, labels = tensors()
    changed = labels.clone()
    changed[:, 0] = 1  # no position predicts token 0, so its label cannot matter
    a, _ = token_logprobs(logits, labels)
    b, _ = token_logprobs(logits, changed)
    assert torch.equal(a, b)


def test_last_position_logits_are_unused():
    logits, labels = tensors()
    other = logits.clone()
    other[:, -1] = torch.tensor([100.0, -100.0, 0.0])
    assert torch.equal(sequence_logprobs(logits, labels), sequence_logprobs(other, labels))


def test_sequence_logprobs():
    logits, labels = tensors()
    assert sequence_logprobs(logits, labels).tolist() == pytest.approx([LP_A + LP_B, LP_C, 0.0], abs=1e-6)


def test_segment_logprobs_sums_each_sequence_of_a_packed_row():
    logits, labels = tensors()
    # Row 0 read as two sequences: tokens 0-1 are sequence 1 (token 1 trained: LP_A), token 2 is sequence 0,
    # whose first token is never a target; row 1 holds sequence 2 (LP_C) and a filler token.
    labels[0, 2] = IGNORE
    sequence = torch.tensor([[1, 1, 0], [2, 2, -1], [-1, -1, -1]])
    assert segment_logprobs(logits, labels, sequence).tolist() == pytest.approx([0.0, LP_A, LP_C], abs=1e-6)


def test_token_mean_nll_ignores_padding():
    logits, labels = tensors()
    nll = token_mean_nll(logits, labels)
    # row 0: mean over 2 tokens; row 1: 1 token (padding ignored); row 2: no tokens -> 0, not NaN
    assert nll.tolist() == pytest.approx([-(LP_A + LP_B) / 2, math.log(3), 0.0], abs=1e-6)


def test_token_mean_nll_is_independent_of_padding_length():
    logits, labels = tensors(2)
    padded_logits = torch.cat([logits, torch.randn(2, 4, 3)], dim=1)
    padded_labels = torch.cat([labels, torch.full((2, 4), IGNORE)], dim=1)
    assert torch.allclose(token_mean_nll(logits, labels), token_mean_nll(padded_logits, padded_labels))


def test_weighted_sft_loss_rise_weights():
    weights = [math.exp(r / 0.4) for r in (1.0, 0.0, -1.0)]
    assert weights == pytest.approx([12.18, 1.0, 0.082], abs=5e-3)
    logits, labels = tensors()
    labels[2] = torch.tensor([IGNORE, 0, 2])  # give row 2 two trained tokens
    lp_d = 1.0 - lse([1.0, 2.0, 3.0]) + 6.0 - lse([4.0, 5.0, 6.0])
    nlls = [-(LP_A + LP_B) / 2, math.log(3), -lp_d / 2]
    expected = sum(w * n for w, n in zip(weights, nlls, strict=True)) / 3
    loss = weighted_sft_loss(logits, labels, torch.tensor(weights))
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # unit weights give the plain mean of token-mean NLLs (not a mean over all tokens)
    plain = weighted_sft_loss(logits, labels, torch.ones(3)).item()
    assert plain == pytest.approx(sum(nlls) / 3, rel=1e-6)
    assert plain != pytest.approx((-(LP_A + LP_B) + math.log(3) - lp_d) / 5, rel=1e-3)


def test_gradient_flows_only_through_trained_positions():
    logits, labels = tensors(2)
    logits.requires_grad_(True)
    w = [2.0, 0.5]
    weighted_sft_loss(logits, labels, torch.tensor(w)).backward()
    g = logits.grad
    # loss = (w0 * -(lp_a + lp_b) / 2 + w1 * -lp_c) / 2, and d(-log softmax_y)/dz = softmax(z) - onehot(y)
    exp_a = [p - (i == 2) for i, p in enumerate(softmax(LOGITS[0][0]))]
    exp_b = [p - (i == 0) for i, p in enumerate(softmax(LOGITS[0][1]))]
    exp_c = [p - (i == 1) for i, p in enumerate(softmax(LOGITS[1][0]))]
    assert g[0, 0].tolist() == pytest.approx([w[0] / 4 * x for x in exp_a], abs=1e-6)
    assert g[0, 1].tolist() == pytest.approx([w[0] / 4 * x for x in exp_b], abs=1e-6)
    assert g[1, 0].tolist() == pytest.approx([w[1] / 2 * x for x in exp_c], abs=1e-6)
    # padding position and the unused last position get exactly zero
    assert torch.count_nonzero(g[1, 1]) == 0
    assert torch.count_nonzero(g[:, 2]) == 0


def test_zero_weight_example_gets_no_gradient():
    logits, labels = tensors(2)
    logits.requires_grad_(True)
    weighted_sft_loss(logits, labels, torch.tensor([0.0, 1.0])).backward()
    assert torch.count_nonzero(logits.grad[0]) == 0
    assert torch.count_nonzero(logits.grad[1, 0]) == 3


def test_low_precision_logits_are_upcast():
    logits, labels = tensors()
    logps, _ = token_logprobs(logits.to(torch.bfloat16), labels)
    assert logps.dtype == torch.float32
    assert logps[0, 0].item() == pytest.approx(LP_A, abs=1e-6)  # these logits are exact in bfloat16


def test_cost_to_go_is_the_undiscounted_suffix_sum():
    from feedlearn.losses import cost_to_go

    assert cost_to_go([-0.05, -0.05, 1.0]) == pytest.approx([0.9, 0.95, 1.0])
    assert cost_to_go([]) == []


def test_choice_logprobs_softmax_over_offered_labels_only():
    from feedlearn.losses import choice_logprobs

    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 9.0], [0.0, 1.0, 2.0, 3.0, 9.0]])
    labels = torch.tensor([1, 2, 3])  # token ids of the labels "1", "2", "3"; token 4 is not a label
    lp = choice_logprobs(logits, labels, torch.tensor([3, 2]))
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert lp[0].tolist() == pytest.approx([1 - z, 2 - z, 3 - z])
    z2 = math.log(math.exp(1) + math.exp(2))
    assert lp[1, :2].tolist() == pytest.approx([1 - z2, 2 - z2])
    assert lp[1, 2].item() == float("-inf")  # only two choices offered in this state


def test_reinforce_loss_matches_hand_computed_value():
    from feedlearn.losses import reinforce_loss

    logps = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    returns = torch.tensor([1.0, -2.0])
    loss = reinforce_loss(logps, returns)
    assert loss.item() == pytest.approx(-(math.log(0.5) * 1.0 + math.log(0.25) * -2.0) / 2)
    loss.backward()
    assert logps.grad.tolist() == pytest.approx([-0.5, 1.0])  # raise good actions, lower bad ones


def test_ppo_loss_clips_the_ratio_on_the_side_the_advantage_pushes():
    from feedlearn.losses import ppo_loss

    old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.75, 0.25, 0.25])).requires_grad_()  # ratios 1.5, 0.5, 0.5
    adv = torch.tensor([2.0, 1.0, -1.0])
    loss = ppo_loss(new, old, adv, clip=0.1)
    # min(1.5*2, 1.1*2) = 2.2 (clipped); min(0.5*1, 0.9*1) = 0.5; min(0.5*-1, 0.9*-1) = -0.9 (clipped)
    assert loss.item() == pytest.approx(-(2.2 + 0.5 - 0.9) / 3)
    loss.backward()
    # only the unclipped middle term has a gradient: d/dlogp of -(r * A)/3 = -(0.5 * 1)/3
    assert new.grad.tolist() == pytest.approx([0.0, -0.5 / 3, 0.0])


def test_reward_sums_are_trls_rewards_of_known_log_probs():
    """Two labeled pairs and one without a preference; beta 0.5. Pair 1 (a chosen): r(a) = 0.5 (-1 + 2) =
    0.5, r(b) = 0.5 (-3 + 2.5) = -0.25. Pair 2 (b chosen): r(a) = 0.5 (-2 + 1) = -0.5, r(b) = 0.5 (-4 + 3)
    = -0.5, margin 0 (not above 0). Pair 3 (target 0) is left out."""
    from feedlearn.losses import REWARD_SUMS, reward_metrics, reward_sums

    policy_a, policy_b = torch.tensor([-1.0, -2.0, -9.0]), torch.tensor([-3.0, -4.0, -9.0])
    ref_a, ref_b = torch.tensor([-2.0, -1.0, 0.0]), torch.tensor([-2.5, -3.0, 0.0])
    sums = reward_sums(policy_a, policy_b, ref_a, ref_b, torch.tensor([1.0, -1.0, 0.0]), beta=0.5)
    sums = {name: v.item() for name, v in sums.items()}
    assert sums["rewards/pairs"] == 2 and sums["rewards/accuracies"] == 1
    assert sums["rewards/chosen"] == pytest.approx(0.5 + -0.5)
    assert sums["rewards/rejected"] == pytest.approx(-0.25 + -0.5)
    assert sums["rewards/margins"] == pytest.approx(0.75 + 0.0)
    summed = sums | {"other": 1.0}
    assert reward_metrics(summed) == pytest.approx(
        {
            "rewards/chosen": 0.0,
            "rewards/rejected": -0.375,
            "rewards/margins": 0.375,
            "rewards/accuracies": 0.5,
        }
    )
    assert summed == {"other": 1.0}  # the reward sums are taken out; no pair with a preference, no metric
    assert reward_metrics(dict.fromkeys(REWARD_SUMS, 0.0)) == {}


def test_ppo_diagnostics_of_known_ratios():
    """Ratios 1, 2 and 0.5 (clip 0.2): approx_kl = mean((r - 1) - log r) = (0 + (1 - ln 2) + (-0.5 + ln 2))
    / 3 = 0.5 / 3; two of three ratios lie outside [0.8, 1.2]."""
    from feedlearn.losses import choice_entropy, explained_variance, ppo_ratio_stats

    old = torch.log(torch.tensor([0.2, 0.2, 0.4]))
    new = torch.log(torch.tensor([0.2, 0.4, 0.2]))
    approx_kl, clipfrac = ppo_ratio_stats(new, old, clip=0.2).tolist()
    assert approx_kl == pytest.approx(0.5 / 3, rel=1e-5) and clipfrac == pytest.approx(2 / 3)
    # entropy over the offered choices: a fair coin (ln 2) beside a label it does not offer (-inf)
    logps = torch.log(torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    assert choice_entropy(logps).tolist() == pytest.approx([math.log(2), 0.0])
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    assert explained_variance(returns - 1, returns) == pytest.approx(1 - 0 / returns.var(unbiased=False))
    assert math.isnan(explained_variance(returns, torch.ones(4)))
