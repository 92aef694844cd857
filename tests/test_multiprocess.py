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
    "rise-sft": ("rise/tiny.yaml", "sft", ["sft.problems.synthetic.n=256", "sft.chat_turns=2"]),
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


RISE_COLLECT = [
    *TINY,
    "sft.problems.synthetic.n=600",
    "train_problems.synthetic.n=48",
    "collect.chunk_size=16",
    "collect.turns=[{n: 1}, {n: 4}]",
    "collect.max_new_tokens=24",
]


def rise(processes: int, stage: str, tmp_path: Path, run_id: str) -> None:
    sets = [x for s in [*RISE_COLLECT, f"run_dir={tmp_path / 'runs'}"] for x in ("--set", s)]
    args = ["-m", "feedlearn.cli", "rise", stage, str(RECIPES / "rise/tiny.yaml"), "--run-id", run_id, *sets]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command = [*launcher, *args] if processes > 1 else [sys.executable, *args]
    done = subprocess.run(
        command, env=environment(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_collect_the_episodes_one_does(tmp_path):
    """RISE's collection, each process rolling out its share of every chunk: the main process writes the
    same episodes, in the same order, as one process."""
    rise(1, "sft", tmp_path, "one")
    shutil.copytree(tmp_path / "runs" / "one", tmp_path / "runs" / "two")
    rise(1, "collect", tmp_path, "one")
    rise(2, "collect", tmp_path, "two")
    one, two = ((tmp_path / "runs" / r / "iter1/collect/episodes.jsonl").read_text() for r in ("one", "two"))
    assert one.count("\n") == 48
    assert one == two


def test_two_processes_evaluate_dpo_as_one_does(tmp_path):
    """DPO's evaluation scores each process's share of the pairs and gathers them: the same metrics."""
    launch(1, "dpo", tmp_path, "one")
    shutil.copytree(tmp_path / "runs" / "one", tmp_path / "runs" / "two")
    metrics = []
    for processes, run_id in ((1, "one"), (2, "two")):
        run = launch(processes, "dpo", tmp_path, run_id, stage="evaluate")
        metrics.append(json.loads((run / "evaluate" / "metrics.json").read_text()))
    assert metrics[0]["pairs"] == metrics[1]["pairs"] == 64
    assert metrics[1] == pytest.approx(metrics[0], rel=1e-5)
