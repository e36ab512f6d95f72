"""The constraint engine: a `Constraint` compiled for a model's vocabulary, and its matchers.

Contract: `compile_constraint(constraint, tokenizer_json, vocab_size, eos_ids)` returns a
`Compiled` (raising `ConstraintError`, a `UsageError`, with one line naming what is
wrong and a hint, for an invalid or unsupported schema, a schema too large for the
engine (saying so, and its limit), a grammar or regex syntax error, or a constraint
nothing can satisfy). `Compiled.matcher()` makes a fresh `Matcher`: its
`allowed()` is the (vocab_size,) bool tensor of the tokens that may come next (an EOS id
only where the constraint accepts the text so far; ids past the tokenizer's vocabulary,
padding of the model's head, never), `advance(token)` consumes one (it must be allowed),
`accepting` says whether the text so far is complete, `copy()` forks it (beam search).

The engine is llguidance (MIT; used by llama.cpp, vLLM, SGLang): its tokenizer is built
from the model's tokenizer.json once per file and vocabulary size (about 0.4 s for
49,152 tokens; added tokens that are not special, such as Qwen3's `<think>`, taken as
the text they are: `_as_text_tokens`), a JSON schema compiles in milliseconds, a mask
takes microseconds (bench/constraint_engines.py). It is imported only here, only when a
constraint is used. Regular expressions are the Rust `regex` crate's syntax (`\\d`
matches any Unicode digit; `[0-9]` only ASCII); grammars are Lark, or GBNF converted to
Lark.

Knows nothing about models, logits, strategies, servers or the CLI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chatcli.constraints.spec import Constraint
from chatcli.errors import UsageError

HINTS = {
    "json_schema": "check the schema (JSON Schema draft 2020-12; overlapping oneOf, "
                   "dependencies and custom formats are not supported)",
    "json_object": "",
    "regex": "check the regular expression (Rust regex syntax)",
    "grammar": "check the grammar (Lark, or GBNF with ::= rules)",
    "choice": "give non-empty choices separated by commas",
}


SCHEMA_NODES = 50_000  # llguidance's cap on the subschemas it builds from one JSON schema


class ConstraintError(UsageError):
    """A constraint that cannot be compiled or can never be satisfied."""


@lru_cache(maxsize=4)
def _tokenizer(tokenizer_json: str, vocab_size: int, eos: tuple[int, ...]) -> Any:
    import llguidance

    return llguidance.LLTokenizer(_as_text_tokens(tokenizer_json), n_vocab=vocab_size,
                                  eos_token=list(eos))


_PLAIN = re.compile(r"[!-~]+")  # printable ASCII, no space: the same text in every vocab form


def _as_text_tokens(path: str) -> str:
    """The tokenizer.json llguidance reads: `path`, or, where the file has added tokens
    that are not special (Qwen3's `<think>`, `<tool_call>`: the model writes them as
    text, and decoding shows them), its text with those tokens moved into the model's
    vocabulary, so that llguidance takes them as the text they are. Left as they are,
    it takes every added token for a special one: a constraint whose text spells one
    allows it and then rejects it when it comes."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        added, vocab = data.get("added_tokens") or [], data["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return path  # llguidance says what is wrong with it
    moved = [a for a in added if not a.get("special") and isinstance(vocab, dict)
             and _PLAIN.fullmatch(str(a.get("content", ""))) and a["content"] not in vocab]
    if not moved:
        return path
    data["added_tokens"] = [a for a in added if a not in moved]
    for a in moved:
        vocab[a["content"]] = a["id"]
    return json.dumps(data)


def _grammar(constraint: Constraint) -> str:
    import llguidance

    if constraint.kind in ("json_schema", "json_object"):
        return str(llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(constraint.schema()),
            defaults={"whitespace_flexible": False, "item_separator": ", ",
                      "key_separator": ": "}))
    if constraint.kind == "regex":
        return str(llguidance.LLMatcher.grammar_from_regex(constraint.text))
    if constraint.kind == "choice":
        return str(llguidance.grammar_from("choice", constraint.text))
    try:
        return str(llguidance.grammar_from(constraint.syntax or "lark", constraint.text))
    except ValueError as exc:
        raise ConstraintError(f"{constraint.source or 'the grammar'}: {_first(str(exc))}",
                              HINTS["grammar"]) from exc


