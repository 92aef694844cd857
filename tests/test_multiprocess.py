"""Training across processes equals one process: each train stage run by `torchrun` in 2 CPU processes
(gloo) against 1 process with the same global batch gives the same per-step losses and the same weights
(to float tolerance), and Active DPO pays for each label once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume_everywhere import assert_resumes_to_the_uninterrupted_run

from feedlearn.tasks.instructions import BUILTIN_FEEDBACKS

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "feedlearn" / "recipes"
TINY = ["tiny.hidden_size=32", "tiny.intermediate_size=64", "tiny.num_layers=1", "tiny.num_heads=2"]
TIMEOUT_S = 300
CASES = {
    "dpo": ("dpo/tiny.yaml", "train", ["train_data.synthetic.n=512", "eval_data.synthetic.n=64"]),
    "active-dpo": (
        "active-dpo/tiny.yaml",
        "train",
        ["train_data.synthetic.n=512", "eval_data.synthetic.n=64"],
    ),
    "rise-sft": ("rise/tiny-from-scratch.yaml", "sft", ["sft.problems.synthetic.n=256", "sft.chat_turns=2"]),
}
"""Method, recipe, stage and overrides; the batch of each case is set below (8 per process)."""


def environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "FEEDLEARN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def launch(processes: int, case: str, tmp_path: Path, run_id: str, stage: str | None = None) -> Path:
    recipe, train_stage, overrides = CASES[case]
    stage = stage or train_stage
    method = case.removesuffix("-sft")
    batch = "sft.train.batch_size" if train_stage == "sft" else "train.batch_size"
    sets = [
        *TINY,
        *overrides,
        f"{batch}={16 // processes if stage == train_stage else 16}",
        f"run_dir={tmp_path / 'runs'}",
    ]
    args = ["-m", "feedlearn.cli", method, stage, str(RECIPES / recipe), "--run-id", run_id]
    args += [x for s in sets for x in ("--set", s)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", *args]
    else:
        command = [sys.executable, *args]
    done = subprocess.run(
        command, env=environment(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "runs" / run_id


def step_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] is not None]


def test_the_process_state_sees_two_processes_on_cpu(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "from feedlearn.processes import process_state\n"
        "import sys\n"
        "s = process_state()\n"
        "open(sys.argv[1] + str(s.process_index), 'w').write(f'{s.num_processes} {s.backend}')\n"
    )  # one file per process: their prints to a shared stdout can interleave
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "rank"),
        ],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(tmp_path / f"rank{i}").read_text() for i in range(2)] == ["2 gloo", "2 gloo"]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_what_one_does(tmp_path, case):
    one, two = launch(1, case, tmp_path, "one"), launch(2, case, tmp_path, "two")
    a, b = step_rows(one), step_rows(two)
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b, strict=True):
        assert rb["charts/lr"] == pytest.approx(ra["charts/lr"], rel=1e-9)  # one schedule step per step
        assert rb["losses/loss"] == pytest.approx(ra["losses/loss"], rel=1e-4)
    stage = CASES[case][1]
    wa, wb = (load_file(run / stage / "model" / "model.safetensors") for run in (one, two))
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=0), key
    if case != "rise-sft":
        labels = [(run / "train" / "labels.jsonl").read_text().splitlines() for run in (one, two)]
        assert sorted(labels[0]) == sorted(labels[1])  # the same labels, each bought once
        assert a[-1]["queries_used"] == b[-1]["queries_used"] == len(labels[1])


def stage_run(processes: int, method: str, stage: str, overrides: list[str], tmp_path: Path, run_id: str):
    """`feedlearn <method> <stage>` of the method's tiny recipe, in 1 process or under torchrun."""
    recipe = RECIPES / f"{method}/tiny.yaml"
    sets = [x for s in [*TINY, *overrides, f"run_dir={tmp_path / 'runs'}"] for x in ("--set", s)]
    args = ["-m", "feedlearn.cli", method, *stage.split(), str(recipe), "--run-id", run_id, *sets]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command = [*launcher, *args] if processes > 1 else [sys.executable, *args]
    done = subprocess.run(
        command, env=environment(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "runs" / run_id


def copy_run(tmp_path: Path, source: str, target: str) -> None:
    """A copy of a run's outputs, without its config: the copy's stages may differ in batch size."""
    shutil.copytree(tmp_path / "runs" / source, tmp_path / "runs" / target)
    (tmp_path / "runs" / target / "config.yaml").unlink()


def text(run: Path, path: str) -> str:
    return (run / path).read_text()


def test_two_processes_evaluate_dpo_as_one_does(tmp_path):
    """DPO's evaluation scores each process's share of the pairs and gathers them: the same metrics."""
    launch(1, "dpo", tmp_path, "one")
    copy_run(tmp_path, "one", "two")
    metrics = []
    for processes, run_id in ((1, "one"), (2, "two")):
        run = launch(processes, "dpo", tmp_path, run_id, stage="evaluate")
        metrics.append(json.loads((run / "evaluate" / "metrics.json").read_text()))
    assert metrics[0]["pairs"] == metrics[1]["pairs"] == 64
    assert metrics[1] == pytest.approx(metrics[0], rel=1e-5)


RISE = [
    "sft.problems.synthetic.n=600",
    "train_problems.synthetic.n=48",
    "test_problems.synthetic.n=24",
    "collect.chunk_size=16",
    "collect.turns=[{n: 1}, {n: 4}]",
    "collect.max_new_tokens=24",
    "evaluate.turns=2",
    "evaluate.parallel_samples=2",
    "evaluate.max_new_tokens=24",
]


def test_two_processes_collect_and_evaluate_what_one_does(tmp_path):
    """RISE's collection and evaluation, each process playing its share: the main process writes the same
    episodes, in the same order, and the same metrics as one process."""
    stage_run(1, "rise", "sft", RISE, tmp_path, "one")
    copy_run(tmp_path, "one", "two")
    for processes, run_id in ((1, "one"), (2, "two")):
        stage_run(processes, "rise", "collect", RISE, tmp_path, run_id)
        stage_run(processes, "rise", "evaluate --iteration 0", RISE, tmp_path, run_id)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    for path in (
        "iter1/collect/episodes.jsonl",
        "evaluate/base/episodes.jsonl",
        "evaluate/base/metrics.json",
    ):
        assert text(one, path) == text(two, path), path
    assert text(one, "iter1/collect/episodes.jsonl").count("\n") == 48


SIGN_OFF = BUILTIN_FEEDBACKS["jared-signoff"].feedback.short_id
C3PO = [
    # the sign-off feedback: its revision applies to any answer, while a model warmed up on 400 chats writes
    # no list for the numbered-list feedback's revision to number
    f"feedback_ids=[{SIGN_OFF}]",
    "sft.chats=400",
    "sample.prompts_per_scope=48",
    "sample.prompts_per_category=12",
    "sample.chunk_size=16",
    "sample.max_new_tokens=24",
    "methods=[c3po]",
    "train.batch_size=4",
    "train.epochs=1",
    "evaluate.prompts_per_scope=8",
    "evaluate.max_new_tokens=24",
]


def test_two_processes_sample_and_evaluate_c3po_as_one_does(tmp_path):
    """C3PO's sampling and evaluation, each process answering its share of the prompts: the same samples
    and the same responses and metrics; its training in 2 processes: the same losses and adapters."""
    stage_run(1, "c3po", "sft", C3PO, tmp_path, "one")
    copy_run(tmp_path, "one", "two")
    two_processes = [*C3PO, "train.batch_size=2"]  # the same global batch in training
    stage_run(1, "c3po", "sample", C3PO, tmp_path, "one")
    stage_run(2, "c3po", "sample", two_processes, tmp_path, "two")
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    samples = sorted(one.glob("*/sample/samples.jsonl"))
    assert len(samples) == 1 and all(path.stat().st_size > 0 for path in samples)
    for path in samples:
        name = str(path.relative_to(one))
        assert text(one, name) == text(two, name), name
    stage_run(1, "c3po", "train", C3PO, tmp_path, "one")
    stage_run(2, "c3po", "train", two_processes, tmp_path, "two")
    a, b = ([r for r in step_rows(run) if r["stage"].endswith("/train/c3po")] for run in (one, two))
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b, strict=True):
        assert rb["losses/loss"] == pytest.approx(ra["losses/loss"], rel=1e-4)
    for path in sorted(one.glob("*/train/c3po/model/*.safetensors")):
        wa, wb = load_file(path), load_file(two / path.relative_to(one))
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=0), key
    copy_run(tmp_path, "one", "three")
    for processes, run_id in ((1, "one"), (2, "three")):
        stage_run(processes, "c3po", "evaluate", C3PO, tmp_path, run_id)
    three = tmp_path / "runs" / "three"
    results = sorted(one.glob("evaluate/*/*.json"))
    assert len(results) == 2  # the feedback's metrics and responses
    for path in results:
        name = str(path.relative_to(one))
        assert json.loads(text(one, name)) == json.loads(text(three, name)), name


