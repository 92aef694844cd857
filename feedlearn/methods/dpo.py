"""DPO and Active DPO: preference learning from labeled pairs, or from labels asked for only where the
policy is unsure (spec: shared/methods/active-dpo.md).

Stages:
- `train`: DPO (sigmoid, IPO or hinge) against a frozen reference. Every label comes through a labeler
  (the dataset's own labels, an LLM judge, a human) with a budget and a cache in the run folder, so a
  label is paid for once and `queries_used` is exact across epochs and restarts. Plain DPO asks about
  every pair; Active DPO asks only where |m| <= gamma, m being the implicit reward margin, and for the
  other pairs trusts the policy's own sign(m) ("flip") or skips them ("drop").
- `evaluate`: held-out preference accuracy against the gold labels; it never queries the labeler.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import extract_model_from_parallel
from pydantic import Field

from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.preferences import load_pairs
from feedlearn.data.records import LabelRecord, PreferencePair, Record
from feedlearn.errors import DataError
from feedlearn.feedback.label_book import LabelBook, check_labels
from feedlearn.feedback.labelers import DatasetLabelerSettings, LabelerSettings, build_labeler
from feedlearn.losses import (
    DPOLoss,
    active_targets,
    dpo_loss,
    implicit_reward_margin,
    reward_metrics,
    reward_sums,
    select_queries,
)
from feedlearn.methods.common import Method, OneSource, RecipeConfig, Settings
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import StepSums, process_state, zero3
from feedlearn.tasks.word_preferences import WordPreferenceTask
from feedlearn.training.batches import collate_pairs, tokenize_pairs
from feedlearn.training.scoring import packs_sequences, pair_logprobs, sequence_scores
from feedlearn.training.trainer import TrainSettings, is_trained

log = logging.getLogger(__name__)


class SyntheticPairs(Settings):
    """Pairs generated from the hidden-rule word task (`feedlearn.tasks.word_preferences`)."""

    n: int = Field(gt=0, description="How many pairs.")
    seed: int = Field(default=0, description="Same seed, same pairs.")
    task: WordPreferenceTask = Field(
        default_factory=WordPreferenceTask, description="The hidden rule; keep it equal for train and eval."
    )


class PreferenceData(OneSource):
    """Where pairs come from: a file (JSONL, JSON or parquet, TRL's forms), or the synthetic task."""

    path: str | None = Field(default=None, description="A local .jsonl, .json or .parquet file.")
    dataset: DatasetSource | None = Field(
        default=None, description="A `datasets` split (hub id or save_to_disk folder), in TRL's forms."
    )
    synthetic: SyntheticPairs | None = Field(default=None, description="Generate pairs instead.")
    limit: int | None = Field(default=None, gt=0, description="Use only the first `limit` pairs.")

    def load(self, prefix: str, split: Literal["train", "test"] = "train") -> list[PreferencePair]:
        """The pairs, read or generated (generated test pairs never coincide with generated training ones)."""
        if self.dataset is not None:
            return load_pairs(export_rows(self.dataset), self.limit)
        if self.path is not None:
            return load_pairs(self.path, self.limit)
        s = self.synthetic
        return s.task.pairs(s.n, s.seed, prefix, split)[: self.limit]


class DPOSettings(Settings):
    """The preference loss and its reference."""

    beta: float = Field(default=0.1, gt=0, description="Strength of the KL anchor to the reference.")
    loss: DPOLoss = Field(default="sigmoid", description="sigmoid (DPO), ipo or hinge.")
    reference: Literal["precomputed", "live"] = Field(
        default="precomputed",
        description="precomputed: the reference's log-probs are computed once before training and cached "
        "in the run folder (exact: the reference is frozen); live: computed each step, with the LoRA "
        "adapter disabled, or from a frozen copy when all weights train.",
    )
    reference_model: str | None = Field(
        default=None,
        description="Another model as the reference (same tokenizer); None: the starting policy.",
    )


class ActiveSettings(Settings):
    """Active DPO's selection rule."""

    gamma: float = Field(
        default=1.3,
        ge=0,
        description="Ask for a label when |m| <= gamma, m = beta x log-ratio margin (beta-scaled units: "
        "rescale it when beta changes).",
    )
    pseudo_label: Literal["flip", "drop"] = Field(
        default="flip", description="Confident pairs: train on sign(m) (flip), or skip them (drop)."
    )
    reuse_labels: bool = Field(
        default=False,
        description="A confident pair whose label was bought earlier (an unsure pair in an earlier "
        "epoch) trains on that label instead of sign(m) (flip) or being skipped (drop). Off: the rule "
        "alone decides, as in the reference.",
    )


class DPOConfig(RecipeConfig):
    """A DPO recipe: every training pair's label is asked for (once) from the labeler."""

    method: Literal["dpo"] = "dpo"
    train_data: PreferenceData = Field(description="Training pairs (labeled, or unlabeled with a labeler).")
    eval_data: PreferenceData | None = Field(default=None, description="Held-out labeled pairs.")
    labeler: LabelerSettings = Field(
        default_factory=DatasetLabelerSettings, description="Who labels training pairs."
    )
    query_budget: int | None = Field(
        default=None,
        gt=0,
        description="Most labels to pay for; once spent, pairs still needing one get no gradient.",
    )
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="Loss and reference.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimization.")
    score_batch_size: int = Field(default=16, gt=0, description="Pairs per batch when scoring without grad.")
    max_prompt_length: int | None = Field(
        default=None,
        gt=0,
        description="A longer prompt keeps its last this many tokens (TRL's keep_end); None: no limit "
        "beyond train.max_length.",
    )
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="A pair with a side longer than train.max_length: cut that side at its end, as TRL does "
        "(truncate), or leave the pair out (drop). Either way the count is logged (`train/data`), and a "
        "pair whose prompt leaves no room for a response is left out.",
    )


