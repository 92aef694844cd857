"""Every method's tiny recipe, shrunk to seconds, killed (SIGKILL of the CLI process) at several points and
run again until it finishes, must end with what one uninterrupted run makes: the same records, the same
weights, the same metrics. And two runs on one run folder: the second is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "feedlearn" / "recipes"
TINY = [
    "tiny.hidden_size=32",
    "tiny.intermediate_size=64",
    "tiny.num_layers=1",
    "tiny.num_heads=2",
]
TIMEOUT_S = 300


def checkpoint(stage: str) -> tuple[str, Callable[[Path], bool]]:
    """A kill point: the loop of stage `stage` (a glob) has saved a checkpoint and not yet finished (every
    loop's checkpoints are `feedlearn.data.checkpoints`')."""

    def reached(run: Path) -> bool:
        return any(run.glob(f"{stage}/checkpoints/step-*/checkpoint.json"))

    return f"a checkpoint of {stage}", reached


def records(path: str, stop: str | None = None) -> tuple[str, Callable[[Path], bool]]:
    """A kill point: some records of `path` (a glob) are written, and the stage `stop` has not begun."""

    def reached(run: Path) -> bool:
        written = any(p.stat().st_size > 0 for p in run.glob(path))
        return written and not (stop and any(run.glob(stop)))

    return f"records in {path}", reached


def evaluating(stage: str) -> tuple[str, Callable[[Path], bool]]:
    """A kill point: the evaluation `stage` has begun and has not written its results."""

    def reached(run: Path) -> bool:
        return (run / stage).is_dir() and not (run / stage / "metrics.json").exists()

    return f"the evaluation {stage}", reached


CASES = {
    "rise": (
        "rise/tiny-from-scratch.yaml",
        [
            *TINY,
            "generation_batch_size=64",
            "sft.problems.synthetic.n=1200",
            "sft.train.checkpoint_every=10",
            "train_problems.synthetic.n=96",
            "test_problems.synthetic.n=16",
            "collect.chunk_size=8",
            "collect.turns=[{n: 1}, {n: 4}, {n: 4}]",
            "collect.max_new_tokens=24",
            "train.batch_size=4",
            "train.epochs=2",
            "train.checkpoint_every=5",
            "evaluate.turns=2",
            "evaluate.parallel_samples=2",
            "evaluate.max_new_tokens=24",
        ],
        [
            checkpoint("sft"),
            records("iter1/collect/episodes.jsonl", "iter1/convert"),
            checkpoint("iter1/train"),
        ],
    ),
    "active-dpo": (
        "active-dpo/tiny.yaml",
        [
            *TINY,
            "train_data.synthetic.n=1600",
            "eval_data.synthetic.n=64",
            "train.batch_size=8",
            "train.epochs=2",
            "train.checkpoint_every=20",
        ],
        [records("train/reference_logprobs.jsonl", "train/labels.jsonl"), checkpoint("train")],
    ),
    "c3po": (
        "c3po/tiny.yaml",
        [
            *TINY,
            "generation_batch_size=64",
            "sft.chats=1600",
            "sft.train.checkpoint_every=20",
            "sample.prompts_per_scope=96",
            "sample.prompts_per_category=24",
            "sample.chunk_size=16",
            "sample.max_new_tokens=24",
            "methods=[c3po, scd]",
            "train.batch_size=4",
            "train.epochs=2",
            "train.checkpoint_every=4",
            "evaluate.prompts_per_scope=8",
            "evaluate.max_new_tokens=24",
        ],
        [checkpoint("sft"), records("*/sample/samples.jsonl", "*/train"), checkpoint("*/train/c3po")],
    ),
    "reflect-rl": (
        "reflect-rl/tiny.yaml",
        [
            *TINY,
            "teacher.episodes=60",
            "teacher.negatives=20",
            "sft.epochs=1",
            "sft.checkpoint_every=10",
            "reflector_sft.epochs=2",
            "reflector_sft.checkpoint_every=10",
            "rl.iterations=8",
            "rl.episodes_per_iteration=4",
            "rl.checkpoint_every=2",
            "evaluate.episodes=8",
            "max_reflection_tokens=24",
        ],
        [checkpoint("sft/reflector"), checkpoint("rl"), evaluating("evaluate/rl")],
    ),
    "adarefiner": (
        "adarefiner/tiny.yaml",
        [
            *TINY,
            "tiny.vocab_size=330",
            "env.length=60",
            "agent.envs=2",
            "agent.n_steps=16",
            "agent.batch_size=16",
            "adapter.max_new_tokens=12",
            "adapter.warmup_steps=160",
            "adapter.warmup={learning_rate: 1.0e-3, batch_size: 4, grad_accum: 1, epochs: 2,"
            " checkpoint_every: 3}",
            "refine.threshold=0.0",
            "refine.sft={learning_rate: 1.0e-3, batch_size: 4, grad_accum: 1, epochs: 1,"
            " checkpoint_every: 2}",
            "steps_per_iteration=128",
            "query_interval=8",
            "evaluate.episodes=2",
            "evaluate.query_interval=8",
        ],
        [
            checkpoint("warmup"),
            checkpoint("stage1/train"),
            checkpoint("stage1/sft"),
            records("stage2/train/queries.jsonl", "stage2/train/done.json"),
            evaluating("evaluate/stage2"),
        ],
    ),
}


def command(case: str, run_dir: Path, run_id: str, processes: int = 1) -> list[str]:
    """`feedlearn run` of the case, in one process or under torchrun with `processes`."""
    recipe, overrides, _ = CASES[case]
    sets = [arg for o in [*overrides, f"run_dir={run_dir}"] for arg in ("--set", o)]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"] if processes > 1 else []
    args = ["-m", "feedlearn.cli", "run", str(RECIPES / recipe), *sets, "--run-id", run_id]
    return [sys.executable, *launcher, *args]


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FEEDLEARN_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(args: list[str], env: dict[str, str], log: Path) -> None:
    proc = start(args, env, log)
    assert proc.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started, as a job kill does (torchrun's workers run in
    sessions of their own: killing the launcher's group alone leaves them running)."""
    os.kill(pid, signal.SIGSTOP)  # it starts no process while its tree is read
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def kill_at(args, env, log: Path, run: Path, point: tuple[str, Callable[[Path], bool]]) -> None:
    """Run until `point` is reached, then SIGKILL the process and every process it started."""
    name, reached = point
    proc = start(args, env, log)
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if reached(run):
            kill_tree(proc.pid)
            proc.wait()
            return
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"the run ended (exit {proc.returncode}) before {name}:\n{log.read_text()[-3000:]}")


