"""Preference labels with a query budget and a per-pair cache in the run folder: no label is paid twice."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from feedlearn.data.jsonl import JsonlAppender, read_jsonl
from feedlearn.data.records import LabelRecord, PreferencePair
from feedlearn.errors import FeedlearnError
from feedlearn.feedback.labelers import Labeler
from feedlearn.processes import from_main, gathered, process_state

QUERY_CHUNK = 32
"""Pairs handed to the labeler at once; each chunk's answers are saved before the next is asked."""
FAIL_AFTER = 16
"""Labels paid for, none of them usable, that stop the run before it trains on nothing (fewer are judged
when training ends): 16 ties in a row from a labeler that ties 30% of the time happen once in 10^8 runs."""
CHECK_AFTER = 64
"""Labels paid for before fewer than half usable is warned about."""

log = logging.getLogger(__name__)


class LabelBook:
    """Asks a labeler for the labels it does not have yet, within a budget, and remembers every answer.

    Every cached label was one paid query, so `queries_used` is exact and survives a restart. Under
    several processes, each process's requests are gathered to the main process, which alone queries and
    writes the cache, and the answers are broadcast back: queries are counted once, summed over processes.
    """

    def __init__(self, labeler: Labeler, path: str | Path, budget: int | None = None):
        self.labeler = labeler
        self.budget = budget
        self.path = Path(path)
        self.warned = False
        self.state = process_state()
        self.cache = JsonlAppender(path, LabelRecord) if self.state.is_main_process else None
        self.state.wait_for_everyone()  # the main process has repaired a torn last line
        path = Path(path)
        self.labels: dict[str, int] = (
            {r.id: r.label for r in read_jsonl(path, LabelRecord)} if path.exists() else {}
        )

    @property
    def queries_used(self) -> int:
        """Labels paid for so far (cached answers included)."""
        return len(self.labels)

    @property
    def exhausted(self) -> bool:
        """Whether the budget is spent."""
        return self.budget is not None and self.queries_used >= self.budget

    def get(self, pairs: Sequence[PreferencePair]) -> list[int | None]:
        """The label of each pair: cached ones are free, the others are queried (and saved one by one) while
        the budget lasts. None marks a pair left unlabeled because the budget is spent."""
        wanted = [p for p in pairs if p.id not in self.labels]
        wanted = gathered(wanted)
        self.labels.update(from_main(lambda: self._query(wanted)))
        return [self.labels.get(p.id) for p in pairs]

    def _query(self, pairs: list[PreferencePair]) -> dict[str, int]:
        todo = list({p.id: p for p in pairs if p.id not in self.labels}.values())
        if self.budget is not None:
            todo = todo[: max(0, self.budget - self.queries_used)]
        answers = {}
        for start in range(0, len(todo), QUERY_CHUNK):  # a labeler that fails midway keeps earlier chunks
            chunk = todo[start : start + QUERY_CHUNK]
            for pair, label in zip(chunk, self.labeler.label(chunk), strict=True):
                self.cache.append(LabelRecord(id=pair.id, label=label, source=self.labeler.source))
                answers[pair.id] = label
                self.labels[pair.id] = label
            if self.queries_used >= FAIL_AFTER:
                self.check()
        return answers

    def check(self) -> None:
        """See `check_labels`; warns once."""
        stats = getattr(self.labeler, "stats", {})
        warned = check_labels(self.labels, self.labeler.source, self.path, stats, warn=not self.warned)
        self.warned = self.warned or warned


def check_labels(
    labels: dict[str, int], source: str, path: Path, stats: dict[str, float] | None = None, warn: bool = True
) -> bool:
    """Raise when no label paid for is usable (every one a tie, a judge whose two orders disagree, or
    unparseable): such a labeler gives DPO nothing to learn from, and a paid one spends its budget for
    nothing. Warn (and return True) when fewer than half are, after `CHECK_AFTER` labels."""
    n, usable = len(labels), sum(label != 0 for label in labels.values())
    counts = ", ".join(f"{name.split('/')[-1]} {value:g}" for name, value in (stats or {}).items())
    counts = f" ({counts})" if counts else ""
    if n and not usable:
        raise FeedlearnError(
            f"the {source} labeler gave no usable label for any of the {n} pairs asked{counts}: each "
            "answer was a tie, two orders that disagree, or unparseable; check the labeler (its model, "
            f"endpoint and replies) before paying for more. The labels are kept in {path}"
        )
    if warn and n >= CHECK_AFTER and usable < n / 2:
        log.warning("the %s labeler gave a usable label for only %d of %d pairs%s", source, usable, n, counts)
        return True
    return False
