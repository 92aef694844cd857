"""The process group feedlearn runs in: one process, or several under `torchrun` / `accelerate launch`.

accelerate's bare `PartialState()` believes it is alone on a machine without a GPU even when it was
launched as one of several processes; `process_state` asks for the CPU backend (gloo) there, so every
process of a CPU run knows its rank and the world size. It is accelerate's shared state: the first call
decides it for the whole process, `Accelerator()` included.
"""

from __future__ import annotations

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place in the run (rank, world size, device), on GPUs or, without one, on CPUs."""
    return PartialState(cpu=not torch.cuda.is_available())