def _first(message: str) -> str:
    """One line of an engine message: its first line, and the `error:` line a regex
    parse error puts below a picture of the pattern."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid"
    head = re.sub(r"^(at )?\d+\(\d+\): ", "", lines[0].removeprefix("Parser Error: ").strip())
    detail = next((line[len("error:"):].strip() for line in lines[1:]
                   if line.startswith("error:")), None)
    return f"{head.rstrip(': ')}: {detail}" if detail else head


def _error(constraint: Constraint, first: str) -> ConstraintError:
    """The engine's complaint `first` about `constraint`, as one line and a hint."""
    if constraint.kind == "json_schema" and first == "schema too large":
        return ConstraintError(
            f"the JSON schema is too large for the constraint engine: it builds at most "
            f"{SCHEMA_NODES:,} subschemas from one schema",
            "make it smaller: a part that repeats can be one definition in $defs that "
            "properties name with $ref")
    return ConstraintError(f"{_what(constraint)}: {first}", HINTS[constraint.kind])


def _what(constraint: Constraint) -> str:
    return {"json_schema": "the JSON schema", "json_object": "the JSON object constraint",
            "regex": "the regex", "grammar": "the grammar",
            "choice": "--choice"}[constraint.kind]


@dataclass
class Compiled:
    """A constraint compiled for one vocabulary; `matcher()` starts a new answer."""

    constraint: Constraint
    grammar: str
    tokenizer: Any  # llguidance.LLTokenizer
    vocab_size: int
    eos_ids: frozenset[int]
    warnings: tuple[str, ...] = ()

    def matcher(self) -> Matcher:
        import llguidance

        inner = llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0)
        if inner.is_error():
            raise ConstraintError(f"{_what(self.constraint)}: {_first(inner.get_error())}",
                                  HINTS[self.constraint.kind])
        return Matcher(inner, self.vocab_size, self.eos_ids)


class Matcher:
    """Where one answer stands in the constraint (see the module)."""

    def __init__(self, inner: Any, vocab_size: int, eos_ids: frozenset[int]) -> None:
        import torch

        self.inner = inner
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self._words = (vocab_size + 31) // 32
        self._bits = torch.zeros(self._words, dtype=torch.int32)
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long)

    def allowed(self) -> Any:
        """(vocab_size,) bool: the tokens that may come next."""
        import torch

        bits = self._bits
        self.inner.unsafe_compute_mask_ptr(bits.data_ptr(), self._words * 4)
        mask = ((bits.unsqueeze(-1) >> self._shifts) & 1).view(-1)[: self.vocab_size].bool()
        if self._eos.numel() > 1:  # llguidance knows one EOS per accepting state: allow all
            mask[self._eos] = bool(mask[self._eos].any())
        if self.inner.is_error():
            return torch.zeros(self.vocab_size, dtype=torch.bool)
        return mask

    def advance(self, token: int) -> None:
        if token in self.eos_ids:
            return  # the end: nothing follows, the matcher's state does not matter
        if not self.inner.consume_token(int(token)):
            raise ConstraintError(f"token {token} does not satisfy the constraint "
                                  f"({_first(self.inner.get_error())})",
                                  "this is a bug in chatcli: please report it")

    @property
    def accepting(self) -> bool:
        return bool(self.inner.is_accepting())

    def admissible(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the constraint allows from here (an EOS id
        counts where the text before it is complete); the state is left as it was."""
        text = []
        for token in tokens:
            if token in self.eos_ids:
                break
            text.append(int(token))
        count = int(self.inner.validate_tokens(text)) if text else 0
        if count == len(text) < len(tokens):  # then an EOS id: is the text complete?
            if count:
                self.inner.consume_tokens(text)
            complete = self.accepting
            if count:
                self.inner.rollback(count)
            count += complete
        return count

    def rollback(self, count: int) -> None:
        """Undo the last `count` tokens advanced (EOS ids are never advanced)."""
        if count > 0:
            self.inner.rollback(count)

    def copy(self) -> Matcher:
        twin = Matcher.__new__(Matcher)
        twin.__dict__.update(self.__dict__)
        twin.inner = self.inner.deep_copy()
        twin._bits = self._bits.clone()
        return twin


def compile_constraint(constraint: Constraint, tokenizer_json: str, vocab_size: int,
                       eos_ids: frozenset[int]) -> Compiled:
    """Compile `constraint` for a vocabulary (see the module); raises `ConstraintError`."""
    import llguidance

    if not eos_ids:
        raise ConstraintError("a constrained answer needs the model's end-of-sequence token, "
                              "and this model has none", "answer without a constraint")
    tokenizer = _tokenizer(tokenizer_json, vocab_size, tuple(sorted(eos_ids)))
    try:
        grammar = _grammar(constraint)
    except ValueError as exc:  # schema text llguidance cannot read
        raise _error(constraint, _first(str(exc))) from exc
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise _error(constraint, _first(messages[0] if messages else ""))
    compiled = Compiled(constraint, grammar, tokenizer, vocab_size, frozenset(eos_ids),
                        tuple(messages))
    first = compiled.matcher()
    if not bool(first.allowed().any()):
        raise ConstraintError(f"{_what(constraint)} can never be satisfied: no text matches it",
                              HINTS[constraint.kind])
    return compiled
