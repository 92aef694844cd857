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


def completion_ids(tokenizer, messages: Sequence) -> tuple[list[int], int]:
    """Token ids of a conversation ending in an assistant turn, and where that final turn's tokens start.

    The final turn is what gets trained on; it ends at its end-of-turn (EOS) token, and whatever the
    template writes after that token (a newline, say) is cut, since the model never generates it.
    Its start is found by rendering the context with the generation
    prompt, which must be a prefix of the whole rendering; templates that rewrite earlier turns when a new
    one is added cannot train on completions only, and are refused with a clear error.
    """
    messages = as_dicts(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise FeedlearnError("a training conversation must end with an assistant message")
    context = prompt_ids(tokenizer, messages[:-1])
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    if full[: len(context)] != context:
        raise FeedlearnError(
            "the chat template renders the context differently once the answer is appended; "
            "use a template whose rendering of earlier turns does not depend on later ones"
        )
    eos = tokenizer.eos_token_id
    ends = [i for i in range(len(context), len(full)) if full[i] == eos]
    if ends:
        full = full[: ends[-1] + 1]
    return full, len(context)