REFLECT_RL = [
    "teacher.episodes=60",
    "teacher.negatives=20",
    "sft.epochs=1",
    "reflector_sft.epochs=2",
    "rl.iterations=4",
    "rl.episodes_per_iteration=6",
    "rl.batch_size=4",
    "evaluate.episodes=8",
    "max_reflection_tokens=24",
]


def test_two_processes_play_and_update_reflect_rl_as_one_does(tmp_path):
    """Reflect-RL's online RL, each process playing its share of an iteration's episodes and computing the
    gradients of its share of the batches: the same episodes, the same success per iteration and the same
    policy (to float tolerance); its evaluation, each process playing its share: the same metrics."""
    stage_run(1, "reflect-rl", "sft", REFLECT_RL, tmp_path, "one")
    copy_run(tmp_path, "one", "two")
    for processes, run_id in ((1, "one"), (2, "two")):
        stage_run(processes, "reflect-rl", "rl", REFLECT_RL, tmp_path, run_id)
        stage_run(processes, "reflect-rl", "evaluate", REFLECT_RL, tmp_path, run_id)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert text(one, "rl/episodes.jsonl") == text(two, "rl/episodes.jsonl")
    a, b = ([r for r in step_rows(run) if r["stage"] == "rl"] for run in (one, two))
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        assert (ra["charts/success"], ra["replay"]) == (rb["charts/success"], rb["replay"])
    wa, wb = (load_file(run / "rl" / "model" / "model.safetensors") for run in (one, two))
    changed = load_file(one / "sft" / "policy" / "model" / "model.safetensors")
    assert any(not torch.equal(wa[k], changed[k]) for k in wa)  # RL moved the policy
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=0), key
    assert json.loads(text(one, "evaluate/rl/metrics.json")) == json.loads(
        text(two, "evaluate/rl/metrics.json")
    )


