"""C3PO's objective (Stephan et al., 2024, eq. 5): DPO on the in-scope pair (the teacher's revision over the
baseline), plus anchors that keep the base model's behaviour near scope (weight `sigma_hard`) and out of
scope (`sigma_soft`), either SFT on the base model's own response (`lam` 0) or KL to the base model (`lam`
1); optionally SFT on the revision (`chosen_sft`, RPO's term). The baselines SCD, SCD + negatives and DPO
train on subsets of the same zipped rows."""

from __future__ import annotations

from typing import Literal

import torch
from accelerate.utils import extract_model_from_parallel
from pydantic import Field

from feedlearn.data.records import Message
from feedlearn.losses import (
    anchor_loss,
    dpo_loss,
    reward_metrics,
    reward_sums,
    sequence_logprobs,
    token_mean_nll,
)
from feedlearn.methods.c3po.data import C3POSample
from feedlearn.methods.common import Settings
from feedlearn.processes import StepSums
from feedlearn.training.batches import collate, completion_row, report_dropped

TrainMethod = Literal["c3po", "scd", "scd_negatives", "dpo"]


class LossSettings(Settings):
    """C3PO's loss: DPO in scope, anchors near (sigma_hard) and out of scope (sigma_soft)."""

    beta: float = Field(default=0.1, gt=0, description="DPO's beta.")
    sigma_soft: float = Field(default=0.2, ge=0, description="Weight of the out-of-scope anchor.")
    sigma_hard: float = Field(default=0.1, ge=0, description="Weight of the near-scope anchor.")
    lam: float = Field(
        default=0.0, ge=0, le=1, description="Anchor form: 0 = SFT on the baseline, 1 = KL to the base model."
    )
    temperature: float = Field(default=1.0, gt=0, description="Temperature of the KL anchor.")
    chosen_sft: float = Field(
        default=0.0,
        ge=0,
        description="Weight of SFT on the revision added to the in-scope DPO term, as in RPO (Pang et al., "
        "2024; TRL's loss_type [sigmoid, sft]): keeps DPO from making the revision itself less likely. "
        "0 = the paper's loss.",
    )


PAIR = ("in_pos", "in_neg")
"""The preference pair of a row: the teacher's revision (chosen) and the baseline (rejected)."""
PARTS: dict[str, tuple[str, ...]] = {
    "c3po": (*PAIR, "near", "out"),
    "scd": ("in_pos",),
    "scd_negatives": ("in_pos", "near", "out"),
    "dpo": PAIR,
}
"""The parts of a row each method trains on, in batch order."""


