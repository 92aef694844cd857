"""The Likert judge: an LLM grades, 1-5, how much better a response applies a feedback than a baseline."""

from __future__ import annotations

import re

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


def parse_likert(reply: str) -> int | None:
    """The judge's score 1-5 from its last 'BETTER_RESPONSE: k' line, or None."""
    found = re.findall(r"BETTER_RESPONSE:\s*\**\s*([1-5])\b", reply)
    return int(found[-1]) if found else None


class LikertJudge:
    """Scores qualitative feedback: 1-5, how much better the new response applies the feedback than the
    baseline. Unparseable judgments are asked again (the asker's attempts), then counted and dropped."""

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
        out, skipped = {}, self.asker.skipped
        for scope, scope_prompts in prompts.items():
            convs = [
                [
                    {
                        "role": "user",
                        "content": LIKERT_PROMPT.format(effect=effect, prompt=p, baseline=b, response=r),
                    }
                ]
                for p, r, b in zip(scope_prompts, responses[scope], baseline[scope], strict=True)
            ]
            valid = [x for x in self.asker.ask(convs, parse_likert) if x is not None]
            if valid:
                out[f"{scope}_scope_likert"] = round(sum(valid) / len(valid), 3)
        out["judge_unparseable"] = float(self.asker.skipped - skipped)
        return out
