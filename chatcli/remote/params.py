"""Decoding settings → the fields of a chat-completions request.

Contract: `check(spec, settings, candidates, constraint)` raises `UsageError`
(before any request is made) for a strategy, parameter, view or answer shape the
alias's server cannot honour, naming what is missing; `request_body(spec, settings,
messages, max_tokens, candidates, constraint)` builds the JSON body. Nothing here
names a strategy or a parameter: both come from their declarations
(`chatcli.decoding.base`).

* A strategy runs on a server when its capabilities have a `Remote`, and the
  server's profile has every feature it `needs` (beam search: `beam_search`).
  Its `fixed` fields are sent as they are (greedy: `temperature: 0`; beam:
  `use_beam_search: true`, `temperature: 0`), its parameters named in `always` even
  at their default (sample: `temperature`, `top_p`; beam: `n` = num_beams,
  `length_penalty`), and the run's seed when it says `seed` (sample: always, so the
  seed recorded in the history is the one the server used).
* Every other parameter of the strategy, and every common one, is sent under its
  declared `request` field when it is not off, if the profile takes that field; a
  parameter that is not off and that the profile cannot take (or that declares no
  field: `no_repeat_ngram_size`, beam's `early_stopping`, ...) is refused, naming its
  flag and the profile that would take it. `max_tokens` is the room the caller gives.
* `--show-candidates K` → `logprobs: true`, `top_logprobs: K` (at most the profile's
  `max_top_logprobs`); K = 0 (compare's sequence log-probability) asks for logprobs
  only where the profile has them. `stream_options: {"include_usage": true}` asks for
  the server's token counts where the profile takes it.

Server profiles (`server` in models.toml) are the rows of `PROFILES`: the standard
fields the server takes, its extra fields (chatcli's field name → the server's),
its features, its log-probabilities, and whether extra fields are always sent.
`generic` (the default) sends extra fields only when they are on; `openai` sends
standard fields only and refuses the rest; `vllm` is generic plus beam search and
`length_penalty`; `llama.cpp` always sends `top_k`, `min_p` and `repeat_penalty`,
because that server's own defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) are
not off; `transformers` (`transformers serve`) takes temperature, top_p, seed and
max_tokens only: it rejects unknown fields, ignores `logprobs`, `n`,
`presence_penalty` and `stream_options`, reads `frequency_penalty` as a repetition
penalty and keeps a stop string in the answer, so those are refused or not sent; and
it samples only when told so in its `generation_config` field (sent with any
temperature above 0, with its own default top_k of 50 turned off).

Answer shapes (`chatcli.constraints.spec.Constraint`, from --schema, --json-object,
--regex, --grammar, --choice) go into the request by the profile's `shapes`:
* `openai` (profiles generic and openai): --schema → `response_format: {"type":
  "json_schema", "json_schema": {"name": "answer", "schema": S, "strict": true}}`,
  --json-object → `response_format: {"type": "json_object"}`; nothing else.
* `vllm`: the JSON kinds as `openai`; --regex, --grammar (its text, Lark or GBNF:
  vLLM's engines read EBNF/Lark) and --choice under `structured_outputs` (`{"regex":
  R}`, `{"grammar": G}`, `{"choice": [...]}`), the field current vLLM reads (the older
  `guided_regex`/`guided_grammar`/`guided_choice` were removed in vLLM 0.12).
* `llama.cpp`: --schema → `response_format: {"type": "json_object", "schema": S}`,
  --json-object the same with `{"type": "object"}`: the one spelling every llama.cpp
  server reads (llama-server also reads a top-level `json_schema`, but
  llama-cpp-python's server ignores that field without a word and would answer
  unconstrained; it and older llama-servers reject `"type": "json_schema"`). A GBNF
  --grammar → top-level `grammar`; --choice → a GBNF grammar of the choices
  (`gbnf_choice`). A Lark grammar and --regex are refused (llama.cpp reads GBNF only).
* none (`transformers`: it rejects `response_format`): every shape is refused.
A refusal names the flag as typed (`--regex`, `--grammar rules.lark`), the alias and
its server, and hints at a local model or the shapes the profile does take.

A raw completion (`ask --raw`) goes to the completions endpoint instead, where the
profile has one (`completions`; not `transformers serve`): the body carries `prompt`
(the messages' text, `chatcli.prompt.raw_text`) in place of `messages`, and the same
decoding fields. `check_raw` refuses, before any request, what chatcli does not send
there: a profile without the endpoint, --show-candidates K > 0 (log-probabilities
are read from chat completions only; compare's K = 0 asks for none) and an answer
shape (a server may ignore it on that endpoint without a word).

Knows nothing about HTTP or the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatcli.conversation import Message
from chatcli.decoding.base import Capabilities, Declared, Remote, declared
from chatcli.decoding.settings import CommonParams, DecodingSettings
from chatcli.errors import UsageError
from chatcli.registry import ModelSpec

MAX_TOP_LOGPROBS = 20  # what the chat-completions API allows
# OpenAI's standard chat-completions fields that carry a decoding parameter.
STANDARD = frozenset({"temperature", "top_p", "seed", "max_tokens", "stop", "frequency_penalty",
                      "presence_penalty", "n"})
# Fields the run fills in rather than a parameter's value: the room left, the seed used.
_RUN_FIELDS = frozenset({"max_tokens", "seed"})
# Server features a strategy may need, as refusals say them.
FEATURES = {"beam_search": "beam search"}


@dataclass(frozen=True)
class Profile:
    """What one kind of server takes; a row of `PROFILES`."""

    label: str  # how hints name it: "vLLM"
    extra: Mapping[str, str] = field(default_factory=dict)  # request field -> server's name
    standard: frozenset[str] = STANDARD  # the standard fields it takes
    features: frozenset[str] = frozenset()  # e.g. {"beam_search"}
    logprobs: bool = True  # returns per-token log-probabilities (--show-candidates)
    max_top_logprobs: int = MAX_TOP_LOGPROBS
    explicit: bool = False  # send every extra field, even at chatcli's default (off)
    stream_options: bool = True  # takes stream_options.include_usage
    # Fields sent with a temperature above 0 to turn sampling on, where temperature alone
    # does not (transformers serve decodes greedily unless its generation_config says
    # do_sample, and then keeps transformers' own top_k of 50 unless told 0).
    sampling: Mapping[str, Any] = field(default_factory=dict)
    # How it takes an answer's shape: a key of SHAPES (see the module), "" for not at all.
    shapes: str = "openai"
    completions: bool = True  # has the (text) completions endpoint: ask --raw

    @property
    def beam(self) -> bool:
        return "beam_search" in self.features

    def takes(self, request: str | None) -> bool:
        return request is not None and (request in self.standard or request in self.extra)


_EXTRA = {"top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty"}
PROFILES: dict[str, Profile] = {
    "generic": Profile("an OpenAI-compatible server", _EXTRA),
    "openai": Profile("OpenAI"),
    "vllm": Profile("vLLM", {**_EXTRA, "length_penalty": "length_penalty"},
                    features=frozenset({"beam_search"}), shapes="vllm"),
    "llama.cpp": Profile("llama.cpp", {"top_k": "top_k", "min_p": "min_p",
                                       "repetition_penalty": "repeat_penalty"}, explicit=True,
                         shapes="llama.cpp"),
    "transformers": Profile("transformers serve",
                            standard=frozenset({"temperature", "top_p", "seed", "max_tokens"}),
                            logprobs=False, max_top_logprobs=0, stream_options=False,
                            sampling={"generation_config": '{"do_sample": true, "top_k": 0}'},
                            shapes="", completions=False),
}
# The answer shapes (Constraint kinds) each way of sending them takes.
SHAPES: dict[str, tuple[str, ...]] = {
    "openai": ("json_schema", "json_object"),
    "vllm": ("json_schema", "json_object", "regex", "grammar", "choice"),
    "llama.cpp": ("json_schema", "json_object", "grammar", "choice"),  # grammar: GBNF only
    "": (),
}
_OPTION = {"json_schema": "--schema", "json_object": "--json-object", "regex": "--regex",
           "grammar": "--grammar", "choice": "--choice"}
_WHAT = {"json_schema": "a JSON schema", "json_object": "a JSON object", "regex": "a regex",
         "grammar": "a grammar", "choice": "a fixed choice"}


def _where(spec: ModelSpec) -> str:
    return spec.alias or spec.base_url or ""


def _refuse(spec: ModelSpec, d: Declared) -> UsageError:
    where = f"'{_where(spec)}' (backend {spec.backend}, server {spec.server})"
    takers = [s for s, p in PROFILES.items() if d.request is not None and d.request in p.extra]
    hint = "remove it, or use a local model (-m)"
    if takers:
        hint = (f"remove it, or set server = \"{takers[0]}\" for the alias if the server "
                "accepts it")
    return UsageError(f"{d.spelled} cannot be sent to {where}", hint)


def _values(settings: DecodingSettings) -> Iterator[tuple[Declared, Any, bool]]:
    """(declaration, value, whether the strategy always sends it) of each parameter the
    request could carry: the strategy's own, then the common ones."""
    remote = settings.capabilities.remote
    always = remote.always if remote else ()
    for d in declared(type(settings.params)):
        yield d, getattr(settings.params, d.name), d.name in always
    for d in declared(CommonParams):
        yield d, getattr(settings.common, d.name), False


