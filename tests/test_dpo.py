"""DPO and Active DPO: losses against hand-computed values, the selection rule, pair tokenization, and
tiny end-to-end runs (parameters change, accumulation invariance, resume with the label cache)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feedlearn.data.jsonl import read_jsonl
from feedlearn.data.records import LabelRecord, Message, PreferencePair
from feedlearn.data.store import open_run
from feedlearn.errors import ConfigError, DataError, FeedlearnError
from feedlearn.feedback.label_book import LabelBook
from feedlearn.losses import IGNORE, active_targets, dpo_loss, implicit_reward_margin, select_queries
from feedlearn.methods.dpo import objective, stages
from feedlearn.methods.dpo.config import ActiveDPOConfig, ActiveSettings, DPOConfig, DPOSettings
from feedlearn.methods.dpo.stages import PreferenceLearning, gold_margins, preference_metrics
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.tasks.word_preferences import WordPreferenceTask
from feedlearn.training.batches import collate_pairs, completion_row, tokenize_pairs

NAN = float("nan")
TINY = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, vocab_size=300)


# ---- losses ---------------------------------------------------------------------------------------------


def test_dpo_losses_match_hand_computed_values():
    pa, pb = torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0])
    ra, rb = torch.tensor([-4.0, -2.5]), torch.tensor([-4.5, -1.5])
    labels = torch.tensor([1.0, -1.0])
    # h = label * [(pa - ra) - (pb - rb)] = [1 * (1 - (-0.5)), -1 * (0.5 - 0.5)] = [1.5, 0]
    beta = 0.5
    sigmoid = dpo_loss(pa, pb, ra, rb, labels, beta, "sigmoid")
    assert sigmoid.tolist() == pytest.approx([math.log(1 + math.exp(-0.75)), math.log(2)])
    hinge = dpo_loss(pa, pb, ra, rb, labels, beta, "hinge")
    assert hinge.tolist() == pytest.approx([0.25, 1.0])
    ipo = dpo_loss(pa, pb, ra, rb, labels, beta, "ipo")
    assert ipo.tolist() == pytest.approx([(1.5 - 1.0) ** 2, 1.0])


def test_margin_is_beta_scaled_log_ratio_difference():
    m = implicit_reward_margin(
        torch.tensor([-1.0]), torch.tensor([-6.0]), torch.tensor([-2.0]), torch.tensor([-4.0]), 0.1
    )
    assert m.item() == pytest.approx(0.1 * ((-1 + 2) - (-6 + 4)))


def test_select_queries_asks_when_unsure_boundary_included():
    margins = torch.tensor([0.0, 1.3, -1.3, 1.31, -2.0])
    assert select_queries(margins, 1.3).tolist() == [True, True, True, False, False]


def test_active_targets_query_flip_drop_and_no_preference():
    margins = torch.tensor([0.2, 2.0, -3.0, 0.1, 0.0])
    labels = torch.tensor([-1.0, NAN, NAN, 0.0, 1.0])  # queried b, two confident, a tie, queried a
    targets, weights = active_targets(margins, labels, "flip")
    assert targets.tolist() == [-1.0, 1.0, -1.0, 0.0, 1.0]
    assert weights.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    targets, weights = active_targets(margins, labels, "drop")
    assert weights.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert targets[[0, 4]].tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("mode", ["flip", "drop"])
def test_a_confident_pair_follows_the_rule_even_with_a_label_bought_earlier(tmp_path, mode):
    from feedlearn.feedback.label_book import LabelBook
    from feedlearn.feedback.labelers import DatasetLabeler

    book = LabelBook(DatasetLabeler(), tmp_path / "labels.jsonl")
    pair = PreferencePair(id="p", prompt="x", a="y", b="z", label=1)
    assert book.get([pair]) == [1]  # bought in an earlier epoch, when the policy was unsure
    margins = torch.tensor([-2.0])  # now sure (|m| > gamma) that b is better: the rule says sign(m) = -1

    def target_and_weight(**reuse):
        active = ActiveSettings(gamma=1.0, pseudo_label=mode, **reuse)
        preference = objective.PreferenceObjective(
            DPOSettings(), active, [pair], book, {}, pad_id=0, packed=True
        )
        targets, weights = active_targets(margins, preference._labels([pair], margins), mode)
        return targets.item(), weights.item()

    assert target_and_weight() == {"flip": (-1.0, 1.0), "drop": (-1.0, 0.0)}[mode]  # the rule decides
    assert target_and_weight(reuse_labels=True) == (1.0, 1.0)  # the option: the label bought earlier
    assert book.queries_used == 1


def test_preference_metrics_counts_ties_half():
    gold = [1, -1, 1]
    policy = [(-1.0, -2.0), (-1.0, -2.0), (-3.0, -3.0)]
    reference = [(-1.0, -1.0)] * 3
    margins = gold_margins(gold, policy, reference, beta=1.0)
    assert margins == pytest.approx([1.0, -1.0, 0.0])
    m = preference_metrics(margins)
    assert m["preference_accuracy"] == pytest.approx(100 * 1.5 / 3)
    assert m["reward_margin"] == pytest.approx((1 - 1 + 0) / 3)


# ---- the synthetic task --------------------------------------------------------------------------------


def test_word_task_with_more_words_adds_made_up_ones_and_keeps_its_rule():
    from feedlearn.tasks.word_preferences import WORDS

    assert WordPreferenceTask(topics=2).vocabulary() == WORDS
    task = WordPreferenceTask(topics=2, words=200)
    vocabulary = task.vocabulary()
    assert len(set(vocabulary)) == 200 and vocabulary[:50] == WORDS
    assert len(task.values()) == 2 * 200
    pairs = task.pairs(300, 0)
    used = {w for p in pairs for side in (p.a, p.b) for w in side.split()}
    assert used <= set(vocabulary) and used - set(WORDS)  # made-up words are drawn too
    for p in pairs:  # the preferred response is worth more, by at least min_gap
        topic = p.prompt.split()[1].rstrip(".")
        assert task.score(topic, p.a) - task.score(topic, p.b) >= task.min_gap


# ---- tokenization --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    task = WordPreferenceTask()
    texts = [p.prompt + s for p in task.pairs(200, 0) for s in (p.a, p.b)] + ["user says hello assistant"]
    return str(build_tiny_model(TINY, texts, cache=tmp_path_factory.mktemp("tiny")))


def tokenizer(path):
    from feedlearn.models.loading import load_tokenizer

    return load_tokenizer(path)


def test_text_completion_masks_the_prompt_and_ends_with_eos(tiny_path):
    tok = tokenizer(tiny_path)
    ids, labels = completion_row(tok, "Topic: ocean. Words:", " salt wave")
    prompt = tok("Topic: ocean. Words:")["input_ids"]
    assert ids[: len(prompt)] == prompt and ids[-1] == tok.eos_token_id
    assert labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :]
    assert tok.decode(ids[len(prompt) : -1]) == " salt wave"


def test_conversational_completion_trains_the_assistant_reply(tiny_path):
    tok = tokenizer(tiny_path)
    ids, labels = completion_row(
        tok, [Message(role="user", content="hello")], [Message(role="assistant", content="salt wave")]
    )
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert tok.decode(trained) == "salt wave<|end|>"


@pytest.mark.parametrize("packed", [True, False])
def test_collate_pairs_lays_out_all_a_sides_then_b_sides(tiny_path, packed):
    tok = tokenizer(tiny_path)
    pairs = [  # sides of different lengths, so short ones share a row with another
        PreferencePair(id=str(i), prompt="Topic: ocean. Words:", a=" salt" * a, b=" wave" * b, label=1)
        for i, (a, b) in enumerate([(12, 1), (2, 3), (1, 11)])
    ]
    rows = tokenize_pairs(pairs, tok, 64)
    batch = collate_pairs(rows, tok.pad_token_id, packed)
    assert batch["index"].tolist() == [0, 1, 2]
    sides = [r["a"] for r in rows] + [r["b"] for r in rows]
    for i, side in enumerate(sides):  # sequence i is the a side of pair i, then the b sides
        where = batch["sequence"] == i
        assert batch["input_ids"][where].tolist() == side["input_ids"]
        assert batch["labels"][where].tolist() == [IGNORE, *side["labels"][1:]]
    if packed:
        assert batch["input_ids"].shape[0] < 6 and "attention_mask" not in batch
        assert batch["position_ids"][batch["sequence"] == 4].tolist() == list(
            range(len(sides[4]["input_ids"]))
        )
    else:
        assert batch["input_ids"].shape[0] == 6
        assert torch.equal(batch["attention_mask"].bool(), batch["sequence"] >= 0)


def test_packed_pairs_score_and_train_as_padded_ones(tiny_path):
    """Several sequences in one row, kept apart by their position ids, give the log-probs and gradients
    that one sequence per row with padding gives."""
    from transformers import AutoModelForCausalLM

    from feedlearn.training.scoring import packs_sequences, sequence_scores

    tok = tokenizer(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    rows = tokenize_pairs(WordPreferenceTask().pairs(4, seed=1), tok, 64)
    assert packs_sequences(model)
    scores, grads = [], []
    for packed in (True, False):
        model.zero_grad()
        batch = collate_pairs(rows, tok.pad_token_id, packed)
        score = sequence_scores(model, batch)
        score.sum().backward()
        scores.append(score.detach())
        grads.append(model.model.embed_tokens.weight.grad.clone())
    assert torch.allclose(*scores, atol=1e-4) and scores[0].abs().min() > 1
    assert torch.allclose(*grads, atol=1e-5)


def test_a_model_that_mixes_packed_sequences_gets_padded_rows(tiny_path, caplog):
    from transformers import AutoModelForCausalLM

    from feedlearn.training.scoring import packs_sequences

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    forward = model.forward
    model.forward = lambda position_ids=None, **kw: forward(**kw)  # attention over the whole row
    assert not packs_sequences(model)
    assert "mixes sequences packed in one row" in caplog.text


def test_tokenize_pairs_drops_pairs_longer_than_max_length_when_asked(tiny_path):
    tok = tokenizer(tiny_path)
    pairs = [
        PreferencePair(id="short", prompt="Topic: ocean. Words:", a=" salt", b=" wave", label=1),
        PreferencePair(id="long", prompt="Topic: ocean. Words:", a=" salt" * 80, b=" wave", label=1),
    ]
    rows = tokenize_pairs(pairs, tok, 32, overlong="drop")
    assert [r["index"] for r in rows] == [0]
    with pytest.raises(DataError, match="all 2 pairs are longer than max_length=4 tokens"):
        tokenize_pairs(pairs, tok, 4, overlong="drop")


def test_an_overlong_pair_is_truncated_as_trl_does_and_counted(tmp_path, tiny_path):
    """As TRL's DPOTrainer (the reference's trainer.py): the prompt keeps its last max_prompt_length
    tokens, then prompt + response keeps its first max_length tokens."""
    tok = tokenizer(tiny_path)
    prompt = "Topic: ocean. Words: salt wave tide sand. Topic: ocean. Words:"
    long = PreferencePair(id="long", prompt=prompt, a=" salt" * 30, b=" wave", label=1)
    short = PreferencePair(id="short", prompt="Topic: ocean. Words:", a=" salt", b=" wave", label=1)
    a_ids, a_labels = completion_row(tok, prompt, long.a)
    b_ids, b_labels = completion_row(tok, prompt, long.b)
    start = next(i for i, label in enumerate(a_labels) if label != IGNORE)
    assert start == next(i for i, label in enumerate(b_labels) if label != IGNORE)
    assert start > 6 and len(a_ids) - start > 20 and len(b_ids) - start < 10

    (row,) = tokenize_pairs([long], tok, max_length=16, max_prompt_length=6)
    assert row["truncated"] and row["index"] == 0
    assert row["a"]["input_ids"] == a_ids[start - 6 : start + 10]  # the prompt's end, the response's start
    assert row["a"]["labels"] == [IGNORE] * 6 + a_ids[start : start + 10]
    assert row["b"]["input_ids"] == b_ids[start - 6 :]  # short enough once its prompt is cut
    assert row["b"]["labels"] == [IGNORE] * 6 + b_ids[start:]
    (row,) = tokenize_pairs([long], tok, max_length=start + 1)  # no prompt limit: one response token
    assert row["a"]["input_ids"] == a_ids[: start + 1] and row["a"]["labels"][-1] == a_ids[start]
    # a pair whose prompt alone fills max_length has no response token left: left out
    assert [r["index"] for r in tokenize_pairs([long, short], tok, max_length=start)] == [1]
    assert not tokenize_pairs([short], tok, max_length=16)[0]["truncated"]

    # the train stage keeps it and counts it (before issue 23 it was dropped)
    path = tmp_path / "pairs.jsonl"
    pairs = [*WordPreferenceTask().pairs(15, 0), long]
    path.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    method = run(recipe(tmp_path, tiny_path, train_data={"path": str(path)}, train={"epochs": 1}))
    method.train()
    (data,) = [r for r in method.store.metrics() if r["stage"] == "train/data"]
    assert (data["pairs"], data["truncated"], data["dropped"]) == (16, 1, 0)


# ---- end to end ----------------------------------------------------------------------------------------


def recipe(tmp_path, tiny_path, active: dict | None = None, **overrides) -> DPOConfig:
    config = {
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": tiny_path},
        "train_data": {"synthetic": {"n": 48, "seed": 0}},
        "eval_data": {"synthetic": {"n": 32, "seed": 1}},
        "dpo": {"beta": 0.5},
        "train": {
            "learning_rate": 1e-2,
            "lr_schedule": "constant",
            "warmup_ratio": 0,
            "batch_size": 4,
            "grad_accum": 2,
            "epochs": 2,
            "max_length": 64,
            "checkpoint_every": 2,
        },
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if key in ("train", "dpo") else value
    if active is not None:
        return ActiveDPOConfig.model_validate({**config, "active": active})
    return DPOConfig.model_validate(config)


def run(config, run_id="r") -> PreferenceLearning:
    return PreferenceLearning(config, open_run(config.run_dir, run_id, config.model_dump(mode="json")), False)


def weights(method: PreferenceLearning) -> dict[str, torch.Tensor]:
    return load_file(str(method.layout.train() / "model" / "model.safetensors"))


def train_metrics(method: PreferenceLearning) -> list[dict]:
    rows = [json.loads(line) for line in (method.store.path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "train"]


def test_dpo_trains_and_beats_chance_on_held_out_pairs(tmp_path, tiny_path, monkeypatch):
    one_topic = {"topics": 1}  # one hidden word-value table: learnable from 256 pairs in seconds
    config = recipe(
        tmp_path,
        tiny_path,
        train={"epochs": 2},
        train_data={"synthetic": {"n": 256, "seed": 0, "task": one_topic}},
        eval_data={"synthetic": {"n": 200, "seed": 1, "task": one_topic}},
    )
    method = run(config)
    method.run()
    before = load_file(f"{tiny_path}/model.safetensors")
    after = weights(method)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    result = json.loads((method.layout.evaluation() / "metrics.json").read_text())
    assert result["queries_used"] == 256  # plain DPO asks about every pair once, over all epochs
    assert result["pairs"] == 200
    # the untrained policy equals its reference, so it scores exactly 50; one accuracy over 200 pairs has
    # a standard error of 3.5 points, so 75 is 7 of them above chance (measured: 89.0)
    assert result["preference_accuracy"] > 75
    margins = [json.loads(line) for line in (method.layout.evaluation() / "margins.jsonl").open()]
    assert len({m["id"] for m in margins}) == 200  # one per held-out pair, to compare runs pair by pair
    right = sum(1.0 if m["margin"] > 0 else 0.5 if m["margin"] == 0 else 0.0 for m in margins)
    assert 100 * right / 200 == pytest.approx(result["preference_accuracy"], abs=0.01)
    # a finished evaluation is read back, not scored again
    monkeypatch.setattr(
        stages, "pair_logprobs", lambda *a, **k: pytest.fail("a finished evaluation ran again")
    )
    assert run(config).evaluate() == result
    steps = train_metrics(method)
    assert steps[0]["losses/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert steps[-1]["losses/loss"] < steps[0]["losses/loss"]
    assert len(steps) == 64 and all(s["queries_used"] == 256 for s in steps[32:])  # epoch 2 hits the cache


def test_active_dpo_queries_fewer_and_logs_pseudo_labels(tmp_path, tiny_path):
    method = run(recipe(tmp_path, tiny_path, active={"gamma": 0.05}, train={"epochs": 3}))
    method.train()
    steps = train_metrics(method)
    assert steps[0]["queries_used"] == 8  # step 0: pi == ref, every margin is 0, all 8 pairs asked
    used = steps[-1]["queries_used"]
    labels = read_jsonl(method.layout.labels(), LabelRecord)
    assert used == len(labels) == len({r.id for r in labels}) < 48
    pseudo = [s for s in steps if s["pseudo_labels"] > 0]
    assert pseudo and all(0.0 <= s["pseudo_label_agreement"] <= 1.0 for s in pseudo)


def test_query_budget_stops_paying_and_drops_the_rest(tmp_path, tiny_path):
    method = run(recipe(tmp_path, tiny_path, query_budget=12))
    method.train()
    assert train_metrics(method)[-1]["queries_used"] == 12
    assert len(read_jsonl(method.layout.labels(), LabelRecord)) == 12


@pytest.mark.parametrize("active", [None, {"gamma": 0.05}], ids=["dpo", "active"])
def test_gradient_accumulation_invariance(tmp_path, tiny_path, active):
    common = {"epochs": 1, "max_grad_norm": 1e9}
    a = run(recipe(tmp_path / "a", tiny_path, active, train={**common, "batch_size": 8, "grad_accum": 1}))
    b = run(recipe(tmp_path / "b", tiny_path, active, train={**common, "batch_size": 1, "grad_accum": 8}))
    a.train(), b.train()
    steps_a, steps_b = train_metrics(a), train_metrics(b)
    assert len(steps_a) == len(steps_b) == 6
    for ra, rb in zip(steps_a, steps_b, strict=True):
        # float noise of the other summation order grows over the steps: 2.2e-5 relative at the last step
        # on an AMD EPYC (below 1e-5 on an Intel Xeon); an accumulation bug is off by a factor, not 1e-4
        assert rb["losses/loss"] == pytest.approx(ra["losses/loss"], rel=1e-4)
    assert steps_a[-1]["queries_used"] == steps_b[-1]["queries_used"]
    wa, wb = weights(a), weights(b)
    for k in wa:
        # 6 Adam steps of about lr = 1e-2 per entry; the two runs sum in another order (and pad differently),
        # so float noise moves an entry by about 1e-5 (measured on two CPUs): 1e-4 is 1% of one step
        assert torch.allclose(wa[k], wb[k], atol=1e-4, rtol=0), k


class Crash(Exception):
    pass


class AlwaysA:
    """A judge backend that always names the first response: both orders disagree, so no label is usable."""

    def generate(self, conversations, n, sampling, keys=None):
        return [["A"] * n for _ in conversations]


def test_a_judge_that_never_gives_a_usable_label_fails_the_run_at_its_first_answers(
    tmp_path, tiny_path, monkeypatch
):
    from feedlearn.backends.base import SamplingParams
    from feedlearn.feedback.label_book import FAIL_AFTER
    from feedlearn.judges.pairwise import JudgeLabeler

    judge = JudgeLabeler(AlwaysA(), SamplingParams(temperature=0), SamplingParams(), max_attempts=1)
    monkeypatch.setattr(stages, "build_labeler", lambda settings, seed, replies: judge)
    config = recipe(tmp_path, tiny_path, train_data={"synthetic": {"n": 160, "seed": 0}}, train={"epochs": 1})
    method = run(config)
    with pytest.raises(FeedlearnError, match="the judge labeler gave no usable label for any of the") as err:
        method.run()
    assert "position_disagreements" in str(err.value) and "\n" not in str(err.value)
    labels = read_jsonl(method.layout.labels(), LabelRecord)
    assert labels and all(r.label == 0 for r in labels)  # every answer bought is kept
    # caught after 16 answers, before a checkpoint, a saved model or more labels bought
    assert len(labels) == FAIL_AFTER
    assert not (method.layout.train() / "model").exists()
    assert not (method.layout.train() / "checkpoints").exists()
    with pytest.raises(FeedlearnError, match="no usable label"):  # and on every rerun
        run(config).run()


def test_a_mostly_unusable_labeler_is_warned_about_once(tmp_path, caplog):
    from feedlearn.feedback.label_book import CHECK_AFTER, LabelBook

    class Ties:
        source = "dataset"

        def label(self, pairs):
            for i, _ in enumerate(pairs):
                yield 1 if i % 3 == 0 else 0

    book = LabelBook(Ties(), tmp_path / "labels.jsonl")
    pairs = [PreferencePair(id=f"p{i}", prompt="p", a="x", b="y", label=1) for i in range(3 * CHECK_AFTER)]
    with caplog.at_level("WARNING", logger="feedlearn.feedback.label_book"):
        book.get(pairs)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["the dataset labeler gave a usable label for only 22 of 64 pairs"]


def test_resume_keeps_the_label_cache_and_query_count(tmp_path, tiny_path, monkeypatch):
    config = recipe(tmp_path, tiny_path, active={"gamma": 0.05}, train={"epochs": 3})
    whole = run(config, "whole")
    whole.train()

    calls, real_loss = 0, objective.PreferenceObjective.loss

    def crashing(self, model, batch):
        nonlocal calls
        calls += 1
        if calls == 5 * 2 + 1:  # first micro-batch of step 6; the checkpoint is at step 4
            raise Crash
        return real_loss(self, model, batch)

    monkeypatch.setattr(objective.PreferenceObjective, "loss", crashing)
    broken = run(config, "broken")
    with pytest.raises(Crash):
        broken.train()
    labels_path = broken.layout.labels()
    paid_before = len(read_jsonl(labels_path, LabelRecord))
    monkeypatch.setattr(objective.PreferenceObjective, "loss", real_loss)

    asked = []
    real_get = LabelBook.get

    def spying_get(self, pairs):
        asked.extend(p.id for p in pairs if p.id not in self.labels)
        return real_get(self, pairs)

    monkeypatch.setattr(LabelBook, "get", spying_get)
    resumed = run(config, "broken")
    resumed.train()
    labels = read_jsonl(labels_path, LabelRecord)
    assert len(labels) == len({r.id for r in labels})  # nothing paid twice
    already = {r.id for r in labels[:paid_before]}
    assert not already & set(asked)  # the replayed step 5 took its labels from the cache
    assert train_metrics(resumed)[-1]["queries_used"] == train_metrics(whole)[-1]["queries_used"]
    wa, wb = weights(whole), weights(resumed)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_live_reference_matches_precomputed(tmp_path, tiny_path):
    lora = {"path": tiny_path, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    for model in ({"path": tiny_path}, lora):
        pre = run(recipe(tmp_path / "pre", tiny_path, model=model, train={"epochs": 1}), str(len(model)))
        live = run(
            recipe(tmp_path / "live", tiny_path, model=model, dpo={"reference": "live"}, train={"epochs": 1}),
            str(len(model)),
        )
        pre.train(), live.train()
        for a, b in zip(train_metrics(pre), train_metrics(live), strict=True):
            assert a["losses/loss"] == pytest.approx(b["losses/loss"], abs=1e-5)
    assert (tmp_path / "pre" / "runs" / "1" / "train" / "reference_logprobs.jsonl").exists()
    assert not (tmp_path / "live" / "runs" / "1" / "train" / "reference_logprobs.jsonl").exists()


def test_margins_are_computed_without_dropout(tmp_path, tiny_path, monkeypatch):
    """TRL's DPOTrainer disables dropout (the reference's too): the margins that decide Active DPO's queries
    are the same on two forwards of the same pairs, LoRA dropout or not."""
    margins, real_loss, real_margin = [], objective.PreferenceObjective.loss, objective.implicit_reward_margin

    def recording(*args):
        margins.append(real_margin(*args))
        return margins[-1]

    def twice(self, model, batch):
        real_loss(self, model, batch)  # the same pairs, the same weights: the margins must agree
        return real_loss(self, model, batch)

    monkeypatch.setattr(objective, "implicit_reward_margin", recording)
    monkeypatch.setattr(objective.PreferenceObjective, "loss", twice)
    model = {"path": tiny_path, "lora": {"r": 4, "alpha": 8, "dropout": 0.5}}
    run(recipe(tmp_path, tiny_path, active={"gamma": 0.05}, model=model, train={"epochs": 1})).train()
    assert len(margins) == 2 * 12
    for first, second in zip(margins[::2], margins[1::2], strict=True):
        assert torch.equal(first, second)
    assert margins[-1].abs().max() > 0  # the adapter has moved: with dropout the two would differ


def test_unlabeled_pairs_need_a_labeler_other_than_the_dataset(tmp_path, tiny_path):
    path = tmp_path / "pairs.jsonl"
    pairs = WordPreferenceTask().pairs(16, 0)
    path.write_text("".join(p.model_copy(update={"label": None}).model_dump_json() + "\n" for p in pairs))
    method = run(recipe(tmp_path, tiny_path, train_data={"path": str(path)}, eval_data=None))
    with pytest.raises(DataError, match="has no label"):
        method.train()


def test_evaluate_needs_labeled_held_out_pairs(tmp_path, tiny_path):
    with pytest.raises(DataError, match="eval_data"):
        run(recipe(tmp_path, tiny_path, eval_data=None)).evaluate()


def test_recipe_errors_name_the_key(tmp_path, tiny_path):
    from feedlearn.config import load_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "method: active-dpo\nmodel: {path: tiny}\ntrain_data: {synthetic: {n: 4}}\nactive: {gama: 1}\n"
    )
    with pytest.raises(ConfigError, match="active.gama.*gamma"):
        load_recipe(ActiveDPOConfig, str(bad), [])


def test_cli_runs_active_dpo_and_reports(tmp_path, tiny_path, capsys):
    from feedlearn import cli

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"method: active-dpo\nrun_dir: {tmp_path / 'runs'}\nmodel: {{path: {tiny_path}}}\n"
        "train_data: {synthetic: {n: 32, seed: 0}}\neval_data: {synthetic: {n: 16, seed: 1}}\n"
        "train: {batch_size: 8, grad_accum: 1, max_length: 64}\nactive: {gamma: 0.5}\n"
    )
    assert cli.main(["active-dpo", "train", str(recipe)]) == 0
    assert (tmp_path / "runs" / "active-dpo-tiny" / "train" / "model" / "done.json").exists()
    assert cli.main(["run", str(recipe)]) == 0  # train is done: only evaluate runs
    assert cli.main(["report", str(tmp_path / "runs" / "active-dpo-tiny")]) == 0
    out = capsys.readouterr().out
    assert "preference_accuracy" in out and "queries_used" in out


def test_a_separate_live_reference_under_zero3_warns_that_it_is_not_sharded(
    tmp_path, tiny_path, monkeypatch, caplog
):
    config = recipe(tmp_path, tiny_path, dpo={"reference": "live", "reference_model": tiny_path})
    method = run(config)
    reference = method._reference(None, None, [], [], tmp_path)
    assert reference.model is not None and "whole reference" not in caplog.text  # no ZeRO-3: nothing said
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    method._reference(None, None, [], [], tmp_path)
    assert "every process holds the whole reference" in caplog.text


# ---- the real-model arm's shipped pairs -----------------------------------------------------------------


def test_smollm2_pairs_ship_labeled_by_brevity_with_no_request_in_two_splits():
    """recipes/active-dpo/smollm2/: every pair labeled, the preferred answer the shorter one (the user's
    preference; the files count SmolLM2's tokens, this counts characters, which mostly agree: a flipped
    label would agree at 10%), no request in two splits."""
    from feedlearn.data.preferences import load_pairs

    folder = Path(stages.__file__).resolve().parents[2] / "recipes" / "active-dpo" / "smollm2"
    requests = {}
    for split, size in (("train", 160), ("validation", 64), ("test", 128)):
        pairs = load_pairs(folder / f"{split}.jsonl")
        assert len(pairs) == size
        requests[split] = {p.prompt[0].content for p in pairs}
        sides = [(p.a, p.b) if p.label == 1 else (p.b, p.a) for p in pairs]
        shorter = sum(len(chosen[0].content) < len(rejected[0].content) for chosen, rejected in sides)
        assert shorter / size > 0.9
        assert 0.3 < sum(p.label == 1 for p in pairs) / size < 0.7  # the preferred answer's side is drawn
    assert not requests["train"] & requests["test"]
    assert not requests["train"] & requests["validation"]
    assert not requests["validation"] & requests["test"]
