"""Completion-only tokenization, collation, and the trainer (resume, accumulation, LoRA) on a tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from feedlearn.data.records import Message, SFTExample
from feedlearn.data.store import RunStore
from feedlearn.errors import DataError, FeedlearnError
from feedlearn.losses import IGNORE, weighted_sft_loss
from feedlearn.models.chat import completion_spans, prompt_ids
from feedlearn.models.loading import LoraSettings, ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.training.batches import collate, tokenize_sft
from feedlearn.training.trainer import SFTObjective, TrainSettings, train

CORPUS = [f"What is {a} plus {b}? The answer is {a + b}." for a in range(12) for b in range(10)] + [
    "Try again, please. You are a careful solver."
]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    config = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, vocab_size=300)
    return build_tiny_model(config, CORPUS, cache=tmp_path_factory.mktemp("tiny-cache"))


def load(folder, lora: LoraSettings | None = None):
    return load_policy(ModelSettings(path=str(folder), lora=lora), trainable=True)


@pytest.fixture
def tokenizer(tiny_folder):
    return load(tiny_folder)[1]


def examples(n: int = 8, weights=None) -> list[SFTExample]:
    """Same-length examples: digits are one token each and i + 2 < 10."""
    assert n <= 8
    return [
        SFTExample(
            id=str(i),
            messages=[
                Message(role="user", content=f"What is {i} plus 2?"),
                Message(role="assistant", content=f"The answer is {i + 2}."),
            ],
            weight=1.0 if weights is None else weights[i],
        )
        for i in range(n)
    ]


def sft_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return weighted_sft_loss(logits, batch["labels"], batch["weight"])


def sft(tok, loss=sft_loss) -> SFTObjective:
    """SFT on `tok`'s padding with `loss` in place of its own (a recording or a crashing one)."""
    objective = SFTObjective(tok.pad_token_id)
    objective.loss = loss
    return objective


def saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def metrics(store: RunStore, stage: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (store.path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


# ---- tokenization ---------------------------------------------------------------------------------------

MULTI = [
    Message(role="system", content="You are a careful solver."),
    Message(role="user", content="What is 3 plus 4?"),
    Message(role="assistant", content="The answer is 8."),
    Message(role="user", content="Try again, please."),
    Message(role="assistant", content="The answer is 7."),
]


def completion_ids(tokenizer, messages):
    ids, [(start, _)] = completion_spans(tokenizer, messages)
    return ids, start


def test_completion_ids_context_is_the_generation_prompt(tokenizer):
    ids, start = completion_ids(tokenizer, MULTI)
    context = prompt_ids(tokenizer, MULTI[:-1])
    assert start == len(context) and ids[:start] == context
    assert tokenizer.decode(context).endswith("<|user|>\nTry again, please.<|end|>\n<|assistant|>\n")
    assert tokenizer.decode(ids[start:]).startswith("The answer is 7.<|end|>")
    # dict messages and records give the same ids
    assert completion_ids(tokenizer, [m.model_dump() for m in MULTI]) == (ids, start)


def test_completion_ids_needs_a_final_assistant_turn(tokenizer):
    with pytest.raises(FeedlearnError, match="must end with an assistant message"):
        completion_ids(tokenizer, MULTI[:-1])
    with pytest.raises(FeedlearnError):
        completion_ids(tokenizer, [])


def test_tokenize_sft_labels_only_the_final_assistant_turn(tokenizer):
    ex = SFTExample(id="m", messages=MULTI, weight=12.18)
    [row] = tokenize_sft([ex], tokenizer, max_length=1000)
    ids, labels = row["input_ids"], row["labels"]
    _, start = completion_ids(tokenizer, MULTI)
    assert len(labels) == len(ids)
    assert labels[:start] == [IGNORE] * start  # system, user, the earlier attempt, the feedback
    assert labels[start:] == ids[start:] and IGNORE not in labels[start:]
    assert row["weight"] == 12.18
    trained = tokenizer.decode(ids[start:])
    assert trained.startswith("The answer is 7.<|end|>")
    assert tokenizer.eos_token_id in ids[start:]
    assert "The answer is 8." in tokenizer.decode(ids[:start])  # the first attempt is context only


def test_trained_part_ends_with_the_end_token(tokenizer):
    [row] = tokenize_sft([SFTExample(id="m", messages=MULTI)], tokenizer, max_length=1000)
    trained = [t for t in row["labels"] if t != IGNORE]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained) == "The answer is 7.<|end|>"


def test_all_turns_trains_every_assistant_answer(tokenizer):
    ids, spans = completion_spans(tokenizer, MULTI, all_turns=True)
    assert [tokenizer.decode(ids[a:b]) for a, b in spans] == [
        "The answer is 8.<|end|>",
        "The answer is 7.<|end|>",
    ]
    [row] = tokenize_sft([SFTExample(id="m", messages=MULTI)], tokenizer, max_length=1000, all_turns=True)
    trained = [t if t != IGNORE else None for t in row["labels"]]
    kept = [i for i, t in enumerate(trained) if t is not None]
    assert kept == [*range(*spans[0]), *range(*spans[1])]  # both answers, nothing else
    assert (
        tokenizer.decode([row["input_ids"][i] for i in kept])
        == "The answer is 8.<|end|>The answer is 7.<|end|>"
    )


ADVERSARIAL_REPLIES = [
    "\nThe answer is 7.",  # a leading newline merges with the template's newline when rendered whole
    "\n\n\nThe answer is 7.",
    "The answer is 7.\n\n",
    "  The answer is 7.  ",
    "",
    "   ",
    "The <|end|> answer <|user|>\nis 7.<|assistant|>",  # special-token text a model wrote, as text
]


@pytest.fixture(scope="module")
def newline_tokenizer(tmp_path_factory):
    """A tokenizer that merges blank lines into one token, as real ones do."""
    config = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=300)
    folder = build_tiny_model(config, [t + "\n\n\n" for t in CORPUS], cache=tmp_path_factory.mktemp("nl"))
    return load_policy(ModelSettings(path=str(folder)))