def test_a_failure_in_one_process_stops_every_process_with_its_message(tmp_path):
    """A share that fails in process 1 while process 0 waits for it: both stop at once, process 0 naming
    process 1's error, and the launcher reports the failure."""
    script = tmp_path / "fail.py"
    script.write_text(
        "from feedlearn.processes import process_state, shared_map\n"
        "def answer(share):\n"
        "    if process_state().process_index == 1:\n"
        "        raise ValueError('a reply that is not JSON')\n"
        "    return share\n"
        "shared_map(answer, list(range(8)))\n"
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launcher, str(script)], env=environment(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "FeedlearnError: process 1 failed: ValueError: a reply that is not JSON" in done.stderr


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_two_process_run(tmp_path):
    """Reflect-RL's whole recipe under torchrun (trainer checkpoints, RL checkpoints, an evaluation), the
    launcher and both processes killed at each point and started again: what the uninterrupted
    2-process run makes, record for record and bit for bit."""
    assert_resumes_to_the_uninterrupted_run(tmp_path, "reflect-rl", processes=2)


ADAREFINER = [
    "tiny.vocab_size=330",
    "env.length=60",
    "agent={kind: scripted, envs: 3, n_steps: 32}",
    "adapter.max_new_tokens=12",
    "adapter.warmup_steps=160",
    "adapter.warmup={learning_rate: 1.0e-3, batch_size: 4, grad_accum: 1, epochs: 1}",
    "refine.threshold=0.0",
    "refine.sft={learning_rate: 1.0e-3, batch_size: 4, grad_accum: 1, epochs: 1}",
    "iterations=1",
    "steps_per_iteration=96",
    "query_interval=8",
    "evaluate={episodes: 3, query_interval: 8}",
]


def test_two_processes_evaluate_adarefiner_as_one_does(tmp_path):
    """AdaRefiner's evaluation, each process playing its share of the test worlds with the scripted
    player: the same episodes, queries and metrics. Its train stage (SB3's PPO) refuses two processes."""
    recipe = str(RECIPES / "adarefiner/tiny.yaml")
    sets = [x for s in [*TINY, *ADAREFINER, f"run_dir={tmp_path / 'runs'}"] for x in ("--set", s)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    refused = subprocess.run(
        [*launcher, "-m", "feedlearn.cli", "adarefiner", "train", recipe, "--run-id", "refused", *sets],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert refused.returncode != 0
    assert "error: adarefiner train runs in one process" in refused.stderr
    for stage in ("warmup", "train", "sft"):  # what `run` does before the evaluation
        stage_run(1, "adarefiner", stage, ADAREFINER, tmp_path, "one")
    copy_run(tmp_path, "one", "two")
    for processes, run_id in ((1, "one"), (2, "two")):
        stage_run(processes, "adarefiner", "evaluate --iteration 1", ADAREFINER, tmp_path, run_id)
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    for name in ("episodes.jsonl", "queries.jsonl", "metrics.json"):
        assert text(one, f"evaluate/stage1/{name}") == text(two, f"evaluate/stage1/{name}"), name
    assert json.loads(text(one, "evaluate/stage1/metrics.json"))["episodes"] == 3
