"""A seeded synthetic instruction corpus and verifiable built-in feedbacks, for offline C3PO runs.

Four categories of short chats (emails, lists, color questions, animal descriptions) with template-regular
responses a tiny model can learn. Two built-in feedbacks change how some of them are answered; each comes
with in-scope / near-scope prompt generators and a programmatic revision that makes its metric pass.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from feedlearn.data.jsonl import json_lines, read_text
from feedlearn.errors import DataError
from feedlearn.seeds import derive_seed
from feedlearn.verifiers.verbal import Feedback, Metric

NAMES = ["Jared", "Maria", "Tom", "Lena", "Omar", "Chen", "Sofia", "Ravi"]
TOPICS = {
    "the meeting": ["The meeting moves to Friday at ten.", "Our meeting is now in room four."],
    "the budget": ["The budget for next month is ready.", "We need to cut the budget a little."],
    "the trip": ["The trip starts on Monday morning.", "I booked the hotel for our trip."],
    "the report": ["The report is almost done.", "I sent you the first part of the report."],
    "the party": ["The party is on Saturday at six.", "Please bring a snack to the party."],
    "the deadline": ["The deadline moved to next Tuesday.", "We can still make the deadline."],
    "the new office": ["The new office opens next week.", "The new office has a big kitchen."],
    "the project": ["The project is going well.", "I added two tasks to the project."],
    "the dinner": ["Dinner is at seven at the usual place.", "I reserved a table for dinner."],
    "the training": ["The training starts at nine.", "Bring your laptop to the training."],
    "the invoice": ["The invoice is attached.", "The invoice was paid yesterday."],
    "the visit": ["Our visitors arrive on Thursday.", "The visit went very well."],
    "the schedule": ["The new schedule is online.", "I changed the schedule for May."],
    "the launch": ["The launch is set for June.", "We are ready for the launch."],
    "the holiday": ["The office is closed for the holiday.", "Enjoy the holiday."],
    "the team lunch": ["The team lunch is on Wednesday.", "I ordered pizza for the team lunch."],
}
"""Email topics, each with the sentences an email about it may say."""
EMAIL_PROMPTS = [
    "Write an email to {name} about {topic}{detail}.",
    "Write a short email to {name} about {topic}{detail}.",
    "Draft an email to {name} about {topic}{detail}.",
    "Email {name} about {topic}{detail}.",
]
EMAIL_DETAILS = ["", " today", " for tomorrow", " before noon", " in a friendly way"]
"""Details a request may add; the email does not depend on them."""
CLOSINGS = ["Thanks a lot.", "Let me know what you think.", "See you soon."]
SIGN_OFFS = ["Best, Sam", "Cheers, Kim", "Regards, Pat", "Best, Jo"]
"""Some emails end with a sign-off line (never Alex's): the base model knows the form, not the rule."""
SIGNED_SHARE = 0.15

THINGS = {
    "fruits": ["apple", "pear", "plum", "banana", "cherry", "grape", "mango", "peach"],
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"],
    "animals": ["cat", "dog", "horse", "rabbit", "fox", "owl", "bear", "goat"],
    "tools": ["hammer", "saw", "drill", "wrench", "ruler", "shovel", "rake", "pliers"],
    "cities": ["Paris", "Tokyo", "Cairo", "Lima", "Rome", "Oslo", "Delhi", "Sydney"],
}
"""What a list prompt may ask for, and the items a list of it is drawn from."""
LIST_PROMPTS = {
    "list": ["List {count} {things}{context}.", "Please list {count} {things}{context}."],
    "name": ["Name {count} {things}{context}.", "Can you name {count} {things}{context}?"],
    "give": ["Give me {count} {things}{context}.", "Tell me {count} {things}{context}."],
}
"""Phrasings of a list request, by style."""
COUNTS = {"two": 2, "three": 3, "four": 4}
LIST_CONTEXTS = [
    "",
    " you like",
    " for a story",
    " for a quiz",
    " for a game",
    " for my notes",
    " for a class",
    " for a poem",
    " for a song",
    " for my list",
    " for a test",
    " for a drawing",
]
"""Contexts a list request may add; the list does not depend on them."""
NUMBERED_SHARE = 0.05
"""Some lists are written numbered: the base model knows the form, not when it is wanted. Kept below the
chance of the likeliest first item (1/8 of the plain lists), so that greedy decoding is not a near tie
between the two forms: at 0.15 it was, and a base model's greedy form flipped from prompt to prompt."""

COLORS = {
    "the sky": "blue",
    "grass": "green",
    "a banana": "yellow",
    "snow": "white",
    "a tomato": "red",
    "coal": "black",
    "a carrot": "orange",
    "the sea": "blue",
    "a lemon": "yellow",
    "milk": "white",
}
ANIMALS = {
    "a cat": ["Small, soft and curious.", "A quiet, playful pet."],
    "a dog": ["Loyal, friendly and playful.", "A happy, faithful friend."],
    "an owl": ["Wise-looking and awake at night.", "A quiet bird of the night."],
    "a horse": ["Tall, strong and fast.", "A big, gentle runner."],
    "a fox": ["Clever, quick and orange.", "A sly, bushy-tailed hunter."],
    "a bear": ["Big, strong and furry.", "A heavy, sleepy giant."],
    "a rabbit": ["Small, fast and fluffy.", "A shy hopper with long ears."],
    "a goat": ["Stubborn and good at climbing.", "A bearded, curious climber."],
}


def _email(rng: random.Random) -> tuple[str, str]:
    name, topic = rng.choice(NAMES), rng.choice(list(TOPICS))
    response = f"Hi {name},\n{rng.choice(TOPICS[topic])}\n{rng.choice(CLOSINGS)}"
    if rng.random() < SIGNED_SHARE:
        response += "\n" + rng.choice(SIGN_OFFS)
    prompt = rng.choice(EMAIL_PROMPTS).format(name=name, topic=topic, detail=rng.choice(EMAIL_DETAILS))
    return prompt, response


def _list(rng: random.Random) -> tuple[str, str]:
    things, count = rng.choice(list(THINGS)), rng.choice(list(COUNTS))
    phrasing = rng.choice(rng.choice(list(LIST_PROMPTS.values())))
    prompt = phrasing.format(count=count, things=things, context=rng.choice(LIST_CONTEXTS))
    items = rng.sample(THINGS[things], COUNTS[count])
    if rng.random() < NUMBERED_SHARE:
        return prompt, "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
    return prompt, ", ".join(items) + "."


QUESTION_PROMPTS = [
    "What color is {obj}{context}?",
    "Which color is {obj}{context}?",
    "Tell me the color of {obj}{context}.",
]
DESCRIBE_PROMPTS = [
    "Describe {animal} in a few words{context}.",
    "Briefly describe {animal}{context}.",
    "In a few words, describe {animal}{context}.",
]
GENERAL_CONTEXTS = ["", " for a quiz", " for a child", " for my notes", " for a class", " for a story"]
"""Contexts a general request may add; the answer does not depend on them."""


def _question(rng: random.Random) -> tuple[str, str]:
    obj = rng.choice(list(COLORS))
    prompt = rng.choice(QUESTION_PROMPTS).format(obj=obj, context=rng.choice(GENERAL_CONTEXTS))
    return prompt, f"{obj[0].upper()}{obj[1:]} is usually {COLORS[obj]}."


def _describe(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(list(ANIMALS))
    prompt = rng.choice(DESCRIBE_PROMPTS).format(animal=animal, context=rng.choice(GENERAL_CONTEXTS))
    return prompt, rng.choice(ANIMALS[animal])


CATEGORIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "email": _email,
    "list": _list,
    "question": _question,
    "describe": _describe,
}
"""Each category's generator of one (prompt, response) chat."""
GENERAL_CATEGORIES = ["question", "describe"]
"""The categories no built-in feedback touches: out-of-scope prompts come from these."""


def corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (prompt, response) chats, categories drawn uniformly; the same seed gives the same chats."""
    rng = random.Random(derive_seed(seed, "data", "instruction-corpus"))
    return [CATEGORIES[rng.choice(list(CATEGORIES))](rng) for _ in range(n)]


# ---- does a response answer its prompt? -----------------------------------------------------------------


def _fields(templates: list[str], prompt: str, **choices: list[str]) -> dict[str, str] | None:
    """The choices that make `prompt` one of `templates` (each `{field}` one of `choices[field]`), or None."""
    for template in templates:
        pattern = re.escape(template)
        for field, options in choices.items():
            group = "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))
            pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>{group})")
        found = re.fullmatch(pattern, prompt)
        if found:
            return found.groupdict()
    return None


def _list_items(response: str) -> list[str]:
    """The items of a list answer, plain ('a, b.') or numbered ('1. a' per line, counting up from 1)."""
    lines = response.strip().split("\n")
    numbered = [re.fullmatch(rf"{i}\. (.+)", line) for i, line in enumerate(lines, start=1)]
    if all(numbered):
        return [m.group(1).strip() for m in numbered]
    if len(lines) == 1 and lines[0].endswith("."):
        return [item.strip() for item in lines[0][:-1].split(",")]
    return []


def answers_prompt(prompt: str, response: str) -> bool | None:
    """Whether `response` answers a corpus-style `prompt` as the corpus does, whatever the form the built-in
    feedbacks change (a sign-off line, numbered items): an email greets its addressee, says a sentence of
    its topic and ends with closing or sign-off lines; a list names the asked number of different things of
    the asked kind; a color or an animal is answered as the corpus answers it. None for another prompt.
    Used as an offline, rule-based answer-quality judge (benchmarks/c3po_scope.py)."""
    lines = response.strip().split("\n")
    email = _fields(EMAIL_PROMPTS, prompt, name=NAMES, topic=list(TOPICS), detail=EMAIL_DETAILS)
    if email is not None:
        endings = set(CLOSINGS) | set(SIGN_OFFS) | {SIGNOFF}
        rest = lines[2:]
        return (
            len(lines) >= 2
            and lines[0] == f"Hi {email['name']},"
            and lines[1] in TOPICS[email["topic"]]
            and len(rest) <= 2
            and len(set(rest)) == len(rest)
            and set(rest) <= endings
        )
    styles = [t for phrasings in LIST_PROMPTS.values() for t in phrasings]
    asked = _fields(styles, prompt, count=list(COUNTS), things=list(THINGS), context=LIST_CONTEXTS)
    if asked is not None:
        items = _list_items(response)
        return (
            len(items) == COUNTS[asked["count"]]
            and len(set(items)) == len(items)
            and set(items) <= set(THINGS[asked["things"]])
        )
    color = _fields(QUESTION_PROMPTS, prompt, obj=list(COLORS), context=GENERAL_CONTEXTS)
    if color is not None:
        obj = color["obj"]
        return response.strip() == f"{obj[0].upper()}{obj[1:]} is usually {COLORS[obj]}."
    animal = _fields(DESCRIBE_PROMPTS, prompt, animal=list(ANIMALS), context=GENERAL_CONTEXTS)
    if animal is not None:
        return response.strip() in ANIMALS[animal["animal"]]
    return None


def read_prompts(path: Path) -> list[str]:
    """The prompts of a file: one per line (`.txt`), or each line's `prompt` field (`.jsonl`)."""
    if path.suffix == ".jsonl":
        prompts = []
        for lineno, row in json_lines(path):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DataError(f"{path}:{lineno}: field 'prompt': a string is required")
            prompts.append(row["prompt"])
    else:
        prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts in the file")
    return prompts


def general_prompts(n: int, seed: int) -> list[str]:
    """`n` prompts of the categories no built-in feedback touches, for out-of-scope use; no prompt repeats
    before all of them (`len(general_pool())`) are used."""
    return _draw(general_pool(), n, random.Random(derive_seed(seed, "data", "general-prompts")))


def general_pool() -> list[str]:
    """Every prompt of the general categories."""
    return [
        p.format(obj=obj, context=c) for p in QUESTION_PROMPTS for obj in COLORS for c in GENERAL_CONTEXTS
    ] + [p.format(animal=a, context=c) for p in DESCRIBE_PROMPTS for a in ANIMALS for c in GENERAL_CONTEXTS]


# ---- built-in feedbacks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackTask:
    """A built-in feedback, how to generate its prompts per category, and how to apply it to a response."""

    feedback: Feedback
    categories: list[str]
    in_scope: Callable[[str, int, random.Random], list[str]]
    """(category, n, rng) -> `n` prompts the feedback applies to."""
    near_scope: Callable[[str, int, random.Random], list[str]]
    """(category, n, rng) -> `n` closely related prompts it does not apply to."""
    revise: Callable[[str, str], str | None]
    """(prompt, response) -> the response with the feedback applied (its metric passes), or None when
    the response has nothing to apply it to."""


def _draw(pool: list[str], n: int, rng: random.Random) -> list[str]:
    """`n` items of `pool` in shuffled passes, so that no item repeats before every item is used."""
    out: list[str] = []
    while len(out) < n:
        out += rng.sample(pool, len(pool))
    return out[:n]


def _email_prompts(names: list[str], topic: str, n: int, rng: random.Random) -> list[str]:
    pool = [
        p.format(name=nm, topic=topic, detail=d) for p in EMAIL_PROMPTS for nm in names for d in EMAIL_DETAILS
    ]
    return _draw(pool, n, rng)


def _list_prompts(things: list[str], style: str, n: int, rng: random.Random) -> list[str]:
    pool = [
        p.format(count=c, things=t, context=x)
        for p in LIST_PROMPTS[style]
        for t in things
        for c in COUNTS
        for x in LIST_CONTEXTS
    ]
    return _draw(pool, n, rng)


SIGNOFF = "Best, Alex"


VALEDICTION = re.compile(
    r"(?:best|kind|warm|warmest|many|all the best|regards|sincerely|cheers|thanks|thank you|yours|take care)"
    r"\b[^\n]{0,25},",
    re.IGNORECASE,
)
"""A closing line such as 'Best regards,' or 'Sincerely,' (a real model's emails end with one and a name)."""


def _sign_off(prompt: str, response: str) -> str:
    """The email ending with the line 'Best, Alex', once. A corpus sign-off line ('Best, Sam') is replaced,
    as is a closing line ('Best regards,') with the name or placeholder lines after it; an email cut
    mid-sentence (a model's answer at its token limit) first ends at its last full paragraph (or sentence,
    when its first paragraph is cut), a shorter email as its writer would close it."""
    lines = response.rstrip().split("\n")
    if lines[-1] in SIGN_OFFS:
        lines = lines[:-1]
    closings = [i for i, line in enumerate(lines) if i > 0 and VALEDICTION.fullmatch(line.strip())]
    if closings:
        lines = lines[: closings[-1]]
    while len(lines) > 1 and re.fullmatch(r"\[[^\]]*\]", lines[-1].strip()):  # '[Your Name]'
        lines = lines[:-1]
    body = "\n".join(lines).rstrip()
    if body.endswith(SIGNOFF):
        return body
    if not re.search(r"[.!?)\"']$", body):  # cut: end at its last full paragraph, else sentence
        earlier = body.rsplit("\n\n", 1)[0].rstrip()
        finished = re.match(r".*[.!?]", body, re.DOTALL)
        body = earlier if re.search(r"[.!?]$", earlier) else finished.group(0) if finished else body
    return f"{body}\n{SIGNOFF}"


NUMBERED = r"(?m)^1\. .+\n(?:[ \t]*\n)*2\. .+"
"""A numbered list of at least two items, one per line (blank lines between them allowed), after a preface
line or not."""
LIST_LINE = re.compile(r"[ \t]*(?P<marker>[-*\u2022]|\d+[.)])[ \t]+(?P<item>\S.*)")
"""A bulleted or numbered line: its marker and its item."""
SHORT_ITEM = re.compile(r"[\w'-]+(?: [\w'-]+){0,2}")
"""An item of an inline list: one to three words (a longer part of a sentence is not an item)."""


def _marker_kind(line: str) -> str | None:
    """'number' or the bullet character of a list line, None for another line."""
    found = LIST_LINE.fullmatch(line)
    if found is None:
        return None
    return "number" if found["marker"][0].isdigit() else found["marker"]


def _number_items(prompt: str, response: str) -> str | None:
    """The response with its list numbered, one item per line ('1. a\\n2. b'), the text around it kept: a
    bulleted (or otherwise numbered) list renumbered, or an inline list of short items ('a, b and c.',
    after a preface ending in ':' or not) written out. None when the response holds no list of two or more
    items."""
    if re.search(NUMBERED, response):
        return response
    lines = response.strip().split("\n")
    listed = [i for i, line in enumerate(lines) if _marker_kind(line)]
    if len(listed) >= 2:
        end, kind = listed[0], _marker_kind(lines[listed[0]])
        for i in listed[1:]:  # the first list: lines of one marker kind, blank lines between them allowed
            if _marker_kind(lines[i]) != kind or any(lines[j].strip() for j in range(end + 1, i)):
                break
            end = i
        items = [LIST_LINE.fullmatch(line)["item"] for line in lines[listed[0] : end + 1] if line.strip()]
        if len(items) >= 2:
            numbered = [f"{n}. {item.strip()}" for n, item in enumerate(items, start=1)]
            return "\n".join(lines[: listed[0]] + numbered + lines[end + 1 :])
    preface, colon, inline = response.strip().rpartition(":")
    if "\n" in inline:
        return None
    items = [item.strip(" .") for item in re.split(r",|\band\b", inline)]
    items = [item for item in items if item]
    if len(items) < 2 or not all(SHORT_ITEM.fullmatch(item) for item in items):
        return None
    numbered = "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
    return f"{preface}{colon}\n{numbered}" if colon else numbered


BUILTIN_FEEDBACKS: dict[str, FeedbackTask] = {
    "jared-signoff": FeedbackTask(
        feedback=Feedback(
            content="Always sign off emails to Jared with 'Best, Alex'.",
            domain="emails to Jared",
            effect="end the email with the line 'Best, Alex'",
            scope="local",
            type="quantitative",
            metric=Metric(kind="ends_with", value=SIGNOFF),
        ),
        categories=list(TOPICS),
        in_scope=partial(_email_prompts, ["Jared"]),
        near_scope=partial(_email_prompts, [nm for nm in NAMES if nm != "Jared"]),
        revise=_sign_off,
    ),
    "numbered-fruits": FeedbackTask(
        feedback=Feedback(
            content="When I ask for a list of fruits, number the items.",
            domain="lists of fruits",
            effect="write the items as a numbered list, one per line (1. ... 2. ...)",
            scope="regional",
            type="quantitative",
            metric=Metric(kind="regex", value=NUMBERED),
        ),
        categories=list(LIST_PROMPTS),
        in_scope=partial(_list_prompts, ["fruits"]),
        near_scope=partial(_list_prompts, [t for t in THINGS if t != "fruits"]),
        revise=_number_items,
    ),
}
"""Verifiable feedbacks on the corpus, by name."""
