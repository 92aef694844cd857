"""AdaRefiner's sub-goals in Crafter: the 31 a decision model may choose from, the parser that reads them
out of a reply, the offline decision rule, and template analyses for warming up a tiny adapter.

Replies are data: a reply is only searched for the allowed sub-goal names, never run or interpreted.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

SUBGOALS: tuple[str, ...] = (
    "eat plant",
    "attack zombie",
    "attack skeleton",
    "attack cow",
    "chop tree",
    "mine stone",
    "mine coal",
    "mine iron",
    "mine diamond",
    "drink water",
    "chop grass",
    "sleep",
    "place stone",
    "place crafting table",
    "place furnace",
    "place plant",
    "make wood pickaxe",
    "make stone pickaxe",
    "make iron pickaxe",
    "make wood sword",
    "make stone sword",
    "make iron sword",
    "plant row",
    "chop grass with wood pickaxe",
    "vegetarianism",
    "make workshop",
    "survival",
    "deforestation",
    "work and sleep",
    "gardening",
    "wilderness survival",
)
"""The allowed sub-goals (the paper's list), in the order the decision model's prompt lists them."""
PER_INSTRUCTION = 3
"""Sub-goals in one instruction."""
MAX_REPLY_CHARS = 4000
"""Only the start of a reply is searched: a reply of megabytes costs no more than this."""

# Longer names first, so "chop grass with wood pickaxe" wins over "chop grass" where both match.
_PATTERN = re.compile(
    r"\b("
    + "|".join(re.escape(g).replace(r"\ ", r"\s+") for g in sorted(SUBGOALS, key=len, reverse=True))
    + r")s?\b"
)


def parse_subgoals(reply: str, limit: int = PER_INSTRUCTION) -> list[str] | None:
    """The allowed sub-goals a reply names, in the order it names them, each once, at most `limit`; None
    when it names none (a reply to ask again). Case, underscores, runs of spaces and a plural ("mine
    diamonds") are forgiven."""
    text = re.sub(r"[_\s]+", " ", reply[:MAX_REPLY_CHARS].lower())
    found: list[str] = []
    for match in _PATTERN.finditer(text):
        name = " ".join(match.group(1).split())
        if name not in found:
            found.append(name)
        if len(found) == limit:
            break
    return found or None


def _count(status: Sequence[str], item: str) -> int:
    """The count of `item` in a text state's status lines ("3 wood"), 0 when absent."""
    for line in status:
        number, _, name = line.partition(" ")
        if name == item:
            return int(number)
    return 0


def rule_subgoals(sees: Sequence[str], status: Sequence[str]) -> list[str]:
    """The offline decision rule: pressing needs first (drink, food, energy under 4), then the next steps
    of the tool chain (wood, a table, a wood pickaxe, stone, a stone pickaxe, coal, iron), three in all."""
    goals = []
    if _count(status, "drink") < 4:
        goals.append("drink water")
    if _count(status, "food") < 4:
        goals.append("attack cow")
    if _count(status, "energy") < 4:
        goals.append("sleep")
    chain = [
        ("chop tree", _count(status, "wood") < 2),
        ("place crafting table", "table" not in sees),
        ("make wood pickaxe", _count(status, "wood_pickaxe") == 0),
        ("mine stone", _count(status, "stone") == 0),
        ("make stone pickaxe", _count(status, "stone_pickaxe") == 0),
        ("mine coal", _count(status, "coal") == 0),
        ("mine iron", True),
    ]
    goals += [goal for goal, needed in chain if needed]
    return goals[:PER_INSTRUCTION]


PLAUSIBLE: dict[str, tuple[str, ...]] = {
    "tree": ("chop tree", "make wood pickaxe", "place crafting table"),
    "water": ("drink water",),
    "cow": ("attack cow",),
    "grass": ("chop grass", "place plant"),
    "stone": ("mine stone", "place stone"),
    "coal": ("mine coal",),
    "iron": ("mine iron",),
    "table": ("make wood pickaxe", "make wood sword", "make stone pickaxe"),
    "zombie": ("attack zombie",),
    "skeleton": ("attack skeleton",),
    "plant": ("eat plant",),
}
"""Sub-goals a state makes plausible, by what the player sees."""


def template_analysis(sees: Sequence[str], status: Sequence[str], rng: random.Random) -> str:
    """A short analysis naming three plausible sub-goals for this state, drawn at random: the text a tiny
    adapter is warmed up on before it is refined (good and bad advice alike, for refinement to sort)."""
    options = [goal for thing in sees for goal in PLAUSIBLE.get(thing, ())]
    if _count(status, "drink") < 6:
        options.append("drink water")
    if _count(status, "energy") < 6:
        options.append("sleep")
    options = list(dict.fromkeys(options)) or ["chop tree", "drink water", "attack cow"]
    chosen = rng.sample(options, min(PER_INSTRUCTION, len(options)))
    seen = ", ".join(sees) if sees else "nothing"
    return f"The player sees {seen}. It should {', then '.join(chosen)}."
