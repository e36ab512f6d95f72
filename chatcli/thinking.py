"""Thinking: what a reasoning model writes between `<think>` and `</think>` before its answer.

Contract: `ThinkingFormat` names the tags and whether the prompt already opened the block
(`inside`: a template whose generation prompt ends with `<think>`, as DeepSeek-R1's
distills do; Qwen3 and SmolLM3 let the model open it). `format_of(template, prompt)`
finds it: a chat template that mentions `</think>` has one, and `prompt` (a rendered
generation prompt) says whether it starts inside. `ThinkingSplitter(fmt)` splits an
answer's text, delta by delta, into what was thought and what was said: `feed(text)`
returns both parts of a delta (the tags themselves are neither; a tag cut between
deltas is held back until it is whole; the newlines that open and close the thought and
the blank lines after `</think>` are dropped); `flush()` returns what is held back at the
end. A block may only open before any answer text: a `<think>` later in the answer is
text. `inside` says whether the splitter is in the block now.

`split_thinking(gen, fmt)` has an answer being generated split itself that way.

`template_switch(template, think)` is the chat template with its `enable_thinking`
switch set (Qwen3's and SmolLM3's spelling: `--think` / `--no-think`), exactly as
passing `enable_thinking=` to `apply_chat_template` renders it; None where the template
has no such switch.

Knows nothing about models, tokens, decoding or the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<think>", "</think>"
SWITCH = "enable_thinking"


@dataclass(frozen=True)
class ThinkingFormat:
    open: str = OPEN
    close: str = CLOSE
    inside: bool = False  # the prompt opened the block: the answer starts in it


def format_of(template: str | None, prompt: str | None = None) -> ThinkingFormat | None:
    """The thinking block of a chat template, or None (see the module)."""
    if not template or CLOSE not in template:
        return None
    inside = prompt is not None and prompt.rstrip().endswith(OPEN)
    return ThinkingFormat(inside=inside)


def template_switch(template: str, think: bool) -> str | None:
    """`template` rendering as if `enable_thinking=think` were passed; None: no switch."""
    if SWITCH not in template:
        return None
    return f"{{%- set {SWITCH} = {'true' if think else 'false'} -%}}" + template


def split_thinking(gen: Any, fmt: ThinkingFormat | None) -> None:
    """Have a `chatcli.answer.Generation` split `fmt`'s thinking from its answer as it
    streams (nothing where the model has no thinking block)."""
    if fmt is not None:
        gen.splitter = ThinkingSplitter(fmt)


def _held(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ThinkingSplitter:
    def __init__(self, fmt: ThinkingFormat) -> None:
        self.fmt = fmt
        self.inside = fmt.inside
        self.thought = fmt.inside  # a block was (or is being) thought
        self._buffer = ""
        self._said = False  # answer text other than blank space has been said
        self._trim_thought = fmt.inside  # drop the newlines that open the block
        self._trim_said = False  # drop the blank lines after the block

    def feed(self, text: str) -> tuple[str, str]:
        """(thought, said) of the next delta of the answer."""
        buffer = self._buffer + text
        thought = said = ""
        while buffer:
            if self.inside:
                end = buffer.find(self.fmt.close)
                if end < 0:  # held back: a tag cut short, and newlines a close would drop
                    keep = _held(buffer, self.fmt.close)
                    keep += len(buffer[:len(buffer) - keep]) - len(
                        buffer[:len(buffer) - keep].rstrip("\n"))
                    thought += buffer[:len(buffer) - keep]
                    buffer = buffer[len(buffer) - keep:]
                    break
                thought += buffer[:end].rstrip("\n")
                buffer = buffer[end + len(self.fmt.close):]
                self.inside, self._trim_said = False, True
                continue
            if not self._said and not self.thought:
                stripped = buffer.lstrip()
                if stripped.startswith(self.fmt.open):
                    buffer = stripped[len(self.fmt.open):]
                    self.inside = self.thought = self._trim_thought = True
                    continue
                if self.fmt.open.startswith(stripped):  # blank, or a tag cut short
                    break
            said += buffer
            buffer = ""
        self._buffer = buffer
        if self._trim_thought and thought:
            thought = thought.lstrip("\n")
            self._trim_thought = not thought
        if self._trim_said and said:
            said = said.lstrip()
            self._trim_said = not said
        if said.strip():
            self._said = True
        return thought, said

    def flush(self) -> tuple[str, str]:
        """What is held back, at the end of the answer: (thought, said)."""
        buffer, self._buffer = self._buffer, ""
        if self.inside:
            return buffer.lstrip("\n") if self._trim_thought else buffer, ""
        return "", buffer if not self._trim_said else buffer.lstrip()
