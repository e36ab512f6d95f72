"""Constrained decoding (issue 14): the spec, engine errors, masks under every strategy, the CLI.

Every figure is checked against a direct computation on the tiny random-weight model of
conftest (vocabulary 400, EOS `<|im_end|>` = 2): the matcher is replayed token by token
(`Compiled.matcher()`), the model's logits are computed by teacher forcing, and what
chatcli reports (tokens, removed mass, beam scores, `--json`) must equal what follows
from the two. Random weights are the hard case: the model knows nothing of JSON, so every
token a constraint admits is the constraint's doing.

The model runs on one thread (as in test_beam.py): a model this small only loses from
threading on a busy machine, and the whole file stays within seconds.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from chatcli.constraints.engine import Compiled, ConstraintError, compile_constraint
from chatcli.constraints.spec import Constraint, from_options, parse_shorthand
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import resolve_settings
from chatcli.errors import UsageError
from chatcli.generation.stream import Generation, StepEvent, constrained_lm, stream
from chatcli.loader import LoadedModel
from conftest import Tiny, one_thread, printed, run_cli, tiny_loaded

EOS = 2  # <|im_end|> of the tiny tokenizer (asserted by the `loaded` fixture)
# A bounded JSON schema: the random model completes it in ~35 tokens under every strategy.
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "tag": {"enum": ["red", "green", "blue"]},
    },
    "required": ["ok", "n", "tag"],
    "additionalProperties": False,
}
SCHEMA_TEXT = json.dumps(SCHEMA)
SCHEMA_HINT = ("check the schema (JSON Schema draft 2020-12; overlapping oneOf, dependencies "
               "and custom formats are not supported)")
REGEX_HINT = "check the regular expression (Rust regex syntax)"
GRAMMAR_HINT = "check the grammar (Lark, or GBNF with ::= rules)"
# Every token but EOS, as many times as the model likes (EOS is allowed wherever the grammar
# accepts, which is everywhere): a mask that removes nothing at any step. The regex '(.|\n)*'
# removes <|endoftext|>, <|im_start|> and the byte tokens that cannot begin valid UTF-8, with
# some probability at every step; sampling renormalizes over what is left and beam search ranks
# by the log-softmax of the masked logits, so only a mask that removes nothing gives the same
# draws and the same beam scores over the whole distribution (the regex: greedy and top-k below).
ALL_TOKENS = Constraint("grammar", f"start: <[^{EOS}]>*\n", syntax="lark", source="all.lark")
ANY_TEXT = Constraint("regex", "(.|\n)*", source="--regex")


# -- the model, and replaying a constraint directly ------------------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_model: Tiny) -> Iterator[LoadedModel]:
    with one_thread():
        result = tiny_loaded(tiny_model)
        tok = result.tokenizer
        assert result.eos_ids == {EOS} and result.lm.vocab_size == 400
        assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>",
                                                         "<|im_end|>"]
        yield result


def prompt_of(loaded: LoadedModel, text: str) -> list[int]:
    chat = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)
    return list(loaded.tokenizer(chat, add_special_tokens=False)["input_ids"])


def generate(loaded: LoadedModel, text: str, strategy: str = "greedy", n: int = 40,
             constraint: Constraint | None = None, candidates: int | None = None,
             **flags: Any) -> tuple[Generation, list[StepEvent]]:
    settings = resolve_settings(strategy_registry(), strategy=strategy, flags=flags)
    gen = stream(loaded, prompt_of(loaded, text), settings, n, candidates=candidates,
                 constraint=constraint)
    events = list(gen)
    return gen, events


def compiled_for(loaded: LoadedModel, constraint: Constraint) -> Compiled:
    return compile_constraint(constraint, str(loaded.folder / "tokenizer.json"),
                              loaded.lm.vocab_size, frozenset(loaded.eos_ids))


def masks(compiled: Compiled, tokens: list[int]) -> list[torch.Tensor]:
    """The allowed mask before each token, replaying a fresh matcher; each token must be
    allowed where it was chosen."""
    matcher = compiled.matcher()
    out = []
    for i, token in enumerate(tokens):
        allowed = matcher.allowed().clone()
        assert bool(allowed[token]), f"token {i} ({token}) is not allowed there"
        out.append(allowed)
        matcher.advance(token)
    return out


def allowed_prefix(compiled: Compiled, tokens: list[int]) -> int:
    """How many leading `tokens` the constraint allows."""
    matcher = compiled.matcher()
    for i, token in enumerate(tokens):
        if not bool(matcher.allowed()[token]):
            return i
        matcher.advance(token)
    return len(tokens)


def forced_logits(loaded: LoadedModel, text: str, tokens: list[int]) -> torch.Tensor:
    """The model's logits (float32) before each of `tokens`, by teacher forcing."""
    prompt = prompt_of(loaded, text)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt + tokens[:-1]])).logits[0]  # type: ignore[attr-defined]
    return logits[len(prompt) - 1:].float()


