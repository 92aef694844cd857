"""The optimization loop, on accelerate: gradient accumulation, checkpoints, exact resume.

`accelerate launch` brings DDP / FSDP / DeepSpeed; each process trains on its own shard of every step.
The data order is a function of the seed and the epoch, and a checkpoint stores the model, optimizer,
scheduler and RNG states with the step count, so a run killed at any point and started again skips what
it had done and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm
from transformers import get_scheduler

from feedlearn.data.checkpoints import Checkpoints
from feedlearn.data.jsonl import write_json_atomic
from feedlearn.data.store import DONE, RunStore, is_done
from feedlearn.errors import FeedlearnError
from feedlearn.losses import weighted_sft_loss
from feedlearn.seeds import derive_seed
from feedlearn.training.batches import collate

log = logging.getLogger(__name__)


class TrainSettings(BaseModel):
    """Optimizer, schedule and batching of a training stage."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=1e-5, gt=0, description="Peak learning rate (AdamW).")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warmup."
    )
    warmup_ratio: float = Field(default=0.04, ge=0, le=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(default=1, gt=0, description="Passes over the data.")
    batch_size: int = Field(default=1, gt=0, description="Examples per micro-batch, per process.")
    grad_accum: int = Field(default=16, gt=0, description="Micro-batches per optimizer step.")
    max_length: int = Field(default=2048, gt=0, description="Longer examples are dropped, with a warning.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    checkpoint_every: int = Field(default=100, gt=0, description="Optimizer steps between checkpoints.")
    group_by_length: bool = Field(
        default=True,
        description="Batch examples of similar length together (within windows of 64 steps): less padding.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass instead of storing them: less memory, "
        "about a third more compute; the same gradients.",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        default="no",
        description="Autocast through accelerate (bf16: GPUs since Ampere, and CPUs; fp16: GPUs only).",
    )

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self):
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision fp16 needs a CUDA GPU: use bf16 or no on this machine")
        return self


class Objective(Protocol):
    """What a training stage optimizes: how its tokenized rows become a batch, the batch's loss, and the
    method's own values logged after each optimizer step."""

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """One micro-batch of rows, padded into tensors."""
        ...

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro-batch's mean loss (the trainer divides it by the accumulation steps)."""
        ...

    def step_metrics(self) -> dict[str, float]:
        """Values logged with the step's loss, called on every process after each optimizer step."""
        ...


class SFTObjective:
    """Rows from `tokenize_sft`: each row's token-mean NLL times its weight, averaged (plain SFT when every
    weight is 1, reward-weighted regression otherwise); no values of its own to log."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Right-padded completions, their labels and weights (`training.batches.collate`)."""
        return collate(rows, self.pad_id)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted mean of the rows' token-mean NLLs."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return weighted_sft_loss(logits, batch["labels"], batch["weight"])

    def step_metrics(self) -> dict[str, float]:
        """None."""
        return {}


def is_trained(out_dir: Path) -> bool:
    """Whether `train` already finished in `out_dir` (its model is saved: the done rule of `data.store`)."""
    return is_done(out_dir / "model")


def train(
    model,
    tokenizer,
    rows: list[dict],
    objective: Objective,
    settings: TrainSettings,
    out_dir: Path,
    store: RunStore | None = None,
    stage: str = "train",
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Train `model` on tokenized `rows` for `objective`; save it to `out_dir/model` and return that path.

    Rows carry a `length` (used to batch similar lengths together) and are padded into batches by the
    objective, whose step metrics join the logged ones. `seed` (the recipe's) fixes the data order and
    dropout.

    Each epoch uses `len(rows) // (batch_size x grad_accum x processes)` full steps (the remainder waits
    for the next epoch's shuffle). Checkpoints go to `out_dir/checkpoints`; if one exists, training resumes
    from it. A finished run (its model saved) is not trained again.
    """
    final = out_dir / "model"
    if is_trained(out_dir):
        return final
    accelerator = _accelerator(settings.mixed_precision)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is of no use in training, and checkpointing refuses it
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = settings.batch_size * settings.grad_accum * world
    steps_per_epoch = len(rows) // per_step
    if steps_per_epoch == 0:
        raise FeedlearnError(
            f"{stage}: {len(rows)} training examples, fewer than one optimizer step takes "
            f"(batch_size x grad_accum x processes = {per_step}); add data or lower grad_accum"
        )
    total_steps = steps_per_epoch * settings.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    model, optimizer, scheduler = accelerator.prepare(model, *_optimizer(params, settings, total_steps))

    checkpoints = Checkpoints(out_dir / "checkpoints")
    start = _resume(accelerator, checkpoints, derive_seed(seed, "order", stage, "dropout"), total_steps)
    if store is not None and accelerator.is_main_process:
        store.drop_metrics(stage, after_step=start)  # the steps after the checkpoint are done again

    model.train()
    bar = tqdm(
        total=total_steps, initial=start, desc=stage, disable=not (progress and accelerator.is_main_process)
    )
    started, samples = time.perf_counter(), 0
    plan = _planned_steps([r["length"] for r in rows], per_step, settings, seed, stage, start, total_steps)
    for step, indices in enumerate(plan, start=start + 1):
        micros = [rows[i] for i in indices[rank::world]]
        step_loss = _accumulate(accelerator, model, objective, micros, settings)
        samples += len(micros)
        grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        extra = objective.step_metrics()
        if store is not None and accelerator.is_main_process:
            store.log_metrics(
                stage,
                {
                    "losses/loss": step_loss,
                    "losses/grad_norm": float(grad_norm),
                    "charts/lr": scheduler.get_last_lr()[0],
                    "charts/samples_per_s": samples * world / (time.perf_counter() - started),
                    **extra,
                },
                step=step,
            )
        if step % settings.checkpoint_every == 0 and step < total_steps:
            _save_checkpoint(accelerator, checkpoints, step)
    bar.close()
    _save_model(accelerator, model, tokenizer, final, {"steps": total_steps, "examples": len(rows)})
    if accelerator.is_main_process:
        checkpoints.remove()
    accelerator.wait_for_everyone()
    return final


def _resume(accelerator: Accelerator, checkpoints: Checkpoints, dropout_seed: int, last_step: int) -> int:
    """The steps done: the newest sound checkpoint's (its state loaded; one that fails to load gives way to
    the one before), or 0 (dropout seeded for a fresh run)."""
    failed = None
    for step, folder in checkpoints.sound(last_step):
        try:
            accelerator.load_state(str(folder))
            return step
        except Exception as e:  # a damaged file of the recorded size: the state is loaded whole, or not used
            log.warning(
                "checkpoint %s cannot be loaded (%s): trying the one before", folder, type(e).__name__
            )
            failed = folder
    if failed is not None:  # the model may hold part of the damaged state: it cannot start afresh
        raise FeedlearnError(
            f"checkpoint {failed} cannot be loaded and there is no older one: delete {checkpoints.folder} "
            "and run the same command again to train this stage from its start"
        )
    torch.manual_seed(dropout_seed)
    return 0


def _planned_steps(
    lengths: list[int], per_step: int, settings: TrainSettings, seed: int, stage: str, start: int, total: int
):
    """The example indices of each optimizer step from step `start` to `total`; each epoch's order is a
    function of the seed and the epoch (`epoch_steps`), so a resumed run sees the batches it would have."""
    steps_per_epoch = len(lengths) // per_step
    planned_epoch, steps = None, []
    for step in range(start, total):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != planned_epoch:
            planned_epoch = epoch
            epoch_seed = derive_seed(seed, "order", stage, "epoch", epoch)
            steps = epoch_steps(lengths, per_step, epoch_seed, settings.group_by_length)
        yield steps[in_epoch]


def _accelerator(mixed_precision: str) -> Accelerator:
    """This process's accelerator (cpu: see feedlearn.processes). The schedule counts global optimizer
    steps, so the scheduler steps once per optimizer step: accelerate's default steps it once per process."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", "no") != mixed_precision:
        AcceleratorState._reset_state()  # one process may train stages of other precisions before this one
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        step_scheduler_with_optimizer=False,
        mixed_precision=mixed_precision,
    )


def _optimizer(params: list, settings: TrainSettings, total_steps: int):
    """AdamW on `params` (torch's fused kernel, as transformers' Trainer uses by default) and the
    learning-rate schedule over `total_steps` optimizer steps."""
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True
    )
    scheduler = get_scheduler(
        settings.lr_schedule,
        optimizer,
        num_warmup_steps=math.ceil(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _accumulate(accelerator, model, objective: Objective, rows: list[dict], settings) -> float:
    """The gradients of one optimizer step on this process's `rows`, micro-batch by micro-batch (synced
    once, on the last); returns the step's loss (the global batch's, under several processes)."""
    step_loss = 0.0
    for m in range(settings.grad_accum):
        micro = rows[m * settings.batch_size : (m + 1) * settings.batch_size]
        batch = {k: v.to(accelerator.device) for k, v in objective.collate(micro).items()}
        last = m == settings.grad_accum - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = objective.loss(model, batch) / settings.grad_accum
            accelerator.backward(loss)
        step_loss += loss.item()
    if accelerator.num_processes > 1:
        step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
    return step_loss


def _save_model(accelerator: Accelerator, model, tokenizer, final: Path, done: dict) -> None:
    """The trained model and tokenizer in `final`, its `done.json` (with `done`) written last."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(final, state_dict=accelerator.get_state_dict(model))
        tokenizer.save_pretrained(final)
        write_json_atomic(final / DONE, done)


def epoch_steps(lengths: list[int], per_step: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch, a function of the seed alone.

    The examples are shuffled; with `group_by_length`, each window of 64 steps is sorted by length, cut
    into steps, and the steps shuffled again, so a batch pads to a length close to all of its rows.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order = order[: len(order) // per_step * per_step]
    if not group_by_length:
        return [order[i : i + per_step] for i in range(0, len(order), per_step)]
    steps = []
    window = 64 * per_step
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        group = [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
        steps.extend(group[j] for j in torch.randperm(len(group), generator=generator).tolist())
    return steps


def _save_checkpoint(accelerator: Accelerator, checkpoints: Checkpoints, step: int) -> None:
    """Every process saves its part of the state (accelerate's: model, optimizer, scheduler, RNGs)."""
    if accelerator.is_main_process:
        checkpoints.begin()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(checkpoints.writing))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoints.commit(step)
    accelerator.wait_for_everyone()
