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

    By default only the final assistant turn is trained; with `all_turns`, every assistant turn is. The
    rendering is tokenized piece by piece: each context as generation sees it (`prompt_ids`), then each
    reply on its own, so a token never merges across the boundary (a reply starting with a newline, say).
    A reply's text is tokenized with special tokens split, so special-token text a model wrote is text;
    its span ends with the end-of-turn (EOS) token the template writes. What the template writes after
    it is not trained, and the ids stop after the final span. Each context must render as a prefix of
    the whole conversation: templates that rewrite earlier turns when a new one is added cannot train on
    completions only, and are refused with a clear error.
    """
    messages = as_dicts(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise FeedlearnError("a training conversation must end with an assistant message")
    turns = (
        [i for i, m in enumerate(messages) if m["role"] == "assistant"] if all_turns else [len(messages) - 1]
    )
    eos = tokenizer.eos_token

    def encode(text: str, split_special_tokens: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens)[
            "input_ids"
        ]

    ids: list[int] = []
    spans = []
    done = ""  # the part of the rendering tokenized so far
    for i in turns:
        context = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (context.startswith(done) and whole.startswith(context)):
            raise FeedlearnError(
                "the chat template renders the context differently once the answer is appended; "
                "use a template whose rendering of earlier turns does not depend on later ones"
            )
        ids += encode(context[len(done) :])
        reply = whole[len(context) :]
        cut = reply.rfind(eos) if eos else -1
        start = len(ids)
        if cut < 0:  # the template does not close a turn with EOS: the whole rendered reply is trained
            ids += encode(reply)
            done = whole
        else:
            ids += [*encode(reply[:cut], split_special_tokens=True), tokenizer.eos_token_id]
            done = whole[: len(context) + cut + len(eos)]
        spans.append((start, len(ids)))
    return ids, spans
