"""Render messages into the exact token ids the model will see.

Contract: `render_text(tokenizer, messages)` applies the model's own chat template
with the generation prompt appended; `render_ids` tokenizes that text without
adding special tokens again, so the count is exact. A model without a chat
template raises `ChatcliError` with the fix. `join_prompt` combines piped
stdin with the prompt argument; `fit_new_tokens` checks the context window.
This module knows nothing about models, decoding or history storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chatcli.errors import ChatcliError, ContextOverflowError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def render_text(tokenizer: Any, messages: list[Message]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatcliError(
            "this model has no chat template",
            "set chat_template for the alias in models.toml",
        )
    return tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
    )


def render_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    text = render_text(tokenizer, messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def join_prompt(prompt: str | None, piped: str | None) -> str:
    """Piped stdin first, then the prompt; either may be missing."""
    parts = [p.strip("\n") for p in (piped, prompt) if p is not None and p.strip()]
    return "\n\n".join(parts)


def fit_new_tokens(prompt_tokens: int, context_window: int, max_new_tokens: int, alias: str) -> int:
    """How many tokens may be generated; raises when the prompt alone does not fit."""
    if prompt_tokens >= context_window:
        raise ContextOverflowError(
            f"the prompt is {prompt_tokens} tokens but the context window of '{alias}' is "
            f"{context_window} tokens",
            "shorten the input, or choose a model with a larger context window (-m)",
        )
    return min(max_new_tokens, context_window - prompt_tokens)