@pytest.mark.parametrize("reply", ADVERSARIAL_REPLIES)
def test_any_reply_a_model_can_sample_tokenizes_and_trains(newline_tokenizer, reply):
    model, tok = newline_tokenizer
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1  # so a leading newline would merge
    messages = [*MULTI[:-1], Message(role="assistant", content=reply)]
    ids, [(start, end)] = completion_spans(tok, messages)
    assert ids[:start] == prompt_ids(tok, messages[:-1])  # the context generation saw
    assert end == len(ids) and ids[end - 1] == tok.eos_token_id
    assert tok.eos_token_id not in ids[start : end - 1]  # the reply's own text holds no real end token
    assert tok.decode(ids[start : end - 1]) == reply
    [row] = tokenize_sft([SFTExample(id="x", messages=messages)], tok, max_length=1000)
    batch = collate([row], tok.pad_token_id)
    loss = sft_loss(model, {**batch, "weight": torch.ones(1)})
    assert torch.isfinite(loss)


def test_tokenize_sft_drops_over_long_examples(tokenizer, caplog):
    short, long_ = examples(1)[0], SFTExample(id="long", messages=MULTI)
    n_long = len(completion_ids(tokenizer, MULTI)[0])
    n_short = len(completion_ids(tokenizer, short.messages)[0])
    assert n_short < n_long
    with caplog.at_level(logging.WARNING, logger="feedlearn.training.batches"):
        rows = tokenize_sft([long_, short], tokenizer, max_length=n_long - 1)
    assert [len(r["input_ids"]) for r in rows] == [n_short]
    assert "dropped 1 of 2 examples longer than max_length" in caplog.text
    # exactly max_length is kept
    assert len(tokenize_sft([long_, short], tokenizer, max_length=n_long)) == 2
    with pytest.raises(
        DataError, match=r"all 2 examples are longer than max_length=3 tokens: raise max_length"
    ):
        tokenize_sft([long_, short], tokenizer, max_length=3)


# ---- collation ------------------------------------------------------------------------------------------


def test_collate_right_pads_with_mask_and_weights():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "weight": 12.18},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [IGNORE, IGNORE, 10, 11, 12], "weight": 0.082},
    ]
    b = collate(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE], [IGNORE, IGNORE, 10, 11, 12]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert b["input_ids"].dtype == torch.long and b["attention_mask"].dtype == torch.long
    assert b["weight"].dtype == torch.float32
    assert b["weight"].tolist() == pytest.approx([12.18, 0.082])


def test_collate_without_weights():
    b = collate([{"input_ids": [1], "labels": [1]}], pad_id=3)
    assert set(b) == {"input_ids", "labels", "attention_mask"}


# ---- training -------------------------------------------------------------------------------------------