def utf8_start(token_bytes: bytes) -> bool:
    """Whether some valid UTF-8 text begins with these bytes."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(token_bytes, final=False)
    except UnicodeDecodeError:
        return False
    return True


def byte_level_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode), inverted."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


# -- 1. spec: from_options, the shorthand, errors ---------------------------------------------
SHORTHAND = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "description": "in years"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def test_from_options_each_option(tmp_path: Path) -> None:
    assert from_options() is None
    assert from_options(json_object=False) is None
    assert from_options(schema='{"type": "object"}') == Constraint(
        "json_schema", '{"type": "object"}', source="--schema")
    person = tmp_path / "person.json"
    person.write_text('{"type": "object",\n "properties": {"name": {"type": "string"}}}\n')
    from_file = from_options(schema=str(person))
    assert from_file == Constraint(
        "json_schema", '{"type": "object", "properties": {"name": {"type": "string"}}}',
        source="person.json")
    assert from_file.describe() == "JSON schema (person.json)" and from_file.is_json
    assert from_options(schema="name str, age int: in years, tags list[str]") == Constraint(
        "json_schema", json.dumps(SHORTHAND), source="--schema")
    obj = from_options(json_object=True)
    assert obj == Constraint("json_object", "", source="--json-object")
    assert (obj.schema(), obj.as_dict(), obj.describe()) == (
        {"type": "object"}, {"kind": "json_object", "schema": {"type": "object"}},
        "any JSON object")
    regex = from_options(regex="[0-9]+")
    assert regex == Constraint("regex", "[0-9]+", source="--regex")
    assert (regex.as_dict(), regex.describe(), regex.is_json) == (
        {"kind": "regex", "regex": "[0-9]+"}, "regex '[0-9]+'", False)
    lark = tmp_path / "answer.lark"
    lark.write_text('start: "yes" | "no"\n')
    grammar = from_options(grammar=str(lark))
    assert grammar == Constraint("grammar", 'start: "yes" | "no"\n', syntax="lark",
                                 source="answer.lark")
    assert grammar.as_dict() == {"kind": "grammar", "grammar": 'start: "yes" | "no"\n',
                                 "syntax": "lark"}
    assert grammar.describe() == "lark grammar (answer.lark)"
    choice = from_options(choice=" yes, no ,maybe")
    assert choice == Constraint("choice", '["yes", "no", "maybe"]', source="--choice")
    assert (choice.choices, choice.as_dict(), choice.describe()) == (
        ["yes", "no", "maybe"], {"kind": "choice", "choices": ["yes", "no", "maybe"]},
        "one of 'yes', 'no', 'maybe'")


def test_shorthand_exact_schemas() -> None:
    assert parse_shorthand("name str, age int: in years, tags list[str]") == SHORTHAND
    # newlines separate fields too; the type defaults to str
    assert parse_shorthand("name\nscore float\n\nok bool: checked?\nids list[ int ]") == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "score": {"type": "number"},
            "ok": {"type": "boolean", "description": "checked?"},
            "ids": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["name", "score", "ok", "ids"],
        "additionalProperties": False,
    }
    assert from_options(schema="ok bool").schema() == {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
        "additionalProperties": False}


SHORTHAND_HINT = "each field is NAME [TYPE][: description], e.g. 'age int: in years'"
TYPES_HINT = "types: str, int, float, bool, list[T] (e.g. 'name str, tags list[str]')"
SCHEMA_FILE_HINT = "give a JSON Schema file, JSON text, or fields like 'name str, age int'"


def _write(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def _mkdir(tmp: Path, name: str) -> str:
    (tmp / name).mkdir(exist_ok=True)
    return str(tmp / name)


SPEC_ERRORS = [
    # (options, given tmp_path; message ({tmp}: tmp_path); hint)
    (lambda t: {"schema": "name str", "regex": "a"},
     "--schema and --regex cannot be combined: an answer has one shape", "keep one of them"),
    (lambda t: {"json_object": True, "grammar": "g.lark", "choice": "a,b"},
     "--json-object and --grammar and --choice cannot be combined: an answer has one shape",
     "keep one of them"),
    (lambda t: {"schema": "name string"},
     "--schema: unknown type 'string' for field 'name'", TYPES_HINT),
    (lambda t: {"schema": "tags list[list[str]]"},
     "--schema: unknown type 'list[list[str]]' for field 'tags'", TYPES_HINT),
    (lambda t: {"schema": "name str, age int, name int"},
     "--schema: field 'name' is given twice", "name each field once"),
    (lambda t: {"schema": "name str, 1st int"},
     "--schema: cannot read '1st int' as a field", SHORTHAND_HINT),
    (lambda t: {"schema": " , "}, "--schema is empty", "give fields like 'name str, age int'"),
    (lambda t: {"choice": "yes,,no"}, "--choice: an empty choice in 'yes,,no'",
     "separate non-empty choices with commas, e.g. --choice yes,no"),
    (lambda t: {"choice": " "}, "--choice: an empty choice in ' '",
     "separate non-empty choices with commas, e.g. --choice yes,no"),
    (lambda t: {"choice": "yes,no, yes"}, "--choice: a choice is given twice in 'yes,no, yes'",
     "list each once"),
    (lambda t: {"schema": str(t / "missing.json")}, "--schema: no such file: {tmp}/missing.json",
     SCHEMA_FILE_HINT),
    (lambda t: {"schema": _write(t, "bad.json", b'\xff{"type": "object"}')},
     "--schema: {tmp}/bad.json is not UTF-8 text (byte 0xff at offset 0)", "save it as UTF-8"),
    (lambda t: {"schema": _mkdir(t, "schemas")}, "--schema: {tmp}/schemas is a directory",
     "give a JSON Schema file inside it"),
    (lambda t: {"schema": _mkdir(t, "schemas") + "/"}, "--schema: {tmp}/schemas/ is a directory",
     "give a JSON Schema file inside it"),
    (lambda t: {"schema": '{"type": "object",\n "x": }'},
     "--schema: not valid JSON (line 2, column 7: Expecting value)",
     "a JSON Schema is a JSON object"),
    (lambda t: {"schema": _write(t, "person.json", '{\n  "type": "object"\n  "x": 1\n}\n')},
     "--schema: not valid JSON in person.json (line 3, column 3: Expecting ',' delimiter)",
     "a JSON Schema is a JSON object"),
    (lambda t: {"schema": _write(t, "list.json", "[1, 2]")},
     "--schema: a JSON Schema is a JSON object, not list",
     'e.g. {"type": "object", "properties": {"name": {"type": "string"}}}'),
    (lambda t: {"regex": ""}, "--regex is empty",
     "give a regular expression, e.g. --regex '[0-9]+'"),
    (lambda t: {"grammar": str(t / "nope.lark")}, "--grammar: no such file: {tmp}/nope.lark",
     "give a grammar file (Lark, or GBNF with ::= rules)"),
    (lambda t: {"grammar": _write(t, "empty.lark", "\n  \n")},
     "--grammar: {tmp}/empty.lark is empty", "write the grammar's rules in it"),
    (lambda t: {"grammar": _write(t, "bad.gbnf", b"root ::= \xe9")},
     "--grammar: {tmp}/bad.gbnf is not UTF-8 text (byte 0xe9 at offset 9)", "save it as UTF-8"),
    (lambda t: {"grammar": _mkdir(t, "grammars")}, "--grammar: {tmp}/grammars is a directory",
     "give a grammar file inside it"),
]


@pytest.mark.parametrize(("options", "message", "hint"), SPEC_ERRORS)
def test_spec_errors(tmp_path: Path, options: Any, message: str, hint: str) -> None:
    with pytest.raises(UsageError) as err:
        from_options(**options(tmp_path))
    assert (err.value.message, err.value.hint) == (message.format(tmp=tmp_path), hint)
    assert err.value.exit_code == 2


def test_gbnf_or_lark(tmp_path: Path, loaded: LoadedModel) -> None:
    """`.gbnf`, or any file with `::=`, is GBNF; the rest Lark; the engine reads both."""
    cases = {"yes.gbnf": ('root ::= "yes" | "no"\n', "gbnf"),
             "odd.gbnf": ('start: "yes" | "no"\n', "gbnf"),  # the suffix decides
             "rules.txt": ('root ::= "yes" | "no"\n', "gbnf"),  # so does ::=
             "yes.lark": ('start: "yes" | "no"\n', "lark"),
             "grammar": ('start: "yes" | "no"\n', "lark")}
    tokens = loaded.tokenizer("yes", add_special_tokens=False)["input_ids"] + [EOS]
    for name, (text, syntax) in cases.items():
        constraint = from_options(grammar=_write(tmp_path, name, text))
        assert constraint == Constraint("grammar", text, syntax=syntax, source=name)
        compiled = compiled_for(loaded, constraint)
        assert len(masks(compiled, tokens)) == len(tokens)  # "yes" then EOS: allowed
        assert not bool(compiled.matcher().allowed()[EOS])  # "" is not an answer


# -- 2. engine: compile errors, directly and through the CLI ----------------------------------
BROKEN_LARK = 'start: "a" (\n'
ENGINE_ERRORS = [
    (Constraint("json_schema", '{"type": "foo"}', source="--schema"),
     "the JSON schema: Invalid type: foo", SCHEMA_HINT),
    (Constraint("json_schema", '{"type": "integer", "minimum": 5, "maximum": 1}',
                source="--schema"),
     "the JSON schema: Unsatisfiable schema: minimum (5) is greater than maximum (1)",
     SCHEMA_HINT),
    (Constraint("grammar", BROKEN_LARK, syntax="lark", source="broken.lark"),
     "the grammar: Expected token ')', found '\\n' (at \"\\n\\n\" ('\\n'))",
     GRAMMAR_HINT),
    (Constraint("grammar", "start: foo\n", syntax="lark", source="unknown.lark"),
     'the grammar: unknown name: "foo"', GRAMMAR_HINT),
    (Constraint("grammar", 'root ::= "a" (\n', syntax="gbnf", source="broken.gbnf"),
     "broken.gbnf: Failed to convert the grammar from GBNF to Lark: Expected ')' at line 2, "
     "'root ::= \"a\" (\\n' ^ ''", GRAMMAR_HINT),
    (Constraint("regex", "a(b", source="--regex"),
     'the regex: invalid regex "a(b" (in regex): regex parse error: unclosed group', REGEX_HINT),
    (Constraint("regex", "[^\\s\\S]", source="--regex"),
     "the regex can never be satisfied: no text matches it", REGEX_HINT),
]


@pytest.mark.parametrize(("constraint", "message", "hint"), ENGINE_ERRORS,
                         ids=lambda v: v.source if isinstance(v, Constraint) else "")
def test_compile_errors_are_one_line(loaded: LoadedModel, constraint: Constraint, message: str,
                                     hint: str) -> None:
    with pytest.raises(ConstraintError) as err:
        compiled_for(loaded, constraint)
    assert (err.value.message, err.value.hint) == (message, hint)
    assert "\n" not in err.value.message and isinstance(err.value, UsageError)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["--schema", '{"type": "foo"}'], ENGINE_ERRORS[0][1], SCHEMA_HINT),
    (["--schema", '{"type": "integer", "minimum": 5, "maximum": 1}'], ENGINE_ERRORS[1][1],
     SCHEMA_HINT),
    (["--grammar", "broken.lark"], ENGINE_ERRORS[2][1], GRAMMAR_HINT),
    (["--regex", "a(b"], ENGINE_ERRORS[5][1], REGEX_HINT),
    (["--regex", "[^\\s\\S]"], ENGINE_ERRORS[6][1], REGEX_HINT),
], ids=["invalid-schema", "unsatisfiable-schema", "grammar-syntax", "regex-syntax",
        "regex-never-matches"])
def test_compile_errors_through_the_cli(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        args: list[str], message: str, hint: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.lark").write_text(BROKEN_LARK)
    result = run_cli(["ask", "-n", "5", *args, "Hi"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"error: {message}; hint: {hint}\n"


# -- 3. a constraint that allows everything: token-identical output ---------------------------
def test_what_the_permissive_constraints_allow(loaded: LoadedModel) -> None:
    """The all-token grammar masks nothing; the regex '(.|\\n)*' allows exactly EOS and the
    tokens whose bytes can begin valid UTF-8 text (not <|endoftext|>, <|im_start|>, nor the
    81 tokens whose bytes start with a continuation byte or are never valid UTF-8)."""
    everything = compiled_for(loaded, ALL_TOKENS).matcher()
    for token in [5, 300, 98, 1, 0, 97]:  # ordinary, merged, a continuation byte, specials
        assert bool(everything.allowed().all())
        everything.advance(token)
    assert bool(everything.allowed().all()) and everything.accepting

    decoder = byte_level_decoder()
    tok = loaded.tokenizer
    expected = torch.tensor([
        i == EOS if i in tok.all_special_ids
        else utf8_start(bytes(decoder[ch] for ch in tok.convert_ids_to_tokens(i)))
        for i in range(400)])
    allowed = compiled_for(loaded, ANY_TEXT).matcher().allowed()
    assert torch.equal(allowed, expected)
    assert (~allowed).nonzero().view(-1).tolist()[:3] == [0, 1, 97]
    assert int((~allowed).sum()) == 2 + 81


PROMPTS = ["Hello there", "def add(a, b):", "Tell me a story"]


@pytest.mark.parametrize("text", PROMPTS)
def test_all_tokens_greedy_is_unconstrained_greedy(loaded: LoadedModel, text: str) -> None:
    free, _ = generate(loaded, text)
    held, events = generate(loaded, text, constraint=ALL_TOKENS, candidates=3)
    assert held.token_ids == free.token_ids and held.text == free.text
    assert held.stats.finish_reason == free.stats.finish_reason
    assert held.constraint_satisfied is True
    assert all(e.candidates.removed == () and e.candidates.removed_mass == 0.0 for e in events)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("flags", [{}, {"temperature": 0.7, "top_p": 0.9}], ids=["plain", "tp"])
def test_all_tokens_sample_is_unconstrained_sample(loaded: LoadedModel, seed: int,
                                                   flags: dict[str, float]) -> None:
    free, _ = generate(loaded, "Hello there", "sample", seed=seed, **flags)
    held, _ = generate(loaded, "Hello there", "sample", constraint=ALL_TOKENS, seed=seed,
                       **flags)
    assert held.token_ids == free.token_ids and len(free.token_ids) == 40


@pytest.mark.parametrize("text", PROMPTS[:2])
def test_all_tokens_beam_is_unconstrained_beam(loaded: LoadedModel, text: str) -> None:
    flags = {"num_beams": 3, "num_return_sequences": 3}
    free, _ = generate(loaded, text, "beam", n=20, **flags)
    held, _ = generate(loaded, text, "beam", n=20, constraint=ALL_TOKENS, **flags)
    assert len(free.hypotheses) == 3
    # same hypotheses, same order, same scores (bit for bit: the mask changes nothing)
    assert held.hypotheses == free.hypotheses
    assert held.token_ids == free.token_ids


# The regex '(.|\n)*' removes the specials other than EOS and the byte tokens that cannot
# begin valid UTF-8 (above), and this random model emits such bytes within a few tokens
# (e.g. 'Hello there': its 6th greedy token). So the equality is built on the part of each
# unconstrained answer the regex allows: its allowed prefix, asserted non-trivial.
@pytest.mark.parametrize(("text", "prefix"), [("Hello there", 5), ("def add(a, b):", 5),
                                              ("Hello", 6), ("Tell me a story", 3)])
def test_any_text_regex_greedy_is_unconstrained_greedy(loaded: LoadedModel, text: str,
                                                       prefix: int) -> None:
    free, _ = generate(loaded, text)
    compiled = compiled_for(loaded, ANY_TEXT)
    assert allowed_prefix(compiled, free.token_ids) == prefix
    held, _ = generate(loaded, text, n=prefix, constraint=ANY_TEXT)
    assert held.token_ids == free.token_ids[:prefix]
    if free.token_ids[prefix - 1] == EOS:  # 'Tell me a story': the whole answer
        assert held.token_ids == free.token_ids and held.constraint_satisfied is True


# Sampling: a mask that removes any probability renormalizes what is left, and the same seed
# then draws from a shifted CDF. The draws are equal while every token the filters keep is
# allowed: with --top-k 2, up to the first step where one of the model's top 2 is removed.
@pytest.mark.parametrize(("seed", "prefix"), [(1, 12), (2, 3), (3, 11)])
def test_any_text_regex_sample_with_allowed_top_k(loaded: LoadedModel, seed: int,
                                                  prefix: int) -> None:
    text = "Tell me a story"
    free, events = generate(loaded, text, "sample", candidates=2, seed=seed, top_k=2)
    matcher = compiled_for(loaded, ANY_TEXT).matcher()
    kept = 0
    for e in events:
        allowed = matcher.allowed()
        if not all(bool(allowed[i]) for i, _ in e.candidates.raw):
            break
        matcher.advance(e.token_id)
        kept += 1
    assert kept == prefix
    held, _ = generate(loaded, text, "sample", n=prefix, constraint=ANY_TEXT, seed=seed,
                       top_k=2)
    assert held.token_ids == free.token_ids[:prefix]


# -- 4. the greedy token allowed at every step: constrained greedy = greedy --------------------
def _exact_regex(text: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


@pytest.mark.parametrize(("text", "n", "ends"), [("Tell me a story", 10, True),
                                                 ("Hello", 5, False),
                                                 ("def add(a, b):", 5, False)])
@pytest.mark.parametrize("kind", ["choice", "regex"])
def test_constrained_greedy_follows_the_model_when_allowed(loaded: LoadedModel, text: str,
                                                           n: int, ends: bool,
                                                           kind: str) -> None:
    free, _ = generate(loaded, text, n=n)
    assert (free.token_ids[-1] == EOS) == ends
    answer = loaded.tokenizer.decode(free.token_ids, skip_special_tokens=True)
    assert "\ufffd" not in answer
    if kind == "choice":  # the answer among other choices; not stripped, unlike --choice
        constraint = Constraint("choice", json.dumps(["no", answer, answer + "!"]))
    else:  # an alternation containing the answer, and longer texts it begins
        constraint = Constraint("regex", f"zzz|{_exact_regex(answer)}(!|\\?)*")
    held, events = generate(loaded, text, n=n, constraint=constraint, candidates=5)
    assert held.token_ids == free.token_ids and held.text == free.text == answer
    assert held.stats.finish_reason == ("stop" if ends else "length")
    assert held.constraint_satisfied is True
    # the mask was far from empty: almost the whole distribution was removed at each step
    assert all(e.candidates.removed_mass > 0.5 for e in events)


# -- 5. the masked-candidates view --------------------------------------------------------------
@pytest.mark.parametrize(("strategy", "constraint", "flags"), [
    ("greedy", Constraint("json_schema", SCHEMA_TEXT), {}),
    ("sample", Constraint("json_schema", SCHEMA_TEXT), {"seed": 3}),
    ("sample", Constraint("choice", '["yes", "no", "maybe"]'), {"seed": 1, "temperature": 1.5}),
    ("greedy", ANY_TEXT, {}),
], ids=["greedy-schema", "sample-schema", "sample-choice", "greedy-any-text"])
def test_removed_mass_and_removed_ids(loaded: LoadedModel, strategy: str,
                                      constraint: Constraint, flags: dict[str, Any]) -> None:
    k = 5
    gen, events = generate(loaded, "Hi", strategy, n=60, constraint=constraint, candidates=k,
                           **flags)
    tokens = [e.token_id for e in events]
    allowed = masks(compiled_for(loaded, constraint), tokens)
    logits = forced_logits(loaded, "Hi", tokens)
    removed_somewhere = 0
    for e, mask, step in zip(events, allowed, logits, strict=True):
        c = e.candidates
        probs = torch.softmax(step, -1)
        top = torch.topk(probs, k).indices.tolist()
        assert [i for i, _ in c.raw] == top
        assert c.removed == tuple(i for i in top if not bool(mask[i]))
        assert c.removed_mass == pytest.approx(float(probs[~mask].sum()), abs=1e-5)
        assert e.logprob == pytest.approx(float(torch.log_softmax(step, -1)[e.token_id]),
                                          abs=1e-4)
        removed_somewhere += bool(c.removed)
    assert removed_somewhere >= 1
    assert gen.stats.finish_reason == ("length" if constraint is ANY_TEXT else "stop")


# -- 6. beam search under a constraint --------------------------------------------------------
def direct_beam_score(loaded: LoadedModel, text: str, compiled: Compiled, tokens: list[int],
                      length_penalty: float) -> tuple[float, float]:
    """(score, summed log-prob) of one hypothesis: the log-softmax of the masked logits at
    each of its tokens (EOS included), summed, over length ** length_penalty."""
    logits = forced_logits(loaded, text, tokens)
    total = 0.0
    for token, mask, step in zip(tokens, masks(compiled, tokens), logits, strict=True):
        total += float(torch.log_softmax(step.masked_fill(~mask, float("-inf")), -1)[token])
    return total / len(tokens) ** length_penalty, total


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("text", ["Hi", "Hello there"])
def test_beam_hypotheses_satisfy_and_scores_are_constrained_logprobs(
        loaded: LoadedModel, text: str, length_penalty: float) -> None:
    import jsonschema

    constraint = Constraint("json_schema", SCHEMA_TEXT)
    gen, _ = generate(loaded, text, "beam", n=60, constraint=constraint, num_beams=3,
                      num_return_sequences=3, length_penalty=length_penalty)
    lm = constrained_lm(loaded, constraint)
    assert len(gen.hypotheses) == 3
    assert len({tuple(h.token_ids) for h in gen.hypotheses}) == 3
    for h in gen.hypotheses:
        assert h.finished and h.token_ids[-1] == EOS and lm.satisfied(h.token_ids)
        jsonschema.validate(json.loads(h.text), SCHEMA)
        score, logprob = direct_beam_score(loaded, text, lm.compiled, h.token_ids,
                                           length_penalty)
        assert h.score == pytest.approx(score, rel=1e-5, abs=1e-4)
        assert h.logprob == pytest.approx(logprob, rel=1e-5, abs=1e-4)
    assert [h.score for h in gen.hypotheses] == sorted((h.score for h in gen.hypotheses),
                                                       reverse=True)
    assert gen.token_ids == gen.hypotheses[0].token_ids and gen.constraint_satisfied is True


@pytest.mark.parametrize(("constraint", "answers"), [
    (Constraint("regex", "[ab]", source="--regex"), {"a", "b"}),
    (Constraint("choice", '["yes", "no"]', source="--choice"), {"yes", "no"}),
], ids=["regex", "choice"])
def test_beam_under_a_narrow_constraint_returns_only_real_hypotheses(
        loaded: LoadedModel, constraint: Constraint, answers: set[str]) -> None:
    gen, _ = generate(loaded, "Hi", "beam", n=10, constraint=constraint, num_beams=3,
                      num_return_sequences=3)
    compiled = compiled_for(loaded, constraint)
    assert {h.text for h in gen.hypotheses} == answers
    # Only two answers exist: two hypotheses, each scored by its constrained
    # log-probabilities (a third used to come back: a filler row or a finished beam fed EOS
    # again, at -5e8 or -2.5e8).
    assert len({tuple(h.token_ids) for h in gen.hypotheses}) == len(gen.hypotheses)
    for h in gen.hypotheses:
        assert h.token_ids.count(EOS) == 1
        score, _ = direct_beam_score(loaded, "Hi", compiled, h.token_ids, 1.0)
        assert h.score == pytest.approx(score, rel=1e-5, abs=1e-4)


# -- 7. sampling under a constraint -------------------------------------------------------------
@pytest.mark.parametrize(("constraint", "flags"), [
    (Constraint("json_schema", SCHEMA_TEXT), {}),
    (Constraint("json_object", ""), {"temperature": 1.3}),
    (Constraint("choice", '["yes", "no", "maybe"]'), {"top_k": 50}),
    (Constraint("regex", "[a-z]+( [a-z]+)*\\."), {"top_p": 0.95}),
], ids=["schema", "json-object", "choice", "regex"])
def test_every_sampled_token_is_allowed(loaded: LoadedModel, constraint: Constraint,
                                        flags: dict[str, Any]) -> None:
    import jsonschema

    compiled = compiled_for(loaded, constraint)
    lm = constrained_lm(loaded, constraint)
    answers = set()
    for seed in range(8):
        gen, _ = generate(loaded, "Hi", "sample", n=30, constraint=constraint, seed=seed,
                          **flags)
        masks(compiled, gen.token_ids)  # every token was allowed where it was drawn
        assert gen.constraint_satisfied is (gen.stats.finish_reason == "stop")
        assert gen.constraint_satisfied is lm.satisfied(gen.token_ids)
        if gen.constraint_satisfied and constraint.is_json:
            jsonschema.validate(json.loads(gen.text), constraint.schema())
        answers.add(tuple(gen.token_ids))
        if seed < 2:  # the same seed, the same answer
            again, _ = generate(loaded, "Hi", "sample", n=30, constraint=constraint, seed=seed,
                                **flags)
            assert again.token_ids == gen.token_ids
    assert len(answers) > 1  # the seeds do differ


# -- 8. the CLI ----------------------------------------------------------------------------------
def test_cli_json_schema_parsed(cli) -> None:
    import jsonschema

    result = run_cli(["ask", "--json", "--schema", SCHEMA_TEXT, "-n", "60", "Hi"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["constraint"] == {"kind": "json_schema", "schema": SCHEMA}
    assert data["constraint_satisfied"] is True and data["finish_reason"] == "stop"
    assert data["parsed"] == json.loads(data["text"])
    jsonschema.validate(data["parsed"], SCHEMA)
    assert list(data)[-3:] == ["constraint", "constraint_satisfied", "parsed"]

    short = json.loads(run_cli(["ask", "--json", "--schema", "ok bool", "-n", "20", "Hi"]).stdout)
    assert short["constraint"] == {"kind": "json_schema", "schema": {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
        "additionalProperties": False}}
    assert short["constraint_satisfied"] is True
    assert short["parsed"] == json.loads(short["text"]) and set(short["parsed"]) == {"ok"}


INCOMPLETE = ("error: the answer is incomplete: the token limit (2 tokens) cut it short before "
              "it satisfied --schema; hint: raise --max-new-tokens (-n), or loosen the "
              "constraint\n")


def test_cli_incomplete_answer_is_printed_saved_and_fails(cli) -> None:
    result = run_cli(["ask", "--schema", SCHEMA_TEXT, "-n", "2", "Hi"])
    assert result.exit_code == 1
    assert result.stdout == printed('{"')
    assert result.stderr == INCOMPLETE
    saved = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    assert [(m["role"], m["content"]) for m in saved["messages"]] == [
        ("user", "Hi"), ("assistant", '{"')]

    as_json = run_cli(["ask", "--json", "--schema", SCHEMA_TEXT, "-n", "2", "Hi"])
    assert (as_json.exit_code, as_json.stderr) == (1, INCOMPLETE)
    data = json.loads(as_json.stdout)
    assert (data["text"], data["finish_reason"], data["constraint_satisfied"]) == (
        '{"', "length", False)
    assert "parsed" not in data

    stopped = run_cli(["ask", "--choice", "yes,no,maybe", "--stop", "o", "-n", "10", "Hi"])
    assert (stopped.exit_code, stopped.stdout) == (1, printed("n"))  # 'no', cut at the 'o'
    assert stopped.stderr == ("error: the answer is incomplete: a stop string cut it short "
                              "before it satisfied --choice; hint: drop the stop string, or "
                              "loosen the constraint\n")


def test_cli_candidates_show_what_the_choice_removed(cli) -> None:
    args = ["--show-candidates", "3", "--choice", "yes,no,maybe", "-n", "10", "Hi"]
    result = run_cli(["ask", *args])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = [line for line in lines if line.startswith("step")]
    assert len(header) == 1 and re.sub(r" {2,}", "  ", header[0]) == (
        "step  token  p (drawn)  p (model)  entropy  removed  model top-k (✗ removed)  "
        "drawn-from top-k")
    rows = lines[lines.index(header[0]) + 1:]
    column = header[0].index("removed")

    data = json.loads(run_cli(["ask", "--json", *args]).stdout)
    assert lines[0] == data["text"] and data["text"] in ("yes", "no", "maybe")
    assert data["constraint_satisfied"] is True and data["finish_reason"] == "stop"
    marks = 0
    for record, row in zip(data["tokens"], rows, strict=True):
        flags = [c["removed"] for c in record["top_model"]]
        assert row.count("✗") == sum(flags)  # the drawn-from column never has one
        assert row[column:].split()[0] == f"{record['removed_mass']:.3f}"
        marks += sum(flags)
    assert marks >= 1


def test_a_directory_named_without_a_slash_is_not_field_shorthand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schemas").mkdir()
    with pytest.raises(UsageError) as err:
        from_options(schema="schemas")
    assert (err.value.message, err.value.hint) == (
        "--schema: schemas is a directory", "give a JSON Schema file inside it")
    assert from_options(schema="name").schema() == parse_shorthand("name")  # no such dir


def test_a_schema_too_large_for_the_engine_says_so(cli, tmp_path: Path) -> None:
    """A 2 MB schema: the engine's limit, not a hint about oneOf and formats."""
    properties = {f"field_{i}": {"type": "string", "description": "x" * 60}
                  for i in range(20_000)}
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"type": "object", "properties": properties}))
    assert big.stat().st_size > 2_000_000
    result = run_cli(["ask", "-n", "5", "--schema", str(big), "Hi"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        2, "", "error: the JSON schema is too large for the constraint engine: it builds at "
        "most 50,000 subschemas from one schema; hint: make it smaller: a part that repeats "
        "can be one definition in $defs that properties name with $ref\n")
