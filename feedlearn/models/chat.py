"""The chat template: one template renders conversations for both generation and training."""

from __future__ import annotations

from collections.abc import Sequence

from feedlearn.errors import FeedlearnError

# Used by tiny models and by any tokenizer that has no template of its own. Each message ends with the
# end-of-turn token, which is also the tokenizer's EOS, so a trained model learns where its reply stops.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def as_dicts(messages: Sequence) -> list[dict[str, str]]:
    """Messages (records or dicts) as plain `{"role", "content"}` dicts."""
    return [m if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]


def prompt_ids(tokenizer, messages: Sequence) -> list[int]:
    """Token ids of a conversation followed by the assistant generation prompt."""
    return list(
        tokenizer.apply_chat_template(
            as_dicts(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def completion_spans(
    tokenizer, messages: Sequence, all_turns: bool = False
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a conversation ending in an assistant turn, and the [start, end) spans to train on.

    By default only the final assistant turn is trained; with `all_turns`, every assistant turn is. A
    span ends at the turn's end-of-turn (EOS) token; what the template writes after it (a newline, say)
    is not trained, since the model never generates it, and the ids stop after the final span. A turn's
    start is found by rendering its context with the generation prompt, which must be a prefix of the
    whole rendering: templates that rewrite earlier turns when a new one is added cannot train on
    completions only, and are refused with a clear error.
    """
    messages = as_dicts(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise FeedlearnError("a training conversation must end with an assistant message")
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    turns = (
        [i for i, m in enumerate(messages) if m["role"] == "assistant"] if all_turns else [len(messages) - 1]
    )
    spans = []
    for i in turns:
        context = prompt_ids(tokenizer, messages[:i])
        if full[: len(context)] != context:
            raise FeedlearnError(
                "the chat template renders the context differently once the answer is appended; "
                "use a template whose rendering of earlier turns does not depend on later ones"
            )
        start = len(context)
        end = next((j + 1 for j in range(start, len(full)) if full[j] == tokenizer.eos_token_id), len(full))
        spans.append((start, end))
    return full[: spans[-1][1]], spans