def test_training_changes_parameters_and_lowers_loss(tiny_folder, tmp_path):
    model, tok = load(tiny_folder)
    before = snapshot(model)
    rows = tokenize_sft(examples(8), tok, 256)
    store = RunStore(tmp_path, "run")
    settings = TrainSettings(
        learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0, epochs=6, batch_size=4, grad_accum=1
    )
    out = train(model, tok, rows, sft(tok), settings, tmp_path / "stage", store=store, stage="sft")
    assert out == tmp_path / "stage" / "model"
    assert json.loads((out / "done.json").read_text()) == {"steps": 12, "examples": 8}
    assert not (tmp_path / "stage" / "checkpoints").exists()

    after = snapshot(model)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []

    rows_logged = metrics(store, "sft")
    assert [r["step"] for r in rows_logged] == list(range(1, 13))
    losses = [r["losses/loss"] for r in rows_logged]
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2
    assert all(r["charts/lr"] == pytest.approx(1e-2) for r in rows_logged)

    # the saved model is the trained one
    saved = saved_weights(out)
    for k, v in saved.items():
        assert torch.equal(v, after[k]), k
    reloaded, _ = load_policy(ModelSettings(path=str(out)))
    batch = collate(rows[:2], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(
            reloaded(input_ids=batch["input_ids"]).logits, model(input_ids=batch["input_ids"]).logits
        )


def test_finished_run_is_not_retrained(tiny_folder, tmp_path):
    model, tok = load(tiny_folder)
    rows = tokenize_sft(examples(4), tok, 256)
    settings = TrainSettings(learning_rate=1e-3, batch_size=2, grad_accum=1)
    out = train(model, tok, rows, sft(tok), settings, tmp_path)
    done = (out / "done.json").read_bytes()

    def must_not_run(model, batch):
        raise AssertionError("a finished run was trained again")

    fresh, _ = load(tiny_folder)
    before = snapshot(fresh)
    assert train(fresh, tok, rows, sft(tok, must_not_run), settings, tmp_path) == out
    assert (out / "done.json").read_bytes() == done
    assert all(torch.equal(v, snapshot(fresh)[k]) for k, v in before.items())


class Crash(Exception):
    pass


LORA = LoraSettings(r=4, alpha=8, dropout=0.3, target_modules=["q_proj", "v_proj"])


RESUMED = TrainSettings(
    learning_rate=5e-3,
    lr_schedule="cosine",
    warmup_ratio=0.25,
    weight_decay=0.1,
    epochs=4,
    batch_size=2,
    grad_accum=2,
    checkpoint_every=2,
)  # 8 rows / (2 x 2) = 2 steps per epoch, 8 steps in all
WEIGHTS = [12.18, 1.0, 0.082, 1.0, 12.18, 0.082, 1.0, 1.0]


def uninterrupted_and_crashed(tiny_folder, tmp_path, lora):
    """Run A trains 8 steps; run B the same until it crashes in step 6 (checkpoints after steps 2 and 4).
    Returns A's model folder, both stores, B's folder, the rows and the tokenizer."""
    torch.manual_seed(0)  # the same initial adapter in both runs
    model, tok = load(tiny_folder, lora)
    rows = tokenize_sft(examples(8, WEIGHTS), tok, 256)
    store_a = RunStore(tmp_path, "a")
    out_a = train(model, tok, rows, sft(tok), RESUMED, tmp_path / "A", store=store_a, seed=3)
    calls = 0

    def crashing_loss(model, batch):
        nonlocal calls
        calls += 1
        if calls == 5 * RESUMED.grad_accum + 1:  # step 6: step 5 was logged after the checkpoint at 4
            raise Crash
        return sft_loss(model, batch)

    store_b = RunStore(tmp_path, "b")
    torch.manual_seed(0)
    model, _ = load(tiny_folder, lora)
    with pytest.raises(Crash):
        train(model, tok, rows, sft(tok, crashing_loss), RESUMED, tmp_path / "B", store=store_b, seed=3)
    return out_a, store_a, store_b, tmp_path / "B", rows, tok


def resume_and_compare(tiny_folder, lora, out_a, store_a, store_b, folder_b, rows, tok, resumed_steps):
    """Resume run B in a fresh model and check it ends as run A did, redoing the steps after the
    checkpoint it resumed from (`resumed_steps` logged before the resume, each once in the end)."""
    assert [r["step"] for r in metrics(store_b)] == resumed_steps
    torch.manual_seed(12345)  # the resumed run must not depend on the state the process happens to be in
    model, _ = load(tiny_folder, lora)
    out_b = train(model, tok, rows, sft(tok), RESUMED, folder_b, store=store_b, seed=3)
    a, b = saved_weights(out_a), saved_weights(out_b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # the resumed steps saw the same batches with the same weights, lr and optimizer state
    steps_a, steps_b = metrics(store_a), metrics(store_b)
    assert [r["step"] for r in steps_b] == [1, 2, 3, 4, 5, 6, 7, 8]  # each step is logged once
    for ra, rb in zip(steps_a, steps_b, strict=True):
        assert rb["losses/loss"] == pytest.approx(ra["losses/loss"], rel=1e-5, abs=1e-7)
        assert rb["charts/lr"] == pytest.approx(ra["charts/lr"], rel=1e-9)
    assert steps_a[0]["charts/lr"] < steps_a[1]["charts/lr"]  # warmup, so the scheduler state mattered


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora-with-dropout"])
def test_resume_equals_uninterrupted(tiny_folder, tmp_path, lora):
    out_a, store_a, store_b, folder_b, rows, tok = uninterrupted_and_crashed(tiny_folder, tmp_path, lora)
    ckpts = folder_b / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2", "step-4"]  # the newest and the one before
    mark = json.loads((ckpts / "step-4" / "checkpoint.json").read_text())
    assert mark["step"] == 4 and mark["files"]["model.safetensors"] > 0
    assert mark["files"] == {
        str(f.relative_to(ckpts / "step-4")): f.stat().st_size
        for f in (ckpts / "step-4").rglob("*")
        if f.is_file() and f.name != "checkpoint.json"
    }
    assert not (folder_b / "model").exists()
    (ckpts / "step-6").mkdir()  # a later save torn by the crash: no checkpoint.json, must be ignored
    resume_and_compare(tiny_folder, lora, out_a, store_a, store_b, folder_b, rows, tok, [1, 2, 3, 4, 5])


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated-model": (lambda c: truncate(c / "model.safetensors"), "model.safetensors has"),
    "emptied-optimizer": (lambda c: (c / "optimizer.bin").write_bytes(b""), "optimizer.bin has 0 bytes"),
    "empty-mark": (lambda c: (c / "checkpoint.json").write_text(""), "checkpoint.json is unreadable"),
    "step-past-the-end": (
        lambda c: (c / "checkpoint.json").write_text(json.dumps({"step": 9999})),
        "checkpoint.json gives step 9999 for folder step-4",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_and_ends_as_an_uninterrupted_run(
    tiny_folder, tmp_path, damage, caplog
):
    out_a, store_a, store_b, folder_b, rows, tok = uninterrupted_and_crashed(tiny_folder, tmp_path, None)
    spoil, named = DAMAGES[damage]
    spoil(folder_b / "checkpoints" / "step-4")
    with caplog.at_level("WARNING"):
        resume_and_compare(tiny_folder, None, out_a, store_a, store_b, folder_b, rows, tok, [1, 2, 3, 4, 5])
    (warning,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert f"step-4 is damaged ({named}" in warning and "\n" not in warning


def test_a_checkpoint_past_the_loops_end_is_not_resumed_from(tmp_path):
    from feedlearn.data.checkpoints import Checkpoints

    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(2, lambda f: (f / "state.bin").write_bytes(b"two"))
    checkpoints.save(9999, lambda f: (f / "state.bin").write_bytes(b"late"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-9999"]
    assert checkpoints.latest(last_step=16) == (2, tmp_path / "step-2")
    assert checkpoints.latest() == (9999, tmp_path / "step-9999")


def test_gradient_accumulation_invariance(tiny_folder, tmp_path):
    common = dict(learning_rate=1e-3, lr_schedule="constant", warmup_ratio=0, epochs=1, max_grad_norm=1e9)
    weights = [12.18, 1.0, 0.082, 3.0]
    results, losses = [], []
    for name, bs, ga in [("big", 4, 1), ("accum", 1, 4)]:
        model, tok = load(tiny_folder)
        base = snapshot(model)
        rows = tokenize_sft(examples(4, weights), tok, 256)
        assert len({len(r["input_ids"]) for r in rows}) == 1  # equal lengths: no padding anywhere
        store = RunStore(tmp_path, name)
        settings = TrainSettings(batch_size=bs, grad_accum=ga, **common)
        train(model, tok, rows, sft(tok), settings, tmp_path / name, store=store)
        results.append({k: v - base[k] for k, v in snapshot(model).items()})
        [row] = metrics(store)
        assert row["step"] == 1
        losses.append(row["losses/loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    big, accum = results
    for k in big:
        # Adam's first update is about lr * sign(grad) = 1e-3 per entry; they agree to float noise
        assert big[k].abs().max() > 1e-4, k
        assert torch.allclose(big[k], accum[k], atol=1e-6, rtol=0), k


def test_gradient_accumulation_is_not_last_microbatch_only(tiny_folder, tmp_path):
    """Negative control for the invariance test: one micro-batch alone moves the weights differently."""
    common = dict(learning_rate=1e-3, lr_schedule="constant", warmup_ratio=0, epochs=1, max_grad_norm=1e9)
    deltas = []
    for name, n in [("all", 4), ("one", 1)]:
        model, tok = load(tiny_folder)
        base = snapshot(model)
        rows = tokenize_sft(examples(n), tok, 256)
        settings = TrainSettings(batch_size=n, grad_accum=1, **common)
        train(model, tok, rows, sft(tok), settings, tmp_path / name)
        deltas.append(torch.cat([(v - base[k]).flatten() for k, v in snapshot(model).items()]))
    assert not torch.allclose(deltas[0], deltas[1], atol=1e-6)


def test_each_epoch_visits_every_row_once_in_a_seeded_order(tiny_folder, tmp_path):
    _, tok = load(tiny_folder)
    rows = tokenize_sft(examples(8), tok, 256)
    index = {tuple(r["input_ids"]): i for i, r in enumerate(rows)}
    assert len(index) == 8

    def visits(seed: int, name: str) -> list[list[int]]:
        seen: list[int] = []

        def recording_loss(model, batch):
            seen.extend(index[tuple(ids)] for ids in batch["input_ids"].tolist())
            return sft_loss(model, batch)

        model, _ = load(tiny_folder)
        settings = TrainSettings(batch_size=2, grad_accum=2, epochs=3, learning_rate=1e-3)
        train(model, tok, rows, sft(tok, recording_loss), settings, tmp_path / name, seed=seed)
        return [seen[i : i + 8] for i in range(0, len(seen), 8)]

    epochs = visits(0, "a")
    assert len(epochs) == 3
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch
    assert visits(0, "b") == epochs
    assert visits(1, "c") != epochs


def test_fewer_rows_than_one_step(tiny_folder, tmp_path):
    model, tok = load(tiny_folder)
    rows = tokenize_sft(examples(3), tok, 256)
    settings = TrainSettings(batch_size=2, grad_accum=4, learning_rate=1e-3)
    try:
        out = train(model, tok, rows, sft(tok), settings, tmp_path)
    except FeedlearnError as e:  # a clear one-line refusal, and nothing half-written
        assert "\n" not in str(e)
        assert not (tmp_path / "model").exists()
        return
    assert (out / "done.json").exists()  # or training on what there is


def test_no_rows_is_a_clear_error(tiny_folder, tmp_path):
    # e.g. every example was dropped as longer than max_length
    model, tok = load(tiny_folder)
    with pytest.raises(FeedlearnError):
        train(model, tok, [], sft(tok), TrainSettings(batch_size=1, grad_accum=1), tmp_path)
    assert not (tmp_path / "model").exists()


# ---- LoRA -----------------------------------------------------------------------------------------------


def test_lora_trains_only_the_adapter_and_reloads(tiny_folder, tmp_path):
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    model, tok = load(tiny_folder, lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(any(m in n for m in ("q_proj", "v_proj")) for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, for q and v, in each of 2 layers
    assert frozen and not any("lora_" in n for n in frozen)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    rows = tokenize_sft(examples(8), tok, 256)
    settings = TrainSettings(
        learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0, epochs=2, batch_size=4, grad_accum=1
    )
    out = train(model, tok, rows, sft(tok), settings, tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "done.json", "tokenizer.json"} <= names
    assert "model.safetensors" not in names  # only the adapter is saved
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before)

    reloaded, tok2 = load_policy(ModelSettings(path=str(out)))
    assert tok2.eos_token == "<|end|>"
    base, _ = load_policy(ModelSettings(path=str(tiny_folder)))
    batch = collate(rows[:3], tok.pad_token_id)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        args = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        trained_logits = model(**args).logits
        assert torch.allclose(reloaded(**args).logits, trained_logits, atol=1e-5)
        assert not torch.allclose(base(**args).logits, trained_logits, atol=1e-3)  # the adapter did learn


def test_lora_init_does_not_depend_on_global_rng(tiny_folder):
    torch.manual_seed(1)
    a, _ = load(tiny_folder, LORA)
    torch.manual_seed(2)
    b, _ = load(tiny_folder, LORA)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for n in pa:
        assert torch.equal(pa[n], pb[n]), n


def test_epoch_steps_cover_every_row_once_and_group_lengths():
    from feedlearn.training.trainer import epoch_steps

    lengths = [(i * 37) % 300 + 5 for i in range(1000)]
    grouped = epoch_steps(lengths, per_step=8, seed=3, group_by_length=True)
    plain = epoch_steps(lengths, per_step=8, seed=3, group_by_length=False)
    for steps in (grouped, plain):
        flat = [i for step in steps for i in step]
        assert len(steps) == 125 and all(len(s) == 8 for s in steps)
        assert sorted(flat) == list(range(1000))
    assert grouped == epoch_steps(lengths, per_step=8, seed=3, group_by_length=True)  # seeded

    def padded(steps):  # tokens a right-padded batch holds
        return sum(8 * max(lengths[i] for i in s) for s in steps)

    assert padded(grouped) < 0.6 * padded(plain)


def test_gradient_checkpointing_gives_the_same_training(tiny_folder, tmp_path):
    """Recomputing activations in the backward pass changes memory, not the result: same loss, same
    update, and the model really ran checkpointed."""
    common = dict(learning_rate=1e-3, lr_schedule="constant", warmup_ratio=0, epochs=1, max_grad_norm=1e9)
    results, losses = [], []
    for name, checkpointing in [("plain", False), ("checkpointed", True)]:
        model, tok = load(tiny_folder)
        base = snapshot(model)
        rows = tokenize_sft(examples(4), tok, 256)
        store = RunStore(tmp_path, name)
        settings = TrainSettings(batch_size=4, grad_accum=1, gradient_checkpointing=checkpointing, **common)
        train(model, tok, rows, sft(tok), settings, tmp_path / name, store=store)
        assert model.is_gradient_checkpointing == checkpointing
        results.append({k: v - base[k] for k, v in snapshot(model).items()})
        losses.append(metrics(store)[0]["losses/loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for k in results[0]:
        assert results[0][k].abs().max() > 1e-4, k
        assert torch.allclose(results[0][k], results[1][k], atol=1e-7, rtol=0), k


def test_bf16_mixed_precision_trains_on_cpu_and_fp16_needs_a_gpu(tiny_folder, tmp_path):
    model, tok = load(tiny_folder)
    base = snapshot(model)
    rows = tokenize_sft(examples(4), tok, 256)
    settings = TrainSettings(
        batch_size=4,
        grad_accum=1,
        mixed_precision="bf16",
        learning_rate=1e-3,
        warmup_ratio=0,
        lr_schedule="constant",
    )
    train(model, tok, rows, sft(tok), settings, tmp_path / "bf16", store=RunStore(tmp_path, "bf16"))
    assert any(not torch.equal(v, base[k]) for k, v in snapshot(model).items())
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay in float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
            TrainSettings(mixed_precision="fp16")


def test_tiny_models_built_at_once_by_two_processes_are_whole(tmp_path):
    """Processes of one run build the same tiny model at once (a fresh cache): each gets a whole folder
    and no half-built one is left; a folder left by a build that crashed midway is rebuilt."""
    from concurrent.futures import ProcessPoolExecutor

    config = TinyModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, vocab_size=300)
    texts = ["one two three", "four five six"]
    with ProcessPoolExecutor(2) as pool:
        folders = list(pool.map(build_tiny_model, [config] * 2, [texts] * 2, [0, 0], [tmp_path] * 2))
    assert folders[0] == folders[1] and (folders[0] / "done").exists()
    assert [p.name for p in tmp_path.iterdir()] == [folders[0].name]  # no build left beside it
    AutoModelForCausalLM.from_pretrained(folders[0])
    (folders[0] / "done").unlink()  # as a build that crashed before its last file
    (folders[0] / "model.safetensors").unlink()
    assert (build_tiny_model(config, texts, 0, tmp_path) / "model.safetensors").exists()