def jsonl_records(run: Path) -> dict[str, list]:
    """Every JSONL file of the run but the metrics log, parsed."""
    return {
        # lines end at "\n" only: a reply may hold U+2028 or U+0085, which str.splitlines splits at
        str(p.relative_to(run)): [json.loads(line) for line in p.read_text().split("\n") if line]
        for p in sorted(run.rglob("*.jsonl"))
        if p.name != "metrics.jsonl"
    }


def json_results(run: Path) -> dict[str, object]:
    return {str(p.relative_to(run)): json.loads(p.read_text()) for p in sorted(run.rglob("metrics.json"))}


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(run)): load_file(p) for p in sorted(run.rglob("*.safetensors"))}


TIMED = ("time", "charts/samples_per_s", "charts/SPS", "seconds")


def metric_rows(run: Path) -> dict[tuple, dict]:
    """The metrics log by (stage, step), without wall-clock values; each key must appear once."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keyed = {(r["stage"], r["step"]): {k: v for k, v in r.items() if k not in TIMED} for r in rows}
    assert len(keyed) == len(rows), "a (stage, step) is logged twice"
    return keyed


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_equals_uninterrupted(tmp_path, case):
    assert_resumes_to_the_uninterrupted_run(tmp_path, case, processes=1)


def assert_resumes_to_the_uninterrupted_run(tmp_path: Path, case: str, processes: int) -> None:
    """Run the case whole, and again killed at each of its points and resumed: the same records, results,
    weights and metrics."""
    env = environment(tmp_path)
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    finish(command(case, runs, "whole", processes), env, log)
    resumed = command(case, runs, "resumed", processes)
    for point in CASES[case][2]:
        kill_at(resumed, env, log, runs / "resumed", point)
    finish(resumed, env, log)

    whole, again = runs / "whole", runs / "resumed"
    assert not list(again.rglob("checkpoints/*"))  # every training stage finished and cleaned up
    a, b = jsonl_records(whole), jsonl_records(again)
    assert a.keys() == b.keys() and a
    for name in a:
        assert a[name] == b[name], name
    assert json_results(whole) == json_results(again) != {}
    wa, wb = weights(whole), weights(again)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert wa[name].keys() == wb[name].keys(), name
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)
    assert metric_rows(whole) == metric_rows(again)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    env = environment(tmp_path)
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    args = command("active-dpo", runs, "shared")
    first = start(args, env, log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (runs / "shared" / "train").exists() and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # it holds the folder, however long the second takes to start
        try:
            second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: run folder {runs / 'shared'} is in use by process {first.pid}: wait for it to finish, "
            "or pass --run-id NEW to start another run"
        )
        assert first.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]
    finally:
        first.kill()
    labels = [
        json.loads(line) for line in (runs / "shared" / "train" / "labels.jsonl").read_text().splitlines()
    ]
    assert len(labels) == len({r["id"] for r in labels})  # every label bought once
