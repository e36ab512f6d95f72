"""Render messages into the exact token ids the model will see.

Contract: `render_text(tokenizer, messages)` applies the model's own chat template
with the generation prompt appended; `render_ids` tokenizes that text without
adding special tokens again, so the count is exact. A model without a chat
template raises `ChatcliError` with the fix. `join_prompt` combines piped
stdin with the prompt argument.
This module knows nothing about models, decoding or history storage.
"""

from __future__ import annotations

from typing import Any

from chatcli.conversation import Message
from chatcli.errors import ChatcliError


def render_text(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatcliError(
            "this model has no chat template",
            "set chat_template for the alias in models.toml",
        )
    return tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def render_ids(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> list[int]:
    text = render_text(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def join_prompt(prompt: str | None, piped: str | None) -> str:
    """Piped stdin first, then the prompt; either may be missing."""
    parts = [p.strip("\n") for p in (piped, prompt) if p is not None and p.strip()]
    return "\n\n".join(parts)
