"""The process group feedlearn runs in: one process, or several under `torchrun` / `accelerate launch`.

accelerate's bare `PartialState()` believes it is alone on a machine without a GPU even when it was
launched as one of several processes; `process_state` asks for the CPU backend (gloo) there, so every
process of a CPU run knows its rank and the world size. It is accelerate's shared state: the first call
decides it for the whole process, `Accelerator()` included. `shared_map` splits a generation stage's
items across the processes and gathers the results back, `from_main` shares what the main process alone
reads or asks, `total` adds up per-process counts; files that every process writes (the replies
paid to a remote model) are kept one per process (`own_file`) and read together (`every_file`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce

from feedlearn.errors import FeedlearnError

T = TypeVar("T")
R = TypeVar("R")


def process_state() -> PartialState:
    """This process's place in the run (rank, world size, device), on GPUs or, without one, on CPUs."""
    return PartialState(cpu=not torch.cuda.is_available())


def shared_map(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
    """`fn(items)`, computed in shares: each process runs `fn` on every n-th item from its rank on, and
    every process gets all the results back in the order of `items`. `fn` maps a list to a list of the
    same length; its results travel between processes pickled. When `fn` fails in one process, every
    process raises (the others with its message) instead of waiting for its share."""
    state = process_state()
    if state.num_processes == 1:
        return fn(items)
    share = list(range(state.process_index, len(items), state.num_processes))
    pairs, failure = [], None
    try:
        pairs = list(zip(share, fn([items[i] for i in share]) if share else [], strict=True))
    except Exception as err:
        failure = err
    gathered = gather_object([(state.process_index, _message(failure), pairs)])
    _raise_any(failure, [(rank, message) for rank, message, _ in gathered])
    pairs = [pair for _, _, share_pairs in gathered for pair in share_pairs]
    return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]


def from_main(fn: Callable[[], R]) -> R:
    """`fn()` run by the main process alone (what it reads or asks once for the run), its result sent to
    every process; when it fails there, every process raises."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    result, failure = None, None
    if state.is_main_process:
        try:
            result = fn()
        except Exception as err:
            failure = err
    result, message = broadcast_object_list([result, _message(failure)])
    _raise_any(failure, [(0, message)])
    return result


def _message(failure: Exception | None) -> str | None:
    return None if failure is None else f"{type(failure).__name__}: {failure}"


def _raise_any(own: Exception | None, messages: list[tuple[int, str | None]]) -> None:
    """Raise this process's own failure, or else the first other process's (by its message)."""
    if own is not None:
        raise own
    for rank, message in messages:
        if message is not None:
            raise FeedlearnError(f"process {rank} failed: {message}")


def total(value: float) -> float:
    """The sum of every process's `value` (a count or sum each process kept of its own share)."""
    return value if process_state().num_processes == 1 else sum(gather_object([value]))


class StepSums:
    """Named sums that a training step adds to on each process (counts, sums of per-row values), summed over
    the processes in one all-reduce when the step's metrics are read. Every process adds the same names."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, sums: dict[str, torch.Tensor | float]) -> None:
        """Add each value (a number or a 0-d tensor) to its name's sum."""
        for name, value in sums.items():
            value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
            self._sums[name] = self._sums[name] + value if name in self._sums else value

    def pop(self) -> dict[str, float]:
        """Each name's sum over every process since the last `pop`; empties the sums."""
        names = sorted(self._sums)
        if not names:
            return {}
        flat = torch.stack([self._sums[name] for name in names]).to(process_state().device)
        if process_state().num_processes > 1:
            flat = reduce(flat, "sum")
        self._sums = {}
        return dict(zip(names, flat.tolist(), strict=True))


def gathered(items: list[T]) -> list[T]:
    """Every process's `items`, one list after another in rank order."""
    return items if process_state().num_processes == 1 else gather_object(items)


def own_file(path: Path) -> Path:
    """The file this process writes where every process keeps its own copy of `path`: `path` itself on the
    main process, `<stem>.rank<N><suffix>` beside it on process N."""
    rank = process_state().process_index
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def every_file(path: Path) -> list[Path]:
    """`path` and the other processes' copies of it (see `own_file`) that exist."""
    return [p for p in [path, *sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))] if p.exists()]


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its sum over the processes (in one all-reduce), for a loop
    that steps its own optimizer on gradients each process computed on its share of the batch."""
    if process_state().num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).clone()


def end_processes(wait: bool) -> None:
    """Leave the process group before the process exits (with `wait`, once every process is done), so
    that no communication thread is torn down mid-flight (which aborts the process)."""
    state = process_state()
    if state.num_processes > 1 and torch.distributed.is_initialized():
        if wait:
            state.wait_for_everyone()
        state.destroy_process_group()


def zero3() -> bool:
    """Whether this run was launched with DeepSpeed ZeRO-3 (`accelerate launch` with a ZeRO-3 config)."""
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
