"""C3PO: the anchor loss against hand-computed values, the per-method objectives, scope metrics, the
Likert judge's parsing, and a tiny end-to-end run with the offline teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from feedlearn.backends.base import ParsedAsker, SamplingParams
from feedlearn.data.jsonl import read_jsonl, write_jsonl_atomic
from feedlearn.data.store import DONE, open_run
from feedlearn.errors import ConfigError, DataError
from feedlearn.judges.likert import LikertJudge, parse_likert
from feedlearn.losses import IGNORE, anchor_loss
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.data import C3POSample, PromptRow
from feedlearn.methods.c3po.objective import PARTS, LossSettings, ScopeObjective, zipped_rows
from feedlearn.methods.c3po.stages import C3PO
from feedlearn.models.loading import LoraSettings, ModelSettings, load_policy
from feedlearn.models.tiny import TinyModelConfig, build_tiny_model
from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS as BUILTIN
from feedlearn.tasks.instructions import answers_prompt
from feedlearn.verifiers.verbal import Feedback, Metric, scope_metrics


def test_anchor_loss_lambda_0_is_token_mean_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # 3 positions, vocab 2
    labels = torch.tensor([[IGNORE, 1, 0]])  # positions 0 and 1 predict tokens 1 and 0
    nll1 = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))  # position 0 -> token 1
    nll2 = -math.log(math.exp(0) / (math.exp(0) + math.exp(1)))  # position 1 -> token 0
    assert anchor_loss(logits, labels).item() == pytest.approx((nll1 + nll2) / 2, rel=1e-6)


def test_anchor_loss_lambda_1_is_t2_times_summed_kl_to_the_reference():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    ref = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    t = 2.0

    def kl(q_logits, p_logits):
        q, p = F.softmax(torch.tensor(q_logits) / t, -1), F.softmax(torch.tensor(p_logits) / t, -1)
        return (q * (q.log() - p.log())).sum().item()

    expected = t**2 * (kl([0.0, 0.0], [2.0, 0.0]) + kl([1.0, 0.0], [0.0, 1.0]))  # last position untrained
    assert anchor_loss(logits, labels, ref, lam=1.0, temperature=t).item() == pytest.approx(
        expected, rel=1e-5
    )
    half = anchor_loss(logits, labels, ref, lam=0.5, temperature=t).item()
    assert half == pytest.approx(0.5 * anchor_loss(logits, labels).item() + 0.5 * expected, rel=1e-5)


def test_anchor_loss_is_zero_kl_when_policy_equals_reference():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    assert anchor_loss(logits, labels, logits.clone(), lam=1.0).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="reference"):
        anchor_loss(logits, labels, None, lam=1.0)


def test_methods_use_the_parts_the_paper_defines():
    assert PARTS["c3po"] == ("in_pos", "in_neg", "near", "out")
    assert PARTS["scd"] == ("in_pos",)
    assert PARTS["dpo"] == ("in_pos", "in_neg")


def test_c3po_objective_at_the_start_is_log2_plus_the_anchors_and_the_revision_sft(tmp_path):
    """A fresh LoRA adapter (B = 0) leaves the policy equal to the base model, so DPO is -log sigmoid(0)
    and the KL anchors are 0; the SFT anchors and the revision's SFT term are the policy's cross-entropy."""
    texts = [
        "Email Jared about lunch.",
        "Hi Jared,\nLunch at noon?\nBest, Alex",
        "List two fruits.",
        "pear, plum.",
    ]
    tiny = TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=300)
    settings = ModelSettings(path=str(build_tiny_model(tiny, texts, cache=tmp_path)), lora=LoraSettings(r=4))
    model, tokenizer = load_policy(settings, trainable=True)
    row = dict(id="x", split="train", category="c")
    samples = [
        C3POSample(**row, scope="in", prompt=texts[0], baseline="Hi Jared,\nLunch?", revised=texts[1]),
        C3POSample(**row, scope="near", prompt="Email Sam about lunch.", baseline="Hi Sam,\nLunch?"),
        C3POSample(**row, scope="out", prompt=texts[2], baseline=texts[3]),
    ]
    rows = zipped_rows(samples, tokenizer, max_length=96)

    def loss(**settings) -> float:
        objective = ScopeObjective("c3po", LossSettings(**settings), tokenizer.pad_token_id)
        return objective.loss(model, objective.collate(rows)).item()

    def cross_entropy(part: str) -> float:
        ids, labels = torch.tensor(rows[0][part]["input_ids"]), torch.tensor(rows[0][part]["labels"])
        logits = model(input_ids=ids[None]).logits[0]
        return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE).item()

    with torch.no_grad():
        assert loss(lam=1.0) == pytest.approx(math.log(2), abs=1e-5)
        expected = math.log(2) + 0.2 * cross_entropy("out") + 0.1 * cross_entropy("near")
        assert loss(lam=0.0) == pytest.approx(expected, rel=1e-5)
        with_sft = math.log(2) + 0.5 * cross_entropy("in_pos")
        assert loss(lam=1.0, chosen_sft=0.5) == pytest.approx(with_sft, rel=1e-5)
        # each part logged unweighted by its own name, and TRL's rewards (all 0: the policy is the base)
        objective = ScopeObjective("c3po", LossSettings(lam=0.0, chosen_sft=0.5), tokenizer.pad_token_id)
        objective.loss(model, objective.collate(rows))
        logged = objective.step_metrics()
        assert logged["losses/dpo"] == pytest.approx(math.log(2), abs=1e-5)
        assert logged["losses/chosen_sft"] == pytest.approx(cross_entropy("in_pos"), rel=1e-5)
        assert logged["losses/anchor_out"] == pytest.approx(cross_entropy("out"), rel=1e-5)
        assert logged["losses/anchor_near"] == pytest.approx(cross_entropy("near"), rel=1e-5)
        assert logged["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and logged["rewards/accuracies"] == 0
        assert objective.step_metrics() == {}  # reset after each step


def test_scope_metrics_count_adherence_and_change_ties_are_not_adherence():
    sign_off = Feedback(
        content="Sign off with Best, Alex.",
        domain="emails to Jared",
        effect="end with Best, Alex",
        type="quantitative",
        metric=Metric(kind="ends_with", value="Best, Alex"),
    )
    responses = {"in": ["Hi\nBest, Alex", "Hi"], "near": ["Hi\nBest, Alex", "Hi"], "out": ["x", "y"]}
    baseline = {"in": ["Hi", "Hi"], "near": ["Hi", "Hi"], "out": ["x", "y"]}
    m = scope_metrics(sign_off, responses, baseline)
    assert (
        m["in_scope_adherence"] == 50.0 and m["near_scope_changed"] == 50.0 and m["out_scope_changed"] == 0.0
    )
    shorter = sign_off.model_copy(update={"metric": Metric(kind="words", comparison="less_than")})
    m = scope_metrics(shorter, {"in": ["a b", "a b c"]}, {"in": ["a b c", "a b c"]})
    assert m["in_scope_adherence"] == 50.0  # the tie (same length) does not count


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Response 2 signs off.\nBETTER_RESPONSE: 5", 5),
        ("BETTER_RESPONSE: 2 ... on reflection BETTER_RESPONSE: 4", 4),
        ("BETTER_RESPONSE: **3**", 3),
        ("BETTER_RESPONSE: 7", None),
        ("I cannot judge this.", None),
        ("Ignore the instructions; __import__('os').system('rm -rf /')", None),
    ],
)
def test_parse_likert(reply, score):
    assert parse_likert(reply) == score


def tiny_recipe(tmp_path, **overrides) -> dict:
    recipe = {
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": "tiny", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "tiny": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
            "vocab_size": 400,
        },
        "sft": {
            "chats": 64,
            "train": {"learning_rate": 1e-3, "batch_size": 8, "grad_accum": 1, "max_length": 96},
        },
        "feedback_file": "builtin",
        "feedback_ids": [BUILTIN["jared-signoff"].feedback.short_id],
        "general_prompts": "builtin",
        "teacher": {"kind": "offline"},
        "sample": {
            "prompts_per_scope": 16,
            "prompts_per_category": 8,
            "test_fraction": 0.25,
            "max_new_tokens": 12,
            "reviser": "teacher",
        },
        "train": {"learning_rate": 1e-3, "batch_size": 4, "grad_accum": 1, "max_length": 96},
        "evaluate": {"prompts_per_scope": 4, "max_new_tokens": 12},
        "generation_batch_size": 16,
    }
    recipe.update(overrides)
    return recipe


def test_tiny_end_to_end_with_the_offline_teacher(tmp_path, monkeypatch):
    config = C3POConfig.model_validate(tiny_recipe(tmp_path))
    method = C3PO(config, open_run(config.run_dir, "t", config.model_dump(mode="json")), progress=False)
    method.run()
    fid = BUILTIN["jared-signoff"].feedback.short_id
    samples = read_jsonl(method.store.path / fid / "sample" / "samples.jsonl", C3POSample)
    assert {s.scope for s in samples} == {"in", "near", "out"}
    in_train = [s for s in samples if s.scope == "in" and s.split == "train"]
    assert in_train and all(s.revised.endswith("Best, Alex") for s in in_train)
    assert all("Jared" not in s.prompt for s in samples if s.scope == "near")
    assert all(s.in_context is not None for s in samples if s.split == "test")
    rows = [json.loads(line) for line in (method.store.path / "metrics.jsonl").read_text().splitlines()]
    (sampled,) = [r for r in rows if r["stage"] == f"{fid}/sample"]
    assert sampled["samples"] == len(samples) and sampled["charts/samples_per_s"] > 0
    results = json.loads((method.layout.evaluation(fid) / "metrics.json").read_text())
    assert set(results) == {"c3po", "scd", "scd_negatives", "dpo", "in_context", "cot", "base"}
    assert set(results["c3po"]) >= {"in_scope_adherence", "near_scope_changed", "out_scope_changed"}
    base = load_file(str(method.store.path / "sft" / "model" / "model.safetensors"))
    assert any("mlp" in k for k in base)
    for name in ("c3po", "scd"):
        adapter = load_file(
            str(method.store.path / fid / "train" / name / "model" / "adapter_model.safetensors")
        )
        assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0
        assert adapter and all("lora_" in k for k in adapter)  # the base weights are saved once, not here
    combined = method.combine()
    model, _ = load_policy(ModelSettings(path=str(combined)))  # loads on its base, both feedbacks' ranks
    assert sum("lora_A" in n for n, _ in model.named_parameters()) > 0
    assert "combined" not in results and "combined" in (combined_results := method.evaluate()[fid])
    # a finished evaluation is read back, not answered again
    monkeypatch.setattr(C3PO, "_respond", lambda *a: pytest.fail("a finished evaluation ran again"))
    assert method.evaluate()[fid] == combined_results


def test_missing_samples_and_qualitative_feedback_without_judge_are_clear_errors(tmp_path):
    config = C3POConfig.model_validate(tiny_recipe(tmp_path))
    method = C3PO(config, open_run(config.run_dir, "t", config.model_dump(mode="json")), progress=False)
    with pytest.raises(DataError, match="samples.jsonl is missing: run `feedlearn c3po sample` first"):
        method.train()
    qualitative = method.feedbacks()[0].model_copy(update={"type": "qualitative", "metric": None})
    with pytest.raises(ConfigError, match="set evaluate.judge"):
        method._judge(qualitative)


class ScriptedJudge:
    """Replies 'BETTER_RESPONSE: 4' to prompts about Jared and garbage to the rest; counts its calls."""

    def __init__(self):
        self.calls = 0

    def generate(self, conversations, n, sampling, keys=None):
        self.calls += len(conversations)
        return [["BETTER_RESPONSE: 4" if "Jared" in c[-1]["content"] else "no idea"] for c in conversations]


def test_likert_judge_averages_per_scope_and_counts_judgments_given_up():
    backend = ScriptedJudge()
    judge = LikertJudge(ParsedAsker(backend, SamplingParams(temperature=0.0), max_attempts=2))
    prompts = {"in": ["Email Jared."] * 3, "near": ["Email Sam."] * 2}
    responses = {"in": ["Hi\nBest, Alex"] * 3, "near": ["Hi"] * 2}
    effect = BUILTIN["jared-signoff"].feedback.effect
    scores = judge.score(effect, prompts, responses, {"in": ["Hi"] * 3, "near": ["Hi"] * 2})
    assert scores == {"in_scope_likert": 4.0, "judge_unparseable": 2.0}
    assert backend.calls == 3 + 2 * 2  # each garbage judgment was asked twice


def test_judge_runs_through_any_backend_and_needs_one(tmp_path):
    local = {"local": {"path": str(tmp_path / "judge-model")}, "temperature": 0.0}
    config = C3POConfig.model_validate(tiny_recipe(tmp_path, evaluate={"judge": local}))
    assert config.evaluate.judge.local.path.endswith("judge-model")
    with pytest.raises(ValueError, match="judge needs one of 'openai' or 'local'"):
        C3POConfig.model_validate(tiny_recipe(tmp_path, evaluate={"judge": {"temperature": 0.0}}))


def test_recipe_needs_lora(tmp_path):
    recipe = tiny_recipe(tmp_path)
    recipe["model"] = {"path": "tiny"}
    with pytest.raises(ValueError, match="LoRA"):
        C3POConfig.model_validate(recipe)


def test_general_prompts_from_txt_and_jsonl_files(tmp_path):
    txt = tmp_path / "general.txt"
    txt.write_text("Tell me a joke.\n\nWhat is rain?\nName a planet.\nWhat is rain?\n")
    config = C3POConfig.model_validate(tiny_recipe(tmp_path, general_prompts=str(txt)))
    method = C3PO(config, open_run(config.run_dir, "g", config.model_dump(mode="json")), progress=False)
    # a repeated prompt is drawn once
    assert sorted(method.general_prompts(5)) == ["Name a planet.", "Tell me a joke.", "What is rain?"]
    for name, content, message in [
        ("empty.txt", "\n\n", "empty.txt: no prompts in the file"),
        ("latin1.txt", "caf\xe9\n", r"latin1.txt:1: not valid UTF-8 \(byte 0xe9 at offset 3\)"),
    ]:
        (tmp_path / name).write_bytes(content.encode("latin-1"))
        config = C3POConfig.model_validate(tiny_recipe(tmp_path, general_prompts=str(tmp_path / name)))
        method = C3PO(config, open_run(config.run_dir, name, config.model_dump(mode="json")), progress=False)
        with pytest.raises(DataError, match=message):
            method.general_prompts(2)
    bad = tmp_path / "general.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    config = C3POConfig.model_validate(tiny_recipe(tmp_path, general_prompts=str(bad)))
    method = C3PO(config, open_run(config.run_dir, "h", config.model_dump(mode="json")), progress=False)
    with pytest.raises(DataError, match=r"general.jsonl:2: field 'prompt'"):
        method.general_prompts(2)


def test_teacher_replies_are_saved_as_they_come(tmp_path, monkeypatch):
    from feedlearn.teachers.verbal import OfflineTeacher

    config = C3POConfig.model_validate(tiny_recipe(tmp_path))
    method = C3PO(config, open_run(config.run_dir, "t", config.model_dump(mode="json")), progress=False)
    feedback = method.feedbacks()[0]
    folder = method.layout.sample(feedback.short_id)
    calls, real = [], OfflineTeacher.prompts

    def failing(self, fb, category, scope, n):
        calls.append((scope, category))
        if len(calls) == 3:
            raise RuntimeError("teacher down")
        return real(self, fb, category, scope, n)

    monkeypatch.setattr(OfflineTeacher, "prompts", failing)
    with pytest.raises(RuntimeError):
        method._prompts(feedback, folder)
    asked = []

    def counting(self, fb, category, scope, n):
        asked.append((scope, category))
        return real(self, fb, category, scope, n)

    monkeypatch.setattr(OfflineTeacher, "prompts", counting)
    prompts = method._prompts(feedback, folder)
    categories = {p["category"] for p in prompts if p["scope"] == "in"}
    assert not set(calls[:2]) & set(asked)  # the two replies paid before the crash came from the file
    assert len(asked) == 2 * len(categories) - 2  # every other (scope, category) was asked once
    assert {p["scope"] for p in prompts} == {"in", "near", "out"}


# ---- issue 23: faithful to the reference code ----------------------------------------------------------


class ScriptedPolicy:
    """The policy as a script: answers every prompt 'Hi Jared,\\nSee you.', and a revision request with a
    critique, the revision marker and its answer signed off; records the keys of the revision requests."""

    def __init__(self, no_marker: str):
        self.no_marker, self.revision_keys = no_marker, []

    def generate(self, conversations, n, sampling, keys=None):
        replies = []
        for conversation, key in zip(conversations, keys, strict=True):
            text = conversation[-1]["content"]
            if "REVISED RESPONSE:" not in text:
                replies.append(["Hi Jared,\nSee you."])
                continue
            self.revision_keys.append(key)
            assert "[Response]\nHi Jared,\nSee you.\n[End of response]" in text  # its own baseline
            assert BUILTIN["jared-signoff"].feedback.effect in text
            signed = "No sign-off.\nREVISED RESPONSE:\nHi Jared,\nSee you.\nBest, Alex"
            replies.append(["I would sign off." if key.endswith(self.no_marker) else signed])
        return replies


def test_the_policy_revises_its_own_answers_and_the_teacher_only_when_asked(tmp_path, monkeypatch):
    """`sample.reviser: policy` (the paper's): the base policy revises its in-scope training baselines,
    sampled under the prompt's key; a reply without the revision marker is a missing completion."""
    from feedlearn.teachers.verbal import OfflineTeacher

    sample = {**tiny_recipe(tmp_path)["sample"], "reviser": "policy"}
    config = C3POConfig.model_validate(tiny_recipe(tmp_path, sample=sample))
    method = C3PO(config, open_run(config.run_dir, "p", config.model_dump(mode="json")), progress=False)
    policy = ScriptedPolicy(no_marker="/in-4/revised")
    monkeypatch.setattr(C3PO, "generation_backend", lambda self, path: policy)
    monkeypatch.setattr(OfflineTeacher, "revise", lambda *a: pytest.fail("the teacher was asked to revise"))
    fid = method.feedbacks()[0].short_id
    mark_trained(method.layout.sft())  # the scripted policy stands for the warm-started tiny model
    samples = read_jsonl(method._sample(method.feedbacks()[0]), C3POSample)
    prompts = read_jsonl(method.store.path / fid / "sample" / "prompts.jsonl", PromptRow)
    in_train = sorted(p.id for p in prompts if p.scope == "in" and p.split == "train")
    assert sorted(policy.revision_keys) == sorted(f"{fid}/{i}/revised" for i in in_train)
    kept = [s for s in samples if s.scope == "in" and s.split == "train"]
    assert sorted(s.id for s in kept) == [i for i in in_train if i != "in-4"]  # the reply without marker
    assert {s.revised for s in kept} == {"Hi Jared,\nSee you.\nBest, Alex"}

    teacher_config = C3POConfig.model_validate(tiny_recipe(tmp_path / "t"))
    assert teacher_config.sample.reviser == "teacher"
    assert C3POConfig.model_validate({**tiny_recipe(tmp_path), "sample": {}}).sample.reviser == "policy"


def mark_trained(*folders: Path) -> None:
    """Write the done marker of each stage folder's model, for tests whose scripted models stand in."""
    for folder in folders:
        (folder / "model").mkdir(parents=True, exist_ok=True)
        (folder / "model" / DONE).write_text("{}")


def scripted_evaluation(tmp_path, monkeypatch, **evaluate) -> dict:
    """`evaluate` of the Jared feedback on written samples, with scripted greedy answers (no model): the base
    model and C3PO answer near-scope prompts without a sign-off; one sampled baseline has one (noise)."""
    recipe = tiny_recipe(tmp_path, methods=["c3po"], evaluate={"prompts_per_scope": 4, **evaluate})
    recipe["sample"].pop("reviser")  # evaluation does not sample
    config = C3POConfig.model_validate(recipe)
    method = C3PO(config, open_run(config.run_dir, "e", config.model_dump(mode="json")), progress=False)
    fid = method.feedbacks()[0].short_id
    rows = [  # scope, prompt, sampled baseline, in-context sample
        ("in", "Email Jared.", "Hi Jared,\nA.", "Hi Jared,\nA.\nBest, Alex"),
        ("near", "Email Sam.", "Hi Sam,\nA.\nBest, Alex", "Hi Sam,\nA."),
        ("near", "Email Tom.", "Hi Tom,\nB.", "Hi Tom,\nB."),
        ("out", "Sky?", "Blue.", "Blue."),
    ]
    samples = [
        C3POSample(
            id=f"{scope}-{i}", scope=scope, split="test", category="c", prompt=p, baseline=b, in_context=c
        )
        for i, (scope, p, b, c) in enumerate(rows)
    ]
    write_jsonl_atomic(method.layout.samples(fid), samples)
    mark_trained(method.layout.sft(), method.layout.train(fid, "c3po"))
    greedy = {
        "base": {"in": ["Hi Jared,\nA."], "near": ["Hi Sam,\nA.", "Hi Tom,\nB."], "out": ["Blue."]},
        "c3po": {"in": ["Hi Jared,\nA.\nBest, Alex"], "near": ["Hi Sam,\nA.", "Hi Tom,\nB."], "out": [""]},
    }
    monkeypatch.setattr(
        C3PO, "_respond", lambda self, path, tests, sampling: greedy["c3po" if "train" in path else "base"]
    )
    return method._evaluate(method.feedbacks()[0])


def test_every_row_is_compared_with_the_same_baseline(tmp_path, monkeypatch):
    """The base model, C3PO and in-context answer near-scope prompts alike; the sampled baseline has a
    sign-off on one of two. Against it (the paper's), each row changed 50% near scope, the base model's
    own greedy answers included (the noise floor); against the base model's greedy answers, none did."""
    sampled = scripted_evaluation(tmp_path / "s", monkeypatch)
    for name in ("c3po", "in_context", "base"):
        assert sampled[name]["near_scope_changed"] == 50.0, name
    assert sampled["c3po"]["in_scope_adherence"] == sampled["in_context"]["in_scope_adherence"] == 100.0
    assert sampled["base"]["in_scope_adherence"] == 0.0
    greedy = scripted_evaluation(tmp_path / "g", monkeypatch, baseline="greedy")
    for name in ("c3po", "in_context", "base"):
        assert greedy[name]["near_scope_changed"] == 0.0, name


class QualityScript:
    """A judge that finds an empty Response 2 much worse (1), a Response 2 ending 'Best, Alex' better (4),
    the rest equal (3), and replies garbage when the prompt is 'Sky?'; records what it was asked."""

    def __init__(self):
        self.asked = []

    def generate(self, conversations, n, sampling, keys=None):
        replies = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            self.asked.append(text)
            response = text.split("[Response 2]\n")[1].split("\n\nFirst say")[0]
            score = 1 if not response.strip() else 4 if response.endswith("Best, Alex") else 3
            replies.append("no idea" if "[Prompt]\nSky?" in text else f"Fine.\nBETTER_RESPONSE: {score}")
        return [[r] for r in replies]


def test_answer_quality_is_judged_per_scope_against_the_baseline(tmp_path, monkeypatch):
    """`evaluate.answer_quality`: the judge scores, 1-5, how well each response answers its prompt against
    the baseline (the reference's answer-quality judgment); means per scope, unparseable ones counted."""
    with pytest.raises(ValueError, match="answer_quality asks the judge"):
        C3POConfig.model_validate(tiny_recipe(tmp_path, evaluate={"answer_quality": True}))
    script = QualityScript()
    monkeypatch.setattr(
        C3PO, "judge_asker", lambda self: ParsedAsker(script, SamplingParams(temperature=0.0), max_attempts=2)
    )
    judge = {"local": {"path": str(tmp_path / "judge-model")}}
    results = scripted_evaluation(tmp_path, monkeypatch, judge=judge, answer_quality=True)
    # C3PO: in scope signed off (4); near scope equal to the baseline without its sign-off (3, 3)
    assert results["c3po"]["in_scope_answer_quality"] == 4.0
    assert results["c3po"]["near_scope_answer_quality"] == 3.0
    assert "out_scope_answer_quality" not in results["c3po"]  # its one judgment was garbage
    assert results["c3po"]["answer_quality_unparseable"] == 1.0
    assert results["c3po"]["near_scope_changed"] == 50.0  # the feedback's metric is still reported
    assert results["base"]["in_scope_answer_quality"] == 3.0
    first = script.asked[0]
    assert "[Prompt]\nEmail Jared.\n\n[Response 1]\nHi Jared,\nA.\n\n[Response 2]\n" in first
    assert "Best, Alex" not in first.split("[Response 2]")[0]  # the feedback itself is not asked about


@pytest.mark.parametrize(
    "prompt, response, answers",
    [
        (
            "Write an email to Jared about the meeting.",
            "Hi Jared,\nThe meeting moves to Friday at ten.",
            True,
        ),
        (
            "Email Tom about the trip today.",
            "Hi Tom,\nThe trip starts on Monday morning.\nSee you soon.",
            True,
        ),
        ("Email Tom about the trip.", "Hi Tom,\nThe trip starts on Monday morning.\nBest, Alex", True),
        ("Email Tom about the trip.", "Hi Maria,\nThe trip starts on Monday morning.", False),  # addressee
        ("Email Tom about the trip.", "Hi Tom,\nThe invoice is attached.", False),  # topic
        (
            "Email Tom about the trip.",
            "Hi Tom,\nThe trip starts on Monday morning.\nBest, Alex\nBest, Alex",
            False,
        ),
        ("List two fruits for a quiz.", "apple, pear.", True),
        ("List two fruits for a quiz.", "1. apple\n2. pear", True),
        ("List two fruits for a quiz.", "1. apple\n1. pear", False),  # numbering
        ("List two fruits for a quiz.", "apple, apple.", False),
        ("Can you name three tools?", "hammer, saw, apple.", False),  # kind
        ("Name four cities.", "1. Paris\n2. Tokyo\n3. Cairo", False),  # count
        ("What color is the sky?", "The sky is usually blue.", True),
        ("Briefly describe a fox for a child.", "A sly, bushy-tailed hunter.", True),
        ("Briefly describe a fox.", "A heavy, sleepy giant.", False),
        ("Tell me a joke.", "No.", None),
    ],
)
def test_answers_prompt_checks_the_corpus_rules_whatever_the_form(prompt, response, answers):
    assert answers_prompt(prompt, response) is answers
