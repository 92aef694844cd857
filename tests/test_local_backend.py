"""LocalBackend on a tiny random model: order, seeding, batching, and clean decoded replies."""

from __future__ import annotations

import pytest
import torch

from feedlearn.backends.base import SamplingParams
from feedlearn.backends.local import LocalBackend, sample_rows
from feedlearn.models.chat import CHAT_SPECIAL_TOKENS, prompt_ids
from feedlearn.models.loading import ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model

CORPUS = [f"What is {a} plus {b}? The answer is {a + b}." for a in range(12) for b in range(10)] + [
    "Try again, please. You are a careful solver. Hi"
]

# Deliberately not sorted by length: the backend sorts them, and must put the replies back in this order.
CONVERSATIONS = [
    [{"role": "user", "content": "What is 3 plus 4? Please answer carefully and show all the steps."}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a careful solver."},
        {"role": "user", "content": "What is 11 plus 9?"},
        {"role": "assistant", "content": "The answer is 19."},
        {"role": "user", "content": "Try again, please."},
    ],
    [{"role": "user", "content": "What is 5 plus 5?"}],
]
GREEDY = SamplingParams(temperature=0, max_new_tokens=10)
SAMPLE = SamplingParams(temperature=1.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    config = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, vocab_size=300)
    folder = build_tiny_model(config, CORPUS, cache=tmp_path_factory.mktemp("tiny-backend"))
    model, tok = load_policy(ModelSettings(path=str(folder)))
    # The default init (std 0.02) makes every greedy reply the same; larger weights make replies depend on
    # the prompt, so a reply put back in the wrong place is noticed.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model, tok


def backend(policy, **kw) -> LocalBackend:
    model, tok = policy
    return LocalBackend(model, tok, progress=False, **kw)


def alone(policy, sampling=GREEDY) -> list[str]:
    return [backend(policy, batch_size=1).generate([c], 1, sampling)[0][0] for c in CONVERSATIONS]


def test_conversations_are_not_in_length_order(policy):
    _, tok = policy
    lengths = [len(prompt_ids(tok, c)) for c in CONVERSATIONS]
    assert lengths != sorted(lengths) and len(set(lengths)) == 4


def test_replies_come_back_in_input_order(policy):
    expected = alone(policy)
    assert len(set(expected)) == 4  # each prompt has its own greedy reply
    replies = backend(policy, batch_size=2).generate(CONVERSATIONS, 1, GREEDY)
    assert replies == [[r] for r in expected]


def test_batch_size_smaller_than_number_of_conversations(policy):
    expected = [[r] for r in alone(policy)]
    for bs in (1, 3, 64):
        assert backend(policy, batch_size=bs).generate(CONVERSATIONS, 1, GREEDY) == expected, bs


def test_n_samples_per_conversation_map_to_their_conversation(policy):
    # with temperature -> 0 sampling is greedy in all but name: every sample is the greedy reply
    near_greedy = SamplingParams(temperature=1e-4, max_new_tokens=10)
    expected = alone(policy)
    # batch_size 4 with n=3 gives one conversation per generate call; 64 puts all of them in one
    for bs in (4, 64, 6):
        replies = backend(policy, batch_size=bs).generate(CONVERSATIONS, 3, near_greedy)
        assert replies == [[r] * 3 for r in expected], bs


def test_greedy_with_n_above_one_repeats_the_greedy_reply(policy):
    expected = alone(policy)
    replies = backend(policy, batch_size=8).generate(CONVERSATIONS, 3, GREEDY)
    assert replies == [[r] * 3 for r in expected]


def test_same_seed_same_samples(policy):
    a = backend(policy, seed=5).generate(CONVERSATIONS, 3, SAMPLE)
    b = backend(policy, seed=5).generate(CONVERSATIONS, 3, SAMPLE)
    assert a == b
    assert [len(r) for r in a] == [3, 3, 3, 3]
    assert all(len(set(r)) > 1 for r in a)  # the n samples are drawn independently
    assert backend(policy, seed=6).generate(CONVERSATIONS, 3, SAMPLE) != a


def test_a_conversations_samples_do_not_depend_on_its_batch_or_earlier_calls(policy):
    together = backend(policy, seed=5, batch_size=64).generate(CONVERSATIONS, 3, SAMPLE)
    one_by_one = backend(policy, seed=5, batch_size=1)
    one_by_one.generate(CONVERSATIONS[:2], 2, SAMPLE)  # earlier calls change nothing
    for conversation, replies in zip(CONVERSATIONS[::-1], together[::-1], strict=True):
        assert one_by_one.generate([conversation], 3, SAMPLE) == [replies]


