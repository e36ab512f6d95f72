"""Which earlier turns did the answer look at? Attention mass per turn.

Contract: `context_attention(loaded, messages, prompt_ids, answer_ids)` runs one
extra forward pass of transformers' implementation of the model with eager
attention over prompt + answer, and returns, for each message of the packed
prompt (plus the template's generation prompt and the answer itself; a raw
completion's messages are plain text, without a template), its token
span and the share of attention it received from the queries that produced the
answer's tokens: the mean over layers, heads and those queries of the attention
weights summed over the span's keys. The shares sum to 1. Only runs when asked
(it loads the model a second time); knows nothing about the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatcli.conversation import Message


@dataclass(frozen=True)
class Span:
    label: str  # "system", "user", "assistant", "generation prompt", "answer"
    index: int | None  # position among the packed messages (None for the extra spans)
    start: int
    end: int
    attention: float = 0.0


def turn_spans(messages: list[Message], render: Callable[[list[Message]], list[int]],
               prompt_len: int) -> list[Span]:
    """Token spans of each message in the prompt (of length prompt_len).

    `render` renders messages WITHOUT the generation prompt; message i spans from the
    end of the rendering of messages[:i] to the end of that of messages[:i + 1]; what
    follows the last message is the template's generation prompt.
    """
    spans, start = [], 0
    for i, m in enumerate(messages):
        end = min(len(render(messages[: i + 1])), prompt_len)
        spans.append(Span(m.role, i, start, end))
        start = end
    if start < prompt_len:
        spans.append(Span("generation prompt", None, start, prompt_len))
    return spans


def attention_shares(model: Any, ids: list[int], prompt_len: int, spans: list[Span]) -> list[Span]:
    """Fill each span's attention share from one eager forward pass over `ids`.

    `ids` is the prompt followed by the answer; the queries are the positions that
    produced answer tokens (prompt_len - 1 ... len(ids) - 2).
    """
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([ids[:-1]], device=model.device), output_attentions=True)
    att = torch.stack([a[0].float() for a in out.attentions])  # (layers, heads, q, k)
    per_key = att[:, :, prompt_len - 1 :, :].mean(dim=(0, 1, 2))  # (keys,)
    filled = [Span(s.label, s.index, s.start, s.end, float(per_key[s.start : s.end].sum()))
              for s in spans]
    filled.append(Span("answer", None, prompt_len, len(ids) - 1,
                       float(per_key[prompt_len:].sum())))
    return filled


def context_attention(loaded: Any, messages: list[Message], prompt_ids: list[int],
                      answer_ids: list[int],
                      render: Callable[[list[Message]], list[int]] | None = None) -> list[Span]:
    """The spans of `messages` (rendered by `render`, default: the chat template without
    the generation prompt; a raw completion's is `chatcli.prompt.RawRender`) with their
    shares of the answer's attention."""
    import torch

    from chatcli.loader import quiet_transformers
    from chatcli.prompt import render_ids

    quiet_transformers()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        loaded.folder, dtype=getattr(torch, loaded.runtime.dtype), attn_implementation="eager"
    ).eval()
    spans = turn_spans(messages, render or (lambda m: render_ids(loaded.tokenizer, m, False)),
                       len(prompt_ids))
    if not answer_ids:
        return spans
    return attention_shares(model, list(prompt_ids) + list(answer_ids), len(prompt_ids), spans)
