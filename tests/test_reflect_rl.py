"""Reflect-RL: the policy's prompt and label shuffling, the choices-only head, a tiny SFT + RL run."""

from __future__ import annotations

import json

import pytest
import torch

from feedlearn.data.store import open_run
from feedlearn.envs.text_env import TextObservation
from feedlearn.errors import FeedlearnError
from feedlearn.methods.reflect_rl.config import ReflectRLConfig
from feedlearn.methods.reflect_rl.objective import ChoiceObjective, label_ids
from feedlearn.methods.reflect_rl.rollout import Player, policy_prompt
from feedlearn.methods.reflect_rl.stages import ReflectRL


def test_policy_prompt_shows_the_analysis_and_the_choices_in_the_shuffled_order():
    obs = TextObservation("grid", ["south", "north", "east"])
    text = policy_prompt(obs, "Go north.", [2, 0, 1])
    assert text == "grid\n# Analyze:\nGo north.\n1. east\n2. south\n3. north\n# Action:"
    assert policy_prompt(obs, None, [0, 1, 2]) == "grid\n1. south\n2. north\n3. east\n# Action:"


def recipe(tmp_path, **overrides) -> ReflectRLConfig:
    config = {
        "run_dir": str(tmp_path / "runs"),
        "model": {"path": "tiny"},
        "tiny": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
            "vocab_size": 400,
        },
        "env": {"name": "taxi", "level": "dropoff", "max_steps": 15},
        "teacher": {"episodes": 6, "negatives": 2},
        "sft": {"learning_rate": 3e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "max_length": 384},
        "rl": {"iterations": 2, "episodes_per_iteration": 3, "learning_rate": 1e-2},
        "evaluate": {"episodes": 3},
        "max_reflection_tokens": 8,
    }
    config.update(overrides)
    return ReflectRLConfig.model_validate(config)


def test_labels_are_single_tokens_and_the_head_is_a_softmax_over_offered_choices(tmp_path):
    method = ReflectRL(recipe(tmp_path), open_run(tmp_path / "runs", "t", {}), progress=False)
    from feedlearn.models.loading import ModelSettings, load_policy

    model, tok = load_policy(ModelSettings(path=method.base_model_path()))
    ids = label_ids(tok, 12)
    assert [tok.decode([i]) for i in ids.tolist()] == [*"123456789", "a", "b", "c"]
    objective = ChoiceObjective(tok)
    rows = [
        {"input_ids": tok.encode("grid\n1. a\n2. b"), "n": 2, "label": 1},
        {"input_ids": tok.encode("grid"), "n": 6, "label": 5},
    ]
    logps = objective.logprobs(model, objective.collate(rows))
    assert torch.exp(logps).sum(-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert torch.isinf(logps[0, 2:]).all()  # only two choices were offered
    with pytest.raises(FeedlearnError, match="at most 35"):
        label_ids(tok, 36)


@pytest.mark.parametrize("reflection, shuffle", [(True, True), (False, False)])
def test_tiny_sft_then_rl_runs_and_changes_the_policy(tmp_path, capsys, reflection, shuffle):
    config = recipe(tmp_path, reflection=reflection, shuffle_labels=shuffle)
    method = ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)
    method.run()
    after_sft = method.evaluate("sft")
    after_rl = method.evaluate("rl")
    diagnoses = {"without_reflection", "reflection_names_best_move", "policy_follows_reflection"}
    assert set(after_sft) == {"success", "cost", "episodes", "sampled"} | (diagnoses if reflection else set())
    logged = [
        json.loads(line)
        for line in (method.store.path / "evaluate" / "sft" / "episodes.jsonl").read_text().splitlines()
    ]
    shown = [e for e in logged if not e["id"].startswith(("without-reflection-", "sampled-"))]
    assert after_sft["success"] == pytest.approx(100 * sum(e["success"] for e in shown) / len(shown))
    sampled = [e for e in logged if e["id"].startswith("sampled-")]  # the reference's sampled evaluation
    assert len(sampled) == after_sft["sampled"]["episodes"] == 3
    assert after_sft["sampled"]["success"] == pytest.approx(100 * sum(e["success"] for e in sampled) / 3)
    if reflection:  # a share of the evaluated steps: a whole number of them
        steps = sum(len(e["actions"]) for e in shown)
        for name in ("reflection_names_best_move", "policy_follows_reflection"):
            count = after_sft[name] * steps / 100
            assert count == pytest.approx(round(count), abs=0.01), name
    assert after_rl["episodes"] == 3
    from safetensors.torch import load_file

    sft = load_file(str(method.store.path / "sft" / "policy" / "model" / "model.safetensors"))
    rl = load_file(str(method.store.path / "rl" / "model" / "model.safetensors"))
    assert any(not torch.equal(sft[k], rl[k]) for k in rl)  # the policy-gradient steps moved the weights
    episodes = [
        json.loads(line) for line in (method.store.path / "rl" / "episodes.jsonl").read_text().splitlines()
    ]
    assert len(episodes) == 2 * 3
    assert all(len(e["actions"]) == len(e["reflections"]) for e in episodes)
    if not reflection:
        assert all(r == "" for e in episodes for r in e["reflections"])
    assert (method.store.path / "sft" / "reflector").exists() == reflection
    from feedlearn import cli

    capsys.readouterr()
    assert cli.main(["report", str(method.store.path)]) == 0
    table = capsys.readouterr().out
    assert "sft" in table and "rl" in table and "success" in table
    assert ("without_reflection/success" in table) == reflection