def test_samples_are_seeded_by_key(policy):
    b = backend(policy, seed=5)
    keys = ["record-1", "record-2", "record-3", "record-4"]
    first = b.generate(CONVERSATIONS, 2, SAMPLE, keys=keys)
    assert b.generate(CONVERSATIONS[::-1], 2, SAMPLE, keys=keys[::-1]) == first[::-1]
    same_prompt = b.generate([CONVERSATIONS[0]] * 2, 1, SAMPLE, keys=["a", "b"])
    assert same_prompt[0] != same_prompt[1]  # two records of one prompt draw their own samples
    alone_reply = b.generate([CONVERSATIONS[0]], 1, SAMPLE)[0]
    assert b.generate([CONVERSATIONS[0]] * 2, 1, SAMPLE) == [alone_reply] * 2  # no keys: keyed by content
    with pytest.raises(ValueError, match="2 keys for 4 conversations"):
        b.generate(CONVERSATIONS, 1, SAMPLE, keys=keys[:2])


def test_top_p_keeps_only_the_nucleus(policy):
    nucleus = SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=10)
    replies = backend(policy, seed=3).generate(CONVERSATIONS, 4, nucleus)
    assert replies == [[r] * 4 for r in alone(policy)]  # a tiny nucleus holds the argmax alone


def test_sample_rows_inverts_each_rows_cdf():
    probs = torch.tensor([[0.2, 0.0, 0.8], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    uniforms = torch.tensor([0.1, 0.75, 0.0])
    assert sample_rows(probs, uniforms).tolist() == [0, 1, 2]
    assert sample_rows(probs, torch.tensor([0.2, 0.5, 0.999])).tolist() == [2, 1, 2]  # zero mass skipped


def test_replies_contain_no_special_tokens(policy, monkeypatch):
    model, tok = policy
    raw = []
    original = model.generate

    def recording_generate(**kwargs):
        out = original(**kwargs)
        raw.append(out[:, kwargs["input_ids"].shape[1] :])
        return out

    monkeypatch.setattr(model, "generate", recording_generate, raising=False)
    replies = backend(policy, seed=1, batch_size=4).generate(CONVERSATIONS * 2, 4, SAMPLE)
    special_ids = set(tok.convert_tokens_to_ids(CHAT_SPECIAL_TOKENS))
    generated = {i for out in raw for i in out.flatten().tolist()}
    assert generated & (special_ids - {tok.eos_token_id, tok.pad_token_id})  # the model did emit some
    texts = [t for r in replies for t in r]
    assert len(texts) == 32
    for t in texts:
        assert not any(s in t for s in CHAT_SPECIAL_TOKENS), t


def test_restores_training_mode_and_handles_no_conversations(policy):
    model, _ = policy
    model.train()
    try:
        assert backend(policy).generate(CONVERSATIONS[:1], 1, GREEDY)[0][0]
        assert model.training
        assert backend(policy).generate([], 2, GREEDY) == []
    finally:
        model.eval()
    backend(policy).generate(CONVERSATIONS[:1], 1, GREEDY)
    assert not model.training


def test_the_static_kv_cache_samples_the_tokens_the_dynamic_one_does(policy):
    """The static cache (the default, for speed) changes no token: greedy and sampled rows, batched with
    prompts of different lengths (left padding), equal the dynamic cache's."""
    for sampling in (GREEDY, SAMPLE, SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=24)):
        static = backend(policy, batch_size=8).generate_ids(CONVERSATIONS, 4, sampling)
        dynamic = backend(policy, batch_size=8, kv_cache="dynamic").generate_ids(CONVERSATIONS, 4, sampling)
        assert static == dynamic
        assert any(len(ids) > 0 for rows in static for ids in rows)


def test_a_prompt_prefilled_once_for_its_samples_gives_what_each_sample_alone_does(policy):
    """Each conversation's prompt is prefilled once and its KV cache shared by its n samples: every sample
    equals a plain `generate` of the prompt alone (its own full prefill) with the row's seeded draws, in
    a batch of prompts of different lengths (left padding), with either cache."""
    from transformers import LogitsProcessorList

    from feedlearn.backends.base import conversation_key
    from feedlearn.backends.local import RowSampler, row_uniforms
    from feedlearn.seeds import derive_seed

    model, tok = policy
    sampling = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=12)

    def alone(chat, k: int) -> list[int]:
        ids = torch.tensor([prompt_ids(tok, chat)])
        uniforms = row_uniforms(
            [derive_seed(0, "sampling", conversation_key(chat), k)], sampling.max_new_tokens
        )
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=sampling.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList([RowSampler(uniforms, sampling)]),
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )[0, ids.shape[1] :].tolist()
        return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out

    expected = [[alone(chat, k) for k in range(3)] for chat in CONVERSATIONS]
    assert len({tuple(ids) for rows in expected for ids in rows}) > 4  # the samples differ
    for kv_cache in ("static", "dynamic"):
        assert (
            backend(policy, batch_size=12, kv_cache=kv_cache).generate_ids(CONVERSATIONS, 3, sampling)
            == expected
        )