class ScopeObjective:
    """The loss of one method over zipped rows; the reference is the base model (LoRA disabled)."""

    def __init__(self, method: TrainMethod, loss: LossSettings, pad_id: int):
        self.method, self.settings, self.pad_id = method, loss, pad_id
        self.parts = PARTS[method]
        self.sums = StepSums()  # this step's sums of the loss parts and `reward_sums`

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The method's parts of every row, as one padded batch: part by part, B rows each."""
        return collate([r[part] for part in self.parts for r in rows], self.pad_id)

    def loss(self, model, batch) -> torch.Tensor:
        s = self.settings
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chunks = dict(zip(self.parts, logits.chunk(len(self.parts)), strict=True))
        labels = dict(zip(self.parts, batch["labels"].chunk(len(self.parts)), strict=True))
        refs = self._reference(model, batch, len(labels["in_pos"]))
        if self.method == "scd":
            return token_mean_nll(chunks["in_pos"], labels["in_pos"]).mean()
        if self.method == "scd_negatives":
            return (
                token_mean_nll(chunks["in_pos"], labels["in_pos"])
                + 0.5 * token_mean_nll(chunks["out"], labels["out"])
                + 0.5 * token_mean_nll(chunks["near"], labels["near"])
            ).mean()
        pos, neg = (
            sequence_logprobs(chunks["in_pos"], labels["in_pos"]),
            sequence_logprobs(chunks["in_neg"], labels["in_neg"]),
        )
        ref_pos = sequence_logprobs(refs["in_pos"], labels["in_pos"])
        ref_neg = sequence_logprobs(refs["in_neg"], labels["in_neg"])
        preference = dpo_loss(pos, neg, ref_pos, ref_neg, torch.ones_like(pos), s.beta)
        total, parts = preference, {"dpo": preference}
        self.sums.add(reward_sums(pos.detach(), neg.detach(), ref_pos, ref_neg, torch.ones_like(pos), s.beta))
        if self.method == "c3po":
            parts["chosen_sft"] = token_mean_nll(chunks["in_pos"], labels["in_pos"])
            total = total + s.chosen_sft * parts["chosen_sft"]
            for part, weight in (("out", s.sigma_soft), ("near", s.sigma_hard)):
                parts[f"anchor_{part}"] = anchor_loss(
                    chunks[part], labels[part], refs.get(part), s.lam, s.temperature
                )
                total = total + weight * parts[f"anchor_{part}"]
        for name, values in parts.items():  # each part unweighted, as a sum over rows with their count
            self.sums.add({f"losses/{name}": values.sum(), f"rows/{name}": len(values)})
        return total.mean()

    def step_metrics(self) -> dict[str, float]:
        """This step's mean of each loss part (`losses/<part>`, unweighted) and TRL's `rewards/*`, over
        every process's rows; the preference methods (dpo, c3po) only."""
        sums = self.sums.pop()
        if not sums:
            return {}
        rewards = reward_metrics(sums)
        parts = [name.removeprefix("rows/") for name in sums if name.startswith("rows/")]
        return {f"losses/{part}": sums[f"losses/{part}"] / sums[f"rows/{part}"] for part in parts} | rewards

    @torch.no_grad()
    def _reference(self, model, batch, rows: int) -> dict[str, torch.Tensor]:
        """The base model's logits of the parts that need them: the DPO pair, and the anchors when they
        are KL (lam > 0). The base model is the policy with its LoRA adapter disabled."""
        needed = {"dpo": PAIR, "c3po": PARTS["c3po"] if self.settings.lam > 0 else PAIR}.get(self.method, ())
        if not needed:
            return {}
        assert self.parts[: len(needed)] == needed  # parts are laid out part by part, `rows` rows each
        peft_model = extract_model_from_parallel(model)  # DDP / FSDP / DeepSpeed wrap the peft model
        with peft_model.disable_adapter():
            n = len(needed) * rows
            logits = model(
                input_ids=batch["input_ids"][:n], attention_mask=batch["attention_mask"][:n]
            ).logits
        return dict(zip(needed, logits.chunk(len(needed)), strict=True))


def zipped_rows(samples: list[C3POSample], tokenizer, max_length: int) -> list[dict]:
    """Training rows zipping each in-scope pair (prompt, revised > baseline) with one near-scope and one
    out-of-scope (prompt, baseline), cycling through the shorter lists. Over-long rows are dropped."""
    train_rows = [s for s in samples if s.split == "train"]
    ins = [s for s in train_rows if s.scope == "in" and s.revised]
    near = [s for s in train_rows if s.scope == "near"] or ins
    out = [s for s in train_rows if s.scope == "out"] or ins

    def encode(s: C3POSample, text: str) -> dict:
        ids, labels = completion_row(
            tokenizer, [Message(role="user", content=s.prompt)], [Message(role="assistant", content=text)]
        )
        return {"input_ids": ids, "labels": labels}

    rows = []
    for i, s in enumerate(ins):
        parts = {
            "in_pos": encode(s, s.revised),
            "in_neg": encode(s, s.baseline),
            "near": encode(near[i % len(near)], near[i % len(near)].baseline),
            "out": encode(out[i % len(out)], out[i % len(out)].baseline),
        }
        length = max(len(p["input_ids"]) for p in parts.values())
        if length <= max_length:
            rows.append({**parts, "length": length})
    report_dropped(len(ins) - len(rows), len(ins), "rows", max_length)
    return rows