class Crash(Exception):
    pass


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_rl_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch, algorithm):
    from safetensors.torch import load_file

    overrides = {
        "rl": {
            "algorithm": algorithm,
            "iterations": 4,
            "episodes_per_iteration": 3,
            "learning_rate": 1e-2,
            "checkpoint_every": 2,
        }
    }
    whole = ReflectRL(recipe(tmp_path / "a", **overrides), open_run(tmp_path / "a", "r", {}), progress=False)
    whole.sft()
    whole.rl()

    calls, real = 0, Player.play

    def crashing(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:  # iteration 3; the checkpoint is at iteration 2
            raise Crash
        return real(self, *args, **kwargs)

    broken = ReflectRL(recipe(tmp_path / "b", **overrides), open_run(tmp_path / "b", "r", {}), progress=False)
    broken.sft()
    monkeypatch.setattr(Player, "play", crashing)
    with pytest.raises(Crash):
        broken.rl()
    assert [p.name for p in (broken.store.path / "rl" / "checkpoints").iterdir()] == ["step-2"]
    calls = -10  # the resumed run plays iterations 3 and 4 only
    broken.rl()
    assert calls == -8
    a = load_file(str(whole.store.path / "rl" / "model" / "model.safetensors"))
    b = load_file(str(broken.store.path / "rl" / "model" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert not (broken.store.path / "rl" / "checkpoints").exists()
    if algorithm == "ppo":
        critics = [
            torch.load(m.store.path / "rl" / "model" / "critic.pt", weights_only=True)
            for m in (whole, broken)
        ]
        assert all(torch.allclose(critics[0][k], critics[1][k], atol=1e-6) for k in critics[0])
    ids = [
        json.loads(line)["id"]
        for line in (broken.store.path / "rl" / "episodes.jsonl").read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 4 * 3  # iteration 3 was logged once
    rows = [json.loads(line) for line in (whole.store.path / "metrics.jsonl").read_text().splitlines()]
    iterations = [r for r in rows if r["stage"] == "rl" and r["step"] is not None]
    names = {"losses/loss", "losses/entropy", "charts/episodic_return", "charts/SPS"}
    if algorithm == "ppo":  # CleanRL's names
        names |= {"losses/approx_kl", "losses/clipfrac", "losses/value_loss", "losses/explained_variance"}
    assert len(iterations) == 4 and all(names <= set(r) for r in iterations)
    assert all(0 <= r.get("losses/clipfrac", 0) <= 1 and r["losses/entropy"] >= 0 for r in iterations)
    assert all(r["charts/SPS"] > 0 for r in iterations)


def test_paper_shaped_run_gpt2_architecture_lora_ppo_and_the_recipes_chat_template(tmp_path):
    """The GPT-2 XL recipes' shape on a 1-layer GPT-2: LoRA adapters, their plain-text chat template, PPO."""
    import yaml
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from feedlearn.cli import load_method

    paper, _ = load_method("recipes/reflect-rl/gpt2xl_taxi.yaml", [])
    tiny_dir = ReflectRL(
        recipe(tmp_path / "t"), open_run(tmp_path / "t", "r", {}), progress=False
    ).base_model_path()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=1024)
    ).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)
    model = {
        "path": str(gpt2),
        "lora": {"r": 4, "alpha": 16, "dropout": 0.1},
        "chat_template": paper.model.chat_template,
    }
    config = recipe(
        tmp_path,
        model=model,
        rl={"algorithm": "ppo", "iterations": 2, "episodes_per_iteration": 3, "learning_rate": 1e-2},
    )
    method = ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)
    method.run()
    for stage in ("sft/reflector/model", "sft/policy/model", "rl/model"):
        saved = method.store.path / stage
        assert (saved / "adapter_config.json").exists() and not (saved / "model.safetensors").exists()
        assert yaml.safe_load((saved / "adapter_config.json").read_text())["r"] == 4
    sft = load_file(str(method.store.path / "sft/policy/model/adapter_model.safetensors"))
    rl = load_file(str(method.store.path / "rl/model/adapter_model.safetensors"))
    assert any(not torch.equal(sft[k], rl[k]) for k in rl)  # PPO moved the adapter
    assert (method.store.path / "rl/model/critic.pt").exists()
    assert method.evaluate("rl")["episodes"] == 3