def runs_on(spec: ModelSpec, capabilities: Capabilities) -> bool:
    """Whether a strategy with these capabilities can run on the alias's server."""
    remote = capabilities.remote
    return remote is not None and all(n in PROFILES[spec.server].features for n in remote.needs)


def _runnable(spec: ModelSpec) -> list[str]:
    from chatcli.decoding.registry import strategy_registry

    return strategy_registry().with_capability(
        lambda c: c.remote is not None and runs_on(spec, c))


def check(spec: ModelSpec, settings: DecodingSettings, candidates: int | None = None,
          constraint: Any = None) -> None:
    """Refuse what the alias's server cannot do, before any request."""
    profile = PROFILES[spec.server]
    name, remote = settings.strategy, settings.capabilities.remote
    if remote is None:
        usable = _runnable(spec)
        raise UsageError(
            f"strategy '{name}' chooses tokens itself, so it runs on local models only "
            f"('{spec.alias}' is served by {spec.base_url})",
            "use " + " or ".join(f"-S {n}" for n in usable) + ", or a local model (-m)"
            if usable else "use a local model (-m)",
        )
    for need in remote.needs:
        if need not in profile.features:
            takers = [(s, p) for s, p in PROFILES.items() if need in p.features]
            hint = "use a local model (-m)"
            if takers:
                hint = (f"set server = \"{takers[0][0]}\" for the alias if it is "
                        f"{takers[0][1].label}, or {hint}")
            raise UsageError(f"-S {name} needs a server with {FEATURES.get(need, need)}; "
                             f"'{_where(spec)}' is server '{spec.server}'", hint)
    for d, value, always in _values(settings):
        if d.request in _RUN_FIELDS:
            continue
        if (always or value != d.off) and not profile.takes(d.request):
            raise _refuse(spec, d)
    if candidates and not profile.logprobs:
        raise UsageError(
            f"--show-candidates needs per-token log-probabilities, which '{_where(spec)}' "
            f"(server {spec.server}) does not return", "remove it, or use a local model (-m)")
    if candidates is not None and candidates > profile.max_top_logprobs:
        raise UsageError(
            f"--show-candidates {candidates}: the chat-completions API returns at most "
            f"{profile.max_top_logprobs} alternatives per token",
            f"use --show-candidates {profile.max_top_logprobs} or less",
        )
    if constraint is not None:
        check_constraint(spec, constraint)


