"""C3PO's stages: `C3PO`, one method per stage, reading and writing the run folder."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from functools import cached_property, partial
from pathlib import Path

from feedlearn.backends.base import Backend, ParsedAsker, SamplingParams
from feedlearn.data.hub import DatasetSource, export_rows
from feedlearn.data.jsonl import (
    JsonlAppender,
    read_jsonl,
    require_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from feedlearn.data.records import Message, SFTExample
from feedlearn.data.store import DONE, EVALUATED, is_done, is_evaluated
from feedlearn.errors import ConfigError, DataError
from feedlearn.judges.likert import LikertJudge
from feedlearn.methods.c3po.config import C3POConfig
from feedlearn.methods.c3po.data import (
    COT,
    IN_CONTEXT,
    C3POSample,
    PromptRow,
    TeacherPrompts,
    after_answer,
    answer_each,
    split_prompts,
)
from feedlearn.methods.c3po.layout import C3POLayout
from feedlearn.methods.c3po.objective import ScopeObjective, TrainMethod, zipped_rows
from feedlearn.methods.common import Method
from feedlearn.models.loading import load_policy
from feedlearn.models.tiny import build_tiny_model
from feedlearn.processes import from_main, process_state, shared_map, total
from feedlearn.seeds import derive_seed
from feedlearn.tasks import instructions
from feedlearn.teachers.verbal import (
    LLMTeacher,
    OfflineTeacher,
    Teacher,
    parse_revision,
    revision_question,
)
from feedlearn.training.batches import tokenize_sft
from feedlearn.training.trainer import SFTObjective, is_trained
from feedlearn.verifiers.verbal import Feedback, load_feedbacks, scope_metrics, select_feedbacks

log = logging.getLogger(__name__)


STAGES = {
    "sft": "warm-start a tiny offline model on its instruction corpus",
    "sample": "prompts per scope from the teacher, baseline answers, the teacher's revisions",
    "train": "one LoRA adapter per method of `methods` (C3PO, SCD, SCD + negatives, DPO)",
    "combine": "merge the C3PO adapters of several feedbacks into one",
    "evaluate": "per scope, how often each model follows the feedback and how often it changed",
}
"""Each stage, with what it does (shown by `feedlearn c3po --help`)."""


class C3PO(Method):
    """The stages of one C3PO run, reading and writing `run_dir/<run_id>/` (laid out by `C3POLayout`)."""

    config: C3POConfig
    layout: C3POLayout
    layout_class = C3POLayout

    # ---- inputs ---------------------------------------------------------------------------------------

    def feedbacks(self) -> list[Feedback]:
        """The selected feedbacks."""
        cfg = self.config
        if cfg.feedback_file == "builtin":
            found = [task.feedback for task in instructions.BUILTIN_FEEDBACKS.values()]
        elif isinstance(cfg.feedback_file, DatasetSource):
            found = load_feedbacks(export_rows(cfg.feedback_file))
        else:
            found = load_feedbacks(cfg.feedback_file)
        return select_feedbacks(found, cfg.feedback_ids, cfg.feedback_categories)

    def general_prompts(self, n: int) -> list[str]:
        """`n` out-of-scope prompts, a seeded draw from the general prompt file."""
        source = self.config.general_prompts
        if source == "builtin":
            return instructions.general_prompts(n, self.config.seed)

        if isinstance(source, DatasetSource):
            path = export_rows(source)
        else:
            path = require_file(source, missing="general prompt file not found")
        prompts = instructions.read_prompts(path)
        if len(prompts) < n:
            log.warning("%s holds %d prompts, fewer than the %d asked for", path, len(prompts), n)
        prompts = list(dict.fromkeys(prompts))
        rng = random.Random(derive_seed(self.config.seed, "data", "general-prompts"))
        return rng.sample(prompts, min(n, len(prompts)))

    @cached_property
    def teacher(self) -> Teacher:
        """The configured teacher, built once per run."""
        t = self.config.teacher
        if t.kind == "offline":
            return OfflineTeacher(self.config.seed)
        return LLMTeacher(
            t.asker(self.config.generation_batch_size, self.config.seed, self.layout.replies("teacher"))
        )

    # ---- policies -------------------------------------------------------------------------------------

    def base_model_path(self) -> str:
        """The base policy: the configured model, or a tiny model after its warm start."""
        if self.config.model.path != "tiny":
            return self.config.model.path
        return str(self.layout.finished(self.layout.sft() / "model", "sft"))

    # ---- stages ---------------------------------------------------------------------------------------

    def sft(self) -> Path:
        """Warm start of a tiny model on the synthetic instruction corpus (only for `model.path: tiny`)."""
        cfg, folder = self.config, self.layout.sft()
        if cfg.model.path != "tiny":
            raise ConfigError("the sft stage warms up a tiny model: set model.path to 'tiny'")
        if cfg.sft is None:
            raise ConfigError("a tiny model needs a warm start: add an 'sft' section to the recipe")
        if is_trained(folder):
            return folder / "model"
        chats = instructions.corpus(cfg.sft.chats, cfg.seed)
        texts = [f"{p}\n{r}" for p, r in chats] + [IN_CONTEXT, COT]
        base = build_tiny_model(cfg.tiny, texts, cfg.seed)
        model, tokenizer = load_policy(
            self._settings(str(base)).model_copy(update={"lora": None}), trainable=True
        )
        examples = [
            SFTExample(
                id=str(i),
                messages=[Message(role="user", content=p), Message(role="assistant", content=r)],
            )
            for i, (p, r) in enumerate(chats)
        ]
        rows = tokenize_sft(examples, tokenizer, cfg.sft.train.max_length)
        return self.fit(folder, model, tokenizer, rows, SFTObjective(tokenizer.pad_token_id), cfg.sft.train)

    def sample(self) -> list[Path]:
        """Prompts, baselines, revisions, in-context and CoT responses, for every selected feedback."""
        return [self._sample(f) for f in self.feedbacks()]

    def _sample(self, feedback: Feedback) -> Path:
        """One feedback's samples, resumable by prompt id. Under several processes each samples its share
        of every chunk (seeded by the prompt ids) and the main process alone writes them."""
        s = self.config.sample
        folder = self.layout.sample(feedback.short_id)
        out = JsonlAppender(folder / "samples.jsonl", C3POSample) if process_state().is_main_process else None
        done = from_main(lambda: set(out.ids))
        prompts = from_main(lambda: self._prompts(feedback, folder))
        if all(p["id"] in done for p in prompts):
            return folder / "samples.jsonl"
        backend = self.generation_backend(self.base_model_path())
        sample = partial(self._sample_rows, feedback, backend)
        began, sampled = time.perf_counter(), 0
        # Chunks are fixed slices of the prompt list: a resumed stage batches what an uninterrupted one did.
        for start in range(0, len(prompts), s.chunk_size):
            chunk = [p for p in prompts[start : start + s.chunk_size] if p["id"] not in done]
            if not chunk:
                continue
            rows = shared_map(sample, chunk)
            sampled += len(chunk)
            if out is not None:
                out.append(*(row for row in rows if row is not None))
                log.info(
                    "%s: sampled %d / %d prompts",
                    feedback.short_id,
                    min(start + s.chunk_size, len(prompts)),
                    len(prompts),
                )
        garbage = total(getattr(self.teacher, "garbage_replies", 0))
        if out is not None:
            self.store.log_metrics(
                self.layout.name(folder),
                {
                    "samples": len(out.ids),
                    "dropped": len(prompts) - len(out.ids),
                    "teacher/garbage_replies": garbage,
                    "charts/samples_per_s": sampled / (time.perf_counter() - began),  # this run's prompts
                },
            )
        return folder / "samples.jsonl"

    def _sample_rows(
        self, feedback: Feedback, backend: Backend, chunk: list[dict]
    ) -> list[C3POSample | None]:
        """Each prompt's sample: the baseline, on the test split the in-context and CoT responses, on in-scope
        training prompts the teacher's revision; None where a completion is missing (dropped, as in the
        paper)."""
        s = self.config.sample
        sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)

        def keys(kind: str, rows: list[dict]) -> list[str]:
            return [self.layout.sample_key(feedback.short_id, p["id"], kind) for p in rows]

        baselines = answer_each(backend, sampling, [p["prompt"] for p in chunk], keys("baseline", chunk))
        tests = [i for i, p in enumerate(chunk) if p["split"] == "test"]
        test_rows = [chunk[i] for i in tests]
        in_context = answer_each(
            backend,
            sampling,
            [IN_CONTEXT.format(prompt=p["prompt"], content=feedback.content) for p in test_rows],
            keys("in-context", test_rows),
        )
        cot = answer_each(
            backend,
            sampling,
            [COT.format(prompt=p["prompt"], content=feedback.content) for p in test_rows],
            keys("cot", test_rows),
        )
        extra = {
            i: {"in_context": a, "cot": after_answer(c)}
            for i, a, c in zip(tests, in_context, cot, strict=True)
        }
        to_revise = [i for i, p in enumerate(chunk) if p["scope"] == "in" and p["split"] == "train"]
        revised = self._revise(
            feedback, backend, sampling, [chunk[i] for i in to_revise], [baselines[i] for i in to_revise]
        )
        revisions = dict(zip(to_revise, revised, strict=True))
        return [
            None
            if not baselines[i].strip() or (i in revisions and not revisions[i])
            else C3POSample(**p, baseline=baselines[i], revised=revisions.get(i), **extra.get(i, {}))
            for i, p in enumerate(chunk)
        ]

    def _revise(
        self, feedback: Feedback, backend: Backend, sampling: SamplingParams, rows: list[dict], baselines
    ) -> list[str | None]:
        """The revisions of in-scope baselines, by `sample.reviser`: the teacher's, or the policy's own (the
        teacher's revision request, one sample each, seeded by the prompt's id); None where none came."""
        if self.config.sample.reviser == "teacher":
            return self.teacher.revise(feedback, [r["prompt"] for r in rows], baselines)
        questions = [
            revision_question(feedback, r["prompt"], b) for r, b in zip(rows, baselines, strict=True)
        ]
        keys = [self.layout.sample_key(feedback.short_id, r["id"], "revised") for r in rows]
        return [parse_revision(reply) for reply in answer_each(backend, sampling, questions, keys)]

    def _prompts(self, feedback: Feedback, folder: Path) -> list[dict]:
        """Every prompt of the three scopes with its split, asked of the teacher once and saved."""
        path = folder / "prompts.jsonl"
        if path.exists():
            return [p.model_dump() for p in read_jsonl(path, PromptRow)]
        s, teacher = self.config.sample, self.teacher
        # each teacher reply is saved as it comes, so a crash midway loses no paid call
        asked = JsonlAppender(folder / "teacher_prompts.jsonl", TeacherPrompts)
        if "categories" not in asked:
            k = math.ceil(s.prompts_per_scope / s.prompts_per_category)
            asked.append(TeacherPrompts(id="categories", prompts=teacher.categories(feedback, k)))
        replies = {r.id: r.prompts for r in asked.records()}
        categories = replies["categories"]
        if not categories:
            raise DataError(f"feedback {feedback.short_id}: the teacher proposed no categories")
        prompts: list[dict] = []
        for scope in ("in", "near"):
            seen = set()
            for category in categories:
                key = f"{scope}:{category}"
                if key not in replies:
                    replies[key] = teacher.prompts(feedback, category, scope, s.prompts_per_category)
                    asked.append(TeacherPrompts(id=key, prompts=replies[key]))
                for text in replies[key]:
                    if text not in seen:
                        seen.add(text)
                        prompts.append({"scope": scope, "category": category, "prompt": text})
        in_count = sum(p["scope"] == "in" for p in prompts)
        prompts += [
            {"scope": "out", "category": "general", "prompt": p} for p in self.general_prompts(in_count)
        ]
        seed = derive_seed(self.config.seed, "data", "split", feedback.id)
        rows = split_prompts(prompts, s.test_fraction, seed)
        write_jsonl_atomic(path, rows)
        return [r.model_dump() for r in rows]

    def train(self) -> list[Path]:
        """One adapter per method and feedback."""
        return [self._train(f, m) for f in self.feedbacks() for m in self.config.methods]

    def _train(self, feedback: Feedback, method: TrainMethod) -> Path:
        cfg = self.config
        folder = self.layout.train(feedback.short_id, method)
        if is_trained(folder):
            return folder / "model"
        samples = read_jsonl(
            self.layout.require(self.layout.samples(feedback.short_id), "sample"), C3POSample
        )
        model, tokenizer = load_policy(self._settings(self.base_model_path()), trainable=True, seed=cfg.seed)
        rows = zipped_rows(samples, tokenizer, cfg.train.max_length)
        if not rows:
            raise DataError(
                f"feedback {feedback.short_id}: no in-scope training samples: run the sample stage; if it "
                "ran, no revision came (see 'dropped' in metrics.jsonl): a policy that revises itself "
                "(sample.reviser: policy) must write 'REVISED RESPONSE:', else set sample.reviser: teacher"
            )
        objective = ScopeObjective(method, cfg.loss, tokenizer.pad_token_id)
        return self.fit(folder, model, tokenizer, rows, objective, cfg.train)

    def evaluate(self) -> dict[str, dict]:
        """Per feedback and method, adherence in scope and change near and out of scope (%)."""
        return {f.short_id: self._evaluate(f) for f in self.feedbacks()}

    def test_samples(self, feedback: Feedback) -> dict[str, list[C3POSample]]:
        """The held-out samples `evaluate` answers, by scope: the first `evaluate.prompts_per_scope`."""
        samples = read_jsonl(
            self.layout.require(self.layout.samples(feedback.short_id), "sample"), C3POSample
        )
        return {
            scope: [s for s in samples if s.split == "test" and s.scope == scope][
                : self.config.evaluate.prompts_per_scope
            ]
            for scope in ("in", "near", "out")
        }

    def _evaluate(self, feedback: Feedback) -> dict[str, dict[str, float]]:
        cfg = self.config
        folder = self.layout.evaluation(feedback.short_id)
        adapters = {
            m: self.layout.finished(self.layout.train(feedback.short_id, m) / "model", "train")
            for m in cfg.methods
        }
        if is_done(self.layout.combined()):
            adapters["combined"] = self.layout.combined()
        if is_evaluated(folder):  # finished, unless an adapter was combined since
            results = json.loads((folder / EVALUATED).read_text())
            if set(adapters) <= set(results):
                return results
        tests = self.test_samples(feedback)
        sampling = SamplingParams(temperature=0.0, max_new_tokens=cfg.evaluate.max_new_tokens)
        responses = {name: self._respond(str(path), tests, sampling) for name, path in adapters.items()}
        for name in ("in_context", "cot"):  # scored from their samples
            responses[name] = {scope: [getattr(s, name) or "" for s in rows] for scope, rows in tests.items()}
        responses["base"] = self._respond(self.base_model_path(), tests, sampling)
        if cfg.evaluate.baseline == "sampled":
            baseline = {scope: [s.baseline for s in rows] for scope, rows in tests.items()}
        else:
            baseline = responses["base"]
        results = from_main(lambda: self._score(feedback, tests, responses, baseline))
        if process_state().is_main_process:
            write_json_atomic(folder / EVALUATED, results)
            write_json_atomic(folder / "responses.json", responses)
            self.store.log_metrics(self.layout.name(folder), results)
        return results

    def _score(self, feedback: Feedback, tests, responses, baseline) -> dict[str, dict]:
        """Each response set's adherence and change against the one `baseline`, by the feedback's metric
        or the Likert judge, and with `evaluate.answer_quality` the judge's answer-quality score."""
        judge = self._judge(feedback)
        prompts = {scope: [s.prompt for s in rows] for scope, rows in tests.items()}
        results = {}
        for name, answers in responses.items():
            results[name] = (
                scope_metrics(feedback, answers, baseline)
                if judge is None
                else judge.score(feedback.effect, prompts, answers, baseline)
            )
            if self.config.evaluate.answer_quality:
                results[name] |= self.judge.answer_quality(prompts, answers, baseline)
        return results

    def _judge(self, feedback: Feedback) -> LikertJudge | None:
        """The Likert judge for qualitative feedback; quantitative feedback is checked by its metric."""
        if feedback.type == "quantitative":
            return None
        if self.judge is None:
            raise ConfigError(f"feedback {feedback.short_id} is qualitative: set evaluate.judge to score it")
        return self.judge

    @cached_property
    def judge(self) -> LikertJudge | None:
        """The configured Likert judge (`evaluate.judge`), built once per run; None when there is none."""
        asker = self.judge_asker()
        return None if asker is None else LikertJudge(asker)

    def judge_asker(self) -> ParsedAsker | None:
        """The judge's model behind a retrying asker, from `evaluate.judge` (None when not set)."""
        judge = self.config.evaluate.judge
        if judge is None:
            return None
        return judge.asker(self.config.generation_batch_size, self.config.seed, self.layout.replies("judge"))

    def _respond(self, path: str, tests: dict[str, list[C3POSample]], sampling) -> dict[str, list[str]]:
        """The greedy responses of the model at `path` to every test prompt, by scope; under several
        processes each answers its share."""
        backend = self.generation_backend(path)
        rows = [s for scope_rows in tests.values() for s in scope_rows]
        answers = iter(
            shared_map(lambda share: answer_each(backend, sampling, [s.prompt for s in share]), rows)
        )
        return {scope: [next(answers) for _ in scope_rows] for scope, scope_rows in tests.items()}

    def combine(self) -> Path:
        """One adapter holding the C3PO adapters of every selected feedback ('cat': ranks add up)."""
        from peft import PeftModel

        feedbacks = self.feedbacks()
        paths = [
            self.layout.finished(self.layout.train(f.short_id, "c3po") / "model", "train") for f in feedbacks
        ]
        base, tokenizer = load_policy(self._settings(self.base_model_path()))
        model = PeftModel.from_pretrained(base, str(paths[0]), adapter_name="f0")
        for i, p in enumerate(paths[1:], start=1):
            model.load_adapter(str(p), adapter_name=f"f{i}")
        names = [f"f{i}" for i in range(len(paths))]
        model.add_weighted_adapter(names, [1.0] * len(names), "combined", combination_type="cat")
        model.set_adapter("combined")
        for name in names:
            model.delete_adapter(name)
        combined = self.layout.combined()
        model.save_pretrained(
            str(combined.parent)
        )  # an adapter not named 'default' goes in a folder of its name
        tokenizer.save_pretrained(str(combined))
        write_json_atomic(combined / DONE, {"adapters": [str(p) for p in paths]})
        return combined

    def run(self) -> dict[str, dict]:
        """Every stage in order; finished work is skipped. Returns `evaluate`'s results."""
        if self.config.model.path == "tiny":
            self.sft()
        self.sample()
        self.train()
        if "c3po" in self.config.methods and len(self.feedbacks()) > 1:
            self.combine()
        return self.evaluate()