def test_the_reflector_can_train_for_more_epochs_than_the_policy(tmp_path):
    sft = {"learning_rate": 3e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "max_length": 384}
    config = recipe(tmp_path, reflector_sft={**sft, "epochs": 3})
    method = ReflectRL(config, open_run(config.run_dir, "r", config.model_dump(mode="json")), progress=False)
    method.sft()
    rows = [json.loads(line) for line in (method.store.path / "metrics.jsonl").read_text().splitlines()]
    steps = {
        stage: max(r["step"] for r in rows if r["stage"] == stage)
        for stage in ("sft/reflector", "sft/policy")
    }
    reflector_examples = len(method.teacher_steps())
    assert steps["sft/reflector"] == 3 * (reflector_examples // 4)  # 3 epochs of full batches of 4
    assert steps["sft/policy"] < steps["sft/reflector"] / 2  # one epoch, on the trained steps only


def test_by_level_counts_success_cost_and_the_reflection_diagnoses():
    from feedlearn.methods.reflect_rl.rollout import Episode, by_level

    def episode(success, cost, diagnosis):
        return Episode(seed=0, success=success, cost=cost, diagnosis=diagnosis)

    played = {
        "pickup": [episode(True, -1.0, [(True, True), (True, False)]), episode(False, 2.0, [(False, True)])],
        "dropoff": [episode(True, 0.5, [(True, True)])],
    }
    metrics = by_level(played)
    assert metrics["success"] == pytest.approx(66.67)
    assert metrics["cost"] == pytest.approx(0.5)
    assert metrics["reflection_names_best_move"] == 75.0  # 3 of 4 steps
    assert metrics["policy_follows_reflection"] == 75.0
    assert metrics["levels"]["pickup"] == {
        "success": 50.0,
        "cost": 0.5,
        "episodes": 2,
        "reflection_names_best_move": pytest.approx(66.67),
        "policy_follows_reflection": pytest.approx(66.67),
    }


def test_the_replay_update_draws_replay_batch_episodes_with_replacement(monkeypatch):
    """As in the reference: one update on the iteration's episodes, then one on k successful episodes
    drawn with replacement from the buffer (the newest `replay_size`), not on the whole buffer."""
    import random

    from feedlearn.methods.reflect_rl import objective as reflect_rl_objective
    from feedlearn.methods.reflect_rl.config import RLSettings
    from feedlearn.methods.reflect_rl.objective import Learner
    from feedlearn.methods.reflect_rl.rollout import Episode, Step

    updates = []
    monkeypatch.setattr(reflect_rl_objective, "update", lambda *args: updates.append(args[5]) or {})
    policy = torch.nn.Linear(2, 2)
    learner = Learner.__new__(Learner)  # no tokenizer needed: `update` is replaced
    learner.policy, learner.critic, learner.objective, learner.optimizer, learner.params = (
        policy,
        None,
        0,
        0,
        0,
    )
    learner.settings, learner.replay = RLSettings(replay_size=3, replay_batch=5, episodes_per_iteration=4), []

    def episode(i: int, success: bool) -> Episode:
        return Episode(i, steps=[Step([i], 2, 0, 1.0)], success=success)

    learner.learn([episode(0, False)], random.Random(0))
    assert updates == [[Step([0], 2, 0, 1.0)]] and learner.replay == []  # nothing to replay yet
    updates.clear()
    learner.learn([episode(i, i != 2) for i in range(1, 6)], random.Random(7))
    assert [[s.input_ids[0] for s in ep] for ep in learner.replay] == [[3], [4], [5]]  # the newest 3 of 4
    first, replayed = updates
    assert [s.input_ids[0] for s in first] == [1, 2, 3, 4, 5]
    drawn = random.Random(7).choices([3, 4, 5], k=5)
    assert [s.input_ids[0] for s in replayed] == drawn and len(set(drawn)) < 5  # with replacement