def check_raw(spec: ModelSpec, candidates: int | None = None, constraint: Any = None) -> None:
    """Refuse, before any request, a raw completion the alias's server cannot give (see the
    module)."""
    profile = PROFILES[spec.server]
    if not profile.completions:
        raise UsageError(f"--raw completes text at a server's completions endpoint, which "
                         f"'{_where(spec)}' (server {spec.server}: {profile.label}) does not "
                         "have", "drop --raw, or use a local model (-m)")
    remote = f"'{_where(spec)}' is remote"
    if candidates:
        raise UsageError("--show-candidates cannot be shown with --raw on a server: chatcli "
                         f"reads log-probabilities from chat completions only ({remote})",
                         "drop --show-candidates, or use a local model (-m)")
    if constraint is not None:
        raise UsageError(f"{_spelled(constraint)} cannot be sent with --raw: chatcli sends a "
                         f"server answer shapes with chat completions only ({remote})",
                         "drop --raw, or use a local model (-m)")


def _spelled(constraint: Any) -> str:
    """The flag as the user gave it: "--regex", "--grammar rules.lark", "/choice"."""
    source = str(constraint.source or "")
    if source.startswith(("-", "/")):
        return source
    option = _OPTION[constraint.kind]
    return f"{option} {source}" if source else option


