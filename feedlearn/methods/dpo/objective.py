"""DPO's training objective over pair batches, with Active DPO's label bookkeeping, and the live reference."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from accelerate.utils import extract_model_from_parallel

from feedlearn.data.records import PreferencePair
from feedlearn.feedback.label_book import LabelBook
from feedlearn.losses import (
    active_targets,
    dpo_loss,
    implicit_reward_margin,
    reward_metrics,
    reward_sums,
    select_queries,
)
from feedlearn.methods.dpo.config import ActiveSettings, DPOSettings
from feedlearn.processes import StepSums
from feedlearn.training.batches import collate_pairs
from feedlearn.training.scoring import sequence_scores


class LiveReference:
    """Reference log-probs computed each step: the policy with its LoRA adapter disabled (`model` None),
    or a frozen copy."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, policy, batch) -> torch.Tensor:
        if self.model is not None:
            model, context = self.model, nullcontext()
        else:
            model = extract_model_from_parallel(policy)  # DDP / FSDP / DeepSpeed wrap the peft model
            context = model.disable_adapter()
        with context:
            return sequence_scores(model, batch)


class PreferenceObjective:
    """The training loss of DPO / Active DPO over pair batches, with its label bookkeeping."""

    def __init__(
        self,
        dpo: DPOSettings,
        active: ActiveSettings | None,
        pairs: list[PreferencePair],
        book: LabelBook,
        reference: dict[int, tuple[float, float]] | LiveReference,
        pad_id: int,
        packed: bool,
    ):
        self.dpo, self.active, self.pairs, self.book, self.reference = dpo, active, pairs, book, reference
        self.pad_id, self.packed = pad_id, packed  # `packed`: see `scoring.packs_sequences`
        self.sums = StepSums()  # this step's `reward_sums` and pseudo-label counts

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """A pair batch, with the precomputed reference log-probs as `reference` [2B] when there are some."""
        batch = collate_pairs(rows, self.pad_id, self.packed)
        if isinstance(self.reference, dict):
            ab = [self.reference[r["index"]] for r in rows]
            batch["reference"] = torch.tensor([a for a, _ in ab] + [b for _, b in ab], dtype=torch.float32)
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        """Mean preference loss over the batch's pairs (a skipped pair adds 0, so accumulation is exact)."""
        policy_a, policy_b = sequence_scores(model, batch).chunk(2)
        reference = batch["reference"] if "reference" in batch else self.reference(model, batch)
        ref_a, ref_b = reference.chunk(2)
        beta = self.dpo.beta
        margins = implicit_reward_margin(policy_a.detach(), policy_b.detach(), ref_a, ref_b, beta)
        labels = self._labels([self.pairs[i] for i in batch["index"].tolist()], margins)
        mode = self.active.pseudo_label if self.active is not None else "drop"
        targets, weights = active_targets(margins, labels.to(margins.device), mode)
        self._count(batch["index"].tolist(), labels, targets)
        self.sums.add(reward_sums(policy_a.detach(), policy_b.detach(), ref_a, ref_b, targets, beta))
        losses = dpo_loss(policy_a, policy_b, ref_a, ref_b, targets, beta, self.dpo.loss)
        return (weights * losses).sum() / len(losses)

    def _labels(self, pairs: list[PreferencePair], margins: torch.Tensor) -> torch.Tensor:
        """The labels of the pairs the rule asks about (from the cache, or bought now; 0 if the budget is
        spent), NaN where the policy labels the pair itself (a label bought earlier with
        `active.reuse_labels`)."""
        ask = (
            select_queries(margins, self.active.gamma)
            if self.active
            else torch.ones_like(margins, dtype=bool)
        )
        asked = [p for p, a in zip(pairs, ask.tolist(), strict=True) if a]
        answers = dict(zip([p.id for p in asked], self.book.get(asked), strict=True))
        reuse = self.active is not None and self.active.reuse_labels
        labels = []
        for pair in pairs:
            if pair.id in answers:
                labels.append(answers[pair.id] if answers[pair.id] is not None else 0)
            else:
                cached = self.book.labels.get(pair.id) if reuse else None
                labels.append(float("nan") if cached is None else cached)
        return torch.tensor(labels, dtype=torch.float32)

    def _count(self, indices: list[int], labels: torch.Tensor, targets: torch.Tensor) -> None:
        if self.active is None or self.active.pseudo_label != "flip":
            return
        pseudo = torch.isnan(labels)
        gold = torch.tensor([float("nan") if (g := self.pairs[i].label) is None else g for i in indices])
        has_gold = pseudo & ~torch.isnan(gold)
        agree = has_gold & (gold == targets.cpu())
        self.sums.add({"pseudo": pseudo.sum(), "with_gold": has_gold.sum(), "agree": agree.sum()})

    def step_metrics(self) -> dict[str, float]:
        """Labels paid for so far, this step's pseudo-labels (summed over processes) and how many of them
        agree with the gold labels where the data has some, and TRL's `rewards/*` of the step."""
        sums = self.sums.pop()
        metrics = {"queries_used": float(self.book.queries_used), "pseudo_labels": sums.get("pseudo", 0.0)}
        metrics |= reward_metrics(sums)  # TRL's names, over the step's pairs with a preference
        metrics.update(getattr(self.book.labeler, "stats", {}))  # a judge's garbage / bias counters
        if sums.get("with_gold"):
            metrics["pseudo_label_agreement"] = sums["agree"] / sums["with_gold"]
        return metrics