class ActiveDPOConfig(DPOConfig):
    """An Active DPO recipe: labels are asked for only where the policy is unsure."""

    method: Literal["active-dpo"] = "active-dpo"
    active: ActiveSettings = Field(default_factory=ActiveSettings, description="Selection rule.")


STAGES = {
    "train": "DPO on the preference pairs, asking the labeler for labels (Active DPO: only where unsure)",
    "evaluate": "preference accuracy on held-out labeled pairs",
}
"""Each stage, with what it does (shown by `feedlearn dpo --help`)."""


class PairMargin(Record):
    """One held-out pair's gold-signed implicit reward margin (`evaluate/margins.jsonl`): runs scored on the
    same pairs compare pair by pair."""

    id: str
    margin: float


class ReferenceLogprobs(Record):
    """The frozen reference's summed log-probs of a pair's two responses."""

    id: str
    a: float
    b: float


class PreferenceLearning(Method):
    """The stages of one DPO or Active DPO run, reading and writing `run_dir/<run_id>/`."""

    @property
    def active(self) -> ActiveSettings | None:
        """Active DPO's selection rule; None for plain DPO."""
        return getattr(self.config, "active", None)

    def base_model_path(self) -> str:
        """The starting policy: the configured model, or a tiny model built on the pairs' text."""
        if self.config.model.path != "tiny":
            return self.config.model.path
        texts = [
            _text(p.prompt) + _text(side) for p in self.config.train_data.load("train") for side in (p.a, p.b)
        ]
        return str(build_tiny_model(self.config.tiny, texts[:20000], self.config.seed))

    def reference_logprobs(
        self, model, tokenizer, pairs: list[PreferencePair], rows: list[dict], path: Path
    ) -> dict[int, tuple[float, float]]:
        """The reference's log-probs of every row's pair, computed once and cached in `path` by pair id."""
        cache = JsonlAppender(path, ReferenceLogprobs) if process_state().is_main_process else None
        process_state().wait_for_everyone()
        known = {r.id: (r.a, r.b) for r in read_jsonl(path, ReferenceLogprobs)} if path.exists() else {}
        todo = [r for r in rows if pairs[r["index"]].id not in known]
        if todo:
            scored = pair_logprobs(
                model, todo, tokenizer.pad_token_id, self.config.score_batch_size, self.progress, "reference"
            )
            if cache is not None:
                cache.append(*(ReferenceLogprobs(id=pairs[i].id, a=a, b=b) for i, (a, b) in scored.items()))
            known.update({pairs[i].id: ab for i, ab in scored.items()})
        return {r["index"]: known[pairs[r["index"]].id] for r in rows}

    # ---- stages ---------------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train the policy on the training pairs; labels come from the labeler through the label book."""
        cfg, folder = self.config, self.store.stage("train")
        labels = folder / "labels.jsonl"
        if is_trained(folder):
            records = read_jsonl(labels, LabelRecord) if labels.exists() else []
            if records:  # a run whose labels were all unusable fails on every rerun too
                check_labels({r.id: r.label for r in records}, records[0].source, labels)
            return folder / "model"
        pairs = cfg.train_data.load("train")
        model, tokenizer = load_policy(self._settings(self.base_model_path()), trainable=True, seed=cfg.seed)
        disable_dropout(model)
        rows = self.tokenize(pairs, tokenizer)
        self.store.log_metrics(
            "train/data",
            {
                "pairs": len(pairs),
                "truncated": sum(r["truncated"] for r in rows),
                "dropped": len(pairs) - len(rows),
            },
        )
        reference = self._reference(model, tokenizer, pairs, rows, folder)
        book = LabelBook(
            build_labeler(cfg.labeler, cfg.seed, self.replies("labeler")), labels, cfg.query_budget
        )
        objective = PreferenceObjective(
            cfg.dpo, self.active, pairs, book, reference, tokenizer.pad_token_id, packs_sequences(model)
        )
        final = self.fit("train", model, tokenizer, rows, objective, cfg.train)
        if process_state().is_main_process:
            book.check()  # a run in which no label was usable fails, even one too short for the early check
        return final

    def tokenize(self, pairs: list[PreferencePair], tokenizer) -> list[dict]:
        """The pairs as rows, truncated (or dropped) to the recipe's lengths; see `tokenize_pairs`."""
        cfg = self.config
        return tokenize_pairs(pairs, tokenizer, cfg.train.max_length, cfg.max_prompt_length, cfg.overlong)

    def reference_path(self) -> str:
        """The reference model: `dpo.reference_model`, or else the starting policy."""
        return self.config.dpo.reference_model or self.base_model_path()

    def _reference(self, model, tokenizer, pairs, rows, folder):
        """Precomputed log-probs {index: (a, b)}, or a callable giving a batch's reference log-probs live.
        The policy itself serves before training when it is the reference."""
        separate = self.config.dpo.reference_model is not None
        if self.config.dpo.reference == "precomputed":
            scorer = load_policy(self._settings(self.reference_path()))[0] if separate else model
            return self.reference_logprobs(
                scorer, tokenizer, pairs, rows, folder / "reference_logprobs.jsonl"
            )
        if self.config.model.lora is not None and not separate:
            return LiveReference(None)
        if zero3():
            log.warning(
                "dpo.reference live with a separate reference_model under ZeRO-3: every process holds the "
                "whole reference (only the policy is sharded); reference: precomputed scores it once "
                "before training and holds none"
            )
        frozen, _ = load_policy(self._settings(self.reference_path()))
        return LiveReference(frozen.eval().requires_grad_(False))

    def evaluate(self) -> dict[str, float]:
        """Preference accuracy (%) of the trained policy on the held-out pairs, against their gold labels:
        the share whose implicit reward margin has the gold label's sign (a zero margin counts half)."""
        cfg, folder = self.config, self.store.stage("evaluate")
        if cfg.eval_data is None:
            raise DataError("evaluate needs held-out pairs: set eval_data in the recipe")
        pairs = cfg.eval_data.load("eval", "test")
        if any(p.label is None for p in pairs):
            raise DataError("eval_data must be labeled (chosen/rejected, or a label on each pair)")
        model, tokenizer = load_policy(self._settings(self.reference_path()))
        rows = self.tokenize(pairs, tokenizer)
        reference = self.reference_logprobs(
            model, tokenizer, pairs, rows, folder / "reference_logprobs.jsonl"
        )
        policy, _ = load_policy(self._settings(str(self.store.stage("train") / "model")))
        scored = pair_logprobs(
            policy, rows, tokenizer.pad_token_id, cfg.score_batch_size, self.progress, "eval"
        )
        margins = gold_margins(
            [pairs[r["index"]].label for r in rows],
            [scored[r["index"]] for r in rows],
            [reference[r["index"]] for r in rows],
            cfg.dpo.beta,
        )
        metrics = preference_metrics(margins)
        labels = self.store.stage("train") / "labels.jsonl"
        metrics["queries_used"] = len(read_jsonl(labels, LabelRecord)) if labels.exists() else 0
        if process_state().is_main_process:
            write_jsonl_atomic(
                folder / "margins.jsonl",
                [PairMargin(id=pairs[r["index"]].id, margin=m) for r, m in zip(rows, margins, strict=True)],
            )
            write_json_atomic(folder / "metrics.json", metrics)
            self.store.log_metrics("evaluate", metrics)
        return metrics

    def run(self) -> None:
        """Train, then evaluate when held-out pairs are given."""
        self.train()
        if self.config.eval_data is not None:
            self.evaluate()


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


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout layer of `model` (a LoRA adapter's too), as TRL's DPOTrainer does by default: the
    log-probs, and so the margins that decide Active DPO's queries, are then the same on every forward,
    and at step 0 the policy scores exactly as its reference."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def gold_margins(
    gold: list[int], policy: list[tuple[float, float]], reference: list[tuple[float, float]], beta: float
) -> list[float]:
    """Each pair's implicit reward margin signed by its gold label (> 0: the policy prefers the gold side)."""
    return [
        label * beta * ((pa - ra) - (pb - rb))
        for label, (pa, pb), (ra, rb) in zip(gold, policy, reference, strict=True)
    ]


def pair_credit(margin: float) -> float:
    """One pair's share of the accuracy from its gold-signed margin: 1 right, 0 wrong, a tie counts half."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def preference_metrics(margins: list[float]) -> dict[str, float]:
    """Preference accuracy (%, a zero margin counts half) and the mean of the gold-signed margins."""
    right = sum(pair_credit(m) for m in margins)
    return {
        "preference_accuracy": round(100.0 * right / len(margins), 2),
        "reward_margin": sum(margins) / len(margins),
        "pairs": len(margins),
    }


def _text(value) -> str:
    return value if isinstance(value, str) else "\n".join(m.content for m in value)
