"""The Likert judge: an LLM grades, 1-5, a response against a baseline answer to the same prompt: how much
better it applies a feedback, or how much better it answers the prompt."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from feedlearn.backends.base import ParsedAsker

LIKERT_PROMPT = """Compare two responses to the same prompt. The user gave this feedback: "{effect}".

[Prompt]
{prompt}

[Response 1]
{baseline}

[Response 2]
{response}

Explain in a few sentences whether Response 2 applies the feedback better than Response 1. Then end with
one line 'BETTER_RESPONSE: k', k from 1 to 5: 1 = Response 1 applies it much better, 3 = equally,
5 = Response 2 applies it much better."""

QUALITY_PROMPT = """Compare two responses to the same prompt: which one answers it better?

[Prompt]
{prompt}

[Response 1]
{baseline}

[Response 2]
{response}

First say in a few sentences what a good answer to this prompt needs and how each response meets it. Then
end with one line 'BETTER_RESPONSE: k', k from 1 to 5: 1 = Response 1 is much better, 3 = both answer
it equally well, 5 = Response 2 is much better."""
"""The answer-quality question: does the response still answer its prompt as well as the baseline, whatever
the feedback (the reference's answer-quality judgment, `eval.py`'s `answer_eval`, in feedlearn's words)."""


def parse_likert(reply: str) -> int | None:
    """The judge's score 1-5 from its last 'BETTER_RESPONSE: k' line, or None."""
    found = re.findall(r"BETTER_RESPONSE:\s*\**\s*([1-5])\b", reply)
    return int(found[-1]) if found else None


class LikertJudge:
    """Scores responses 1-5 against the baseline answer to the same prompt: how much better they apply a
    feedback (`score`), or answer the prompt (`answer_quality`). Unparseable judgments are asked again (the
    asker's attempts), then counted and dropped."""

    def __init__(self, asker: ParsedAsker):
        self.asker = asker

    def score(
        self,
        effect: str,
        prompts: dict[str, list[str]],
        responses: dict[str, list[str]],
        baseline: dict[str, list[str]],
    ) -> dict[str, float]:
        """Mean score per scope (`<scope>_scope_likert`) of each response against the baseline answer to
        the same prompt, and the count of judgments given up on (`judge_unparseable`)."""
        return self._means(
            partial(LIKERT_PROMPT.format, effect=effect),
            "likert",
            "judge_unparseable",
            prompts,
            responses,
            baseline,
        )

    def answer_quality(
        self, prompts: dict[str, list[str]], responses: dict[str, list[str]], baseline: dict[str, list[str]]
    ) -> dict[str, float]:
        """Mean score per scope (`<scope>_scope_answer_quality`; 3 = answers the prompt as well as the
        baseline) and the count of judgments given up on (`answer_quality_unparseable`)."""
        return self._means(
            QUALITY_PROMPT.format,
            "answer_quality",
            "answer_quality_unparseable",
            prompts,
            responses,
            baseline,
        )

    def _means(
        self,
        question: Callable[..., str],
        name: str,
        unparseable: str,
        prompts: dict[str, list[str]],
        responses: dict[str, list[str]],
        baseline: dict[str, list[str]],
    ) -> dict[str, float]:
        """Per scope, the mean parsed score of `question(prompt=, baseline=, response=)` as
        `<scope>_scope_<name>`, and the judgments given up on as `unparseable`."""
        out, skipped = {}, self.asker.skipped
        for scope, scope_prompts in prompts.items():
            convs = [
                [{"role": "user", "content": question(prompt=p, baseline=b, response=r)}]
                for p, r, b in zip(scope_prompts, responses[scope], baseline[scope], strict=True)
            ]
            valid = [x for x in self.asker.ask(convs, parse_likert) if x is not None]
            if valid:
                out[f"{scope}_scope_{name}"] = round(sum(valid) / len(valid), 3)
        out[unparseable] = float(self.asker.skipped - skipped)
        return out