def check_constraint(spec: ModelSpec, constraint: Any) -> None:
    """Refuse, before any request, an answer shape the alias's server cannot hold."""
    profile = PROFILES[spec.server]
    kind, spelled = constraint.kind, _spelled(constraint)
    where = f"'{_where(spec)}' (server {spec.server})"
    taken = SHAPES[profile.shapes]
    if kind == "grammar" and kind in taken and profile.shapes == "llama.cpp" \
            and constraint.syntax != "gbnf":
        syntax = "Lark" if constraint.syntax in ("", "lark") else constraint.syntax
        raise UsageError(f"{spelled} is a {syntax} grammar, and {where} reads GBNF only",
                         "write it as GBNF (rules with ::=, in a .gbnf file), or use a local "
                         "model (-m)")
    if kind in taken:
        return
    if not taken:
        why = f"{profile.label} does not constrain answers"
        if spec.server == "transformers":
            why += " (it rejects response_format)"
    else:
        why = f"{profile.label} cannot hold an answer to {_WHAT[kind]}"
    hint = "use a local model (-m)"
    if taken:
        hint += ", or " + "/".join(_OPTION[k] for k in taken)
    takers = [(name, p) for name, p in PROFILES.items()
              if kind in SHAPES[p.shapes] and p.shapes != profile.shapes]
    if takers:
        hint += f"; set server = \"{takers[0][0]}\" for the alias if it is {takers[0][1].label}"
    raise UsageError(f"{spelled} cannot be sent to {where}: {why}", hint)


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal: quotes, backslashes and control characters
    escaped (\\n, \\r, \\t, else \\xHH); everything else as it is (GBNF reads UTF-8)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def gbnf_choice(choices: list[str]) -> str:
    """A GBNF grammar whose only sentences are `choices`: `root ::= "a" | "b"`."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices)


def constraint_fields(spec: ModelSpec, constraint: Any) -> dict[str, Any]:
    """The request fields that hold the answer to `constraint` on the alias's server
    (see the module); `check_constraint` first."""
    check_constraint(spec, constraint)
    style, kind = PROFILES[spec.server].shapes, constraint.kind
    if style == "llama.cpp":
        if kind in ("json_schema", "json_object"):
            return {"response_format": {"type": "json_object", "schema": constraint.schema()}}
        if kind == "grammar":
            return {"grammar": constraint.text}
        return {"grammar": gbnf_choice(constraint.choices)}
    if kind == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": constraint.schema(), "strict": True}}}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    # vLLM reads regex, grammar and choice under `structured_outputs` (its
    # guided_regex / guided_grammar / guided_choice fields were removed in 0.12).
    value = constraint.choices if kind == "choice" else constraint.text
    return {"structured_outputs": {kind: value}}


def request_body(
    spec: ModelSpec,
    settings: DecodingSettings,
    messages: list[Message],
    max_tokens: int,
    candidates: int | None = None,
    constraint: Any = None,
    raw: bool = False,
) -> dict[str, Any]:
    """The request's body: a chat completion's, or with `raw` a completion's (its
    `prompt` the messages' text)."""
    check(spec, settings, candidates, constraint)
    if raw:
        check_raw(spec, candidates, constraint)
        candidates = None  # compare's K = 0: no log-probabilities from this endpoint
    profile = PROFILES[spec.server]
    remote: Remote | None = settings.capabilities.remote
    assert remote is not None  # check() refused a local-only strategy
    if raw:
        from chatcli.prompt import raw_text

        body: dict[str, Any] = {"model": spec.model, "prompt": raw_text(messages)}
    else:
        body = {"model": spec.model, "messages": [m.as_dict() for m in messages]}
    body["max_tokens"] = max_tokens
    body.update(remote.fixed)
    if remote.seed:
        body["seed"] = settings.seed
    for d, value, always in _values(settings):
        if d.request is None or d.request in _RUN_FIELDS or not profile.takes(d.request):
            continue
        if d.request in profile.standard:
            send = always or value != d.off
        else:
            send = always or profile.explicit or value != d.off
        if send:
            key = d.request if d.request in profile.standard else profile.extra[d.request]
            body[key] = list(value) if isinstance(value, tuple) else value
    if candidates is not None and profile.logprobs:  # K > 0 without them: refused above
        body["logprobs"] = True
        body["top_logprobs"] = candidates
    if profile.sampling and body.get("temperature"):
        body.update(profile.sampling)
    if profile.stream_options:
        body["stream_options"] = {"include_usage": True}
    if constraint is not None:
        body.update(constraint_fields(spec, constraint))
    return body
