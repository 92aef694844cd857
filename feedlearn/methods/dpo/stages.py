"""DPO's and Active DPO's stages: `PreferenceLearning`, reading and writing the run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from feedlearn.data.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from feedlearn.data.records import LabelRecord, PreferencePair, Record
from feedlearn.data.store import EVALUATED, is_evaluated
from feedlearn.errors import DataError
from feedlearn.feedback.label_book import LabelBook, check_labels
from feedlearn.feedback.labelers import build_labeler
from feedlearn.methods.common import Method
from feedlearn.methods.dpo.config import ActiveSettings, DPOConfig
from feedlearn.methods.dpo.layout import DPOLayout
from feedlearn.methods.dpo.objective import LiveReference, PreferenceObjective
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import process_state, zero3
from feedlearn.training.batches import tokenize_pairs
from feedlearn.training.scoring import packs_sequences, pair_logprobs
from feedlearn.training.trainer import is_trained

log = logging.getLogger(__name__)


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
    """The stages of one DPO or Active DPO run, reading and writing `run_dir/<run_id>/` (laid out by
    `DPOLayout`)."""

    config: DPOConfig
    layout: DPOLayout
    layout_class = DPOLayout

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
        cfg, folder = self.config, self.layout.train()
        labels = self.layout.labels()
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
            build_labeler(cfg.labeler, cfg.seed, self.layout.replies("labeler")), labels, cfg.query_budget
        )
        objective = PreferenceObjective(
            cfg.dpo, self.active, pairs, book, reference, tokenizer.pad_token_id, packs_sequences(model)
        )
        final = self.fit(folder, model, tokenizer, rows, objective, cfg.train)
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
        cfg, folder = self.config, self.layout.evaluation()
        if is_evaluated(folder):
            return json.loads((folder / EVALUATED).read_text())
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
        trained = self.layout.finished(self.layout.train() / "model", "train")
        policy, _ = load_policy(self._settings(str(trained)))
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
        labels = self.layout.labels()
        metrics["queries_used"] = len(read_jsonl(labels, LabelRecord)) if labels.exists() else 0
        if process_state().is_main_process:
            write_jsonl_atomic(
                folder / "margins.jsonl",
                [PairMargin(id=pairs[r["index"]].id, margin=m) for r, m in zip(rows, margins, strict=True)],
            )
            write_json_atomic(folder / EVALUATED, metrics)
            self.store.log_metrics(self.layout.name(folder), metrics)
        return metrics

    def run(self) -> None:
        """Train, then evaluate when held-out pairs are given."""
        self.train()
        if self.config.eval_data is not None:
            self.evaluate()


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
