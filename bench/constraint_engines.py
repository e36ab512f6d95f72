"""Two constrained-decoding engines, llguidance and xgrammar, on the default model's
vocabulary and the JSONSchemaBench sample (input for chatcli's structured output).

Usage: python bench/constraint_engines.py [--engines llguidance,xgrammar] [--limit N]
           [--steps 200] [--seed 0] [--folder PATH] [--data DIR] [--apply-reps 300]
           [--write PATH] [--section constraint-engines]

The tokenizer is the default model's (smollm2-135m, 49,152 tokens), from the converted
folder `chatcli pull smollm2-135m` prints unless --folder names one; nothing is fetched
(HF_HUB_OFFLINE=1). The schemas are the *.json files under --data (one subfolder per
JSONSchemaBench category); --limit N takes N of them round-robin over the subfolders.

Engines: llguidance and xgrammar with their defaults (xgrammar's compile_json_schema:
any_whitespace, strict_mode), and on request llguidance-lenient (llguidance with the JSON
options `lenient` and `coerce_one_of`: unsupported keywords become warnings).

For every engine it reports:
- import time and tokenizer setup (llguidance.hf.from_tokenizer;
  xgrammar.TokenizerInfo.from_huggingface plus a GrammarCompiler);
- per schema, interleaved engine by engine so load drift falls on both: compile time
  (llguidance: grammar_from_json_schema + LLMatcher; xgrammar: compile_json_schema +
  GrammarMatcher), whether it compiled (coverage, per subfolder) and, when not, the
  error's class (its message with names and numbers blanked);
- two walks over each compiled schema, at most --steps tokens each, driven by a
  stand-in for a model: "random" picks uniformly (random.Random seeded with --seed and
  the schema's index, the same for both engines) among the tokens the mask allows, EOS
  among them only where the engine allows it; "lowest" picks the lowest allowed id.
  A walk completes when EOS is picked and consumed. The time of every mask fill is
  kept (median, p90 in microseconds; the first fill of a matcher also on its own). A
  completed walk's text (the HF tokenizer's decode) must parse as JSON and validate with
  `jsonschema` against the schema (the validator its $schema names); an invalid output
  is listed. `format` is checked separately (format violations, not counted invalid,
  since JSON Schema makes `format` an annotation by default). Walks that end because no
  token is allowed ("dead ends") or an allowed token is refused are counted.
- compiler warnings (approximations: llguidance's get_grammar_warnings(); xgrammar's
  log lines, which its C++ code writes to file descriptor 2 and this script captures);
- fixed checks (CHECKS): regexes, a Lark grammar (llguidance: grammar_from_lark;
  xgrammar: compile_lark), a GBNF/EBNF one (llguidance: grammar_from("gbnf");
  xgrammar: compile_grammar), an invalid schema, unsatisfiable ones, schemas an engine
  may approximate, regex syntax errors: the exact exception type and message or the
  matcher's error state, the two walks' outputs, and whether a known-invalid "witness"
  text (its HF tokens) is allowed to end.
- the cost of applying a bitmask to float32 logits of the vocabulary size: each
  engine's apply_token_bitmask_inplace, an unpack-then-masked_fill_ in plain torch, and
  masked_fill_ alone from an already unpacked bool mask (microseconds per call; the
  first call, where llguidance's helper is torch.compile'd, on its own).

The header states the CPU and the load average at the start and end: on a shared
machine the timings are provisional. It knows nothing of chatcli beyond the `pull`
command that names the folder, and nothing of how chatcli will use either engine;
torch, transformers, the engines and jsonschema are imported inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness import Conditions, add_write_options, median, write_report  # bench/ on sys.path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "jsonschemabench-sample"  # the sample, kept in the repository
ENGINES = ("llguidance", "xgrammar", "llguidance-lenient")
DEFAULT_ENGINES = ("llguidance", "xgrammar")
# llguidance's JSON options that trade refusals for warnings (approximations)
LENIENT = {"lenient": True, "coerce_one_of": True}
WALKS = ("random", "lowest")

@dataclass(frozen=True)
class Check:
    """A fixed check: `pattern`, a Python regex every completed walk must fullmatch;
    `witness`, a text the constraint must NOT allow to end (a known-invalid output),
    fed as the HF tokenizer's tokens."""

    label: str
    kind: str  # json, regex, lark, ebnf
    text: str
    pattern: str | None = None
    witness: str | None = None


LARK = 'start: "(" num ("+" num)* ")"\nnum: /[0-9]{1,3}/\n'
EBNF = 'root ::= "(" num ("+" num)* ")"\nnum ::= [0-9] | [0-9] [0-9] | [0-9] [0-9] [0-9]\n'
SUM_RE = r"\((\d{1,3})(\+\d{1,3})*\)"
AB = '"properties": {"a": {"type": "string"}, "b": {"type": "string"}}'
CHECKS: list[Check] = [
    Check("regex `[a-z]{2,5}-\\d{3}` (witness: too short)", "regex", r"[a-z]{2,5}-\d{3}",
          r"[a-z]{2,5}-\d{3}", "a-123"),
    Check("same regex, witness with a fullwidth digit", "regex", r"[a-z]{2,5}-\d{3}",
          None, "ab-12\uff13"),
    Check("JSON pattern `^\\d+$`, witness a fullwidth digit", "json",
          '{"type": "string", "pattern": "^\\\\d+$"}', None, '"\uff11"'),
    Check("Lark grammar", "lark", LARK, SUM_RE, "(1+)"),
    Check("GBNF/EBNF grammar", "ebnf", EBNF, SUM_RE, "(1+)"),
    Check("invalid schema `{\"type\": \"foo\"}`", "json", '{"type": "foo"}'),
    Check("schema text not JSON `{not json`", "json", "{not json"),
    Check("unsatisfiable: integer min 5 max 1", "json",
          '{"type": "integer", "minimum": 5, "maximum": 1}', None, "3"),
    Check("unsatisfiable: allOf string & integer", "json",
          '{"allOf": [{"type": "string"}, {"type": "integer"}]}', None, '"x"'),
    Check("unsatisfiable: required key not allowed", "json",
          '{"type": "object", "properties": {"a": {"type": "string"}},'
          ' "required": ["b"], "additionalProperties": false}', None, '{"a":"x"}'),
    Check("pattern with minLength 6", "json",
          '{"type": "string", "pattern": "^[a-z]+$", "minLength": 6}', None, '"a"'),
    Check("oneOf with overlapping branches", "json",
          '{"oneOf": [{"type": "integer"}, {"type": "number"}]}', None, "1"),
    Check("dependencies: a requires b", "json",
          '{"type": "object", ' + AB + ', "required": ["a"], "dependencies": {"a": ["b"]}}',
          None, '{"a":"x"}'),
    Check("regex syntax error `a(b`", "regex", "a(b"),
    Check("regex syntax error `[z-a]`", "regex", "[z-a]"),
]


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """What native code writes to file descriptor 2 meanwhile (xgrammar logs its
    warnings there, not through Python's warnings), as lines appended on exit."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines += tmp.read().decode(errors="replace").splitlines()


def strip_log_prefix(line: str) -> str:
    """`[12:00:00] /project/cpp/x.cc:123: Warning: text` -> `Warning: text`."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)


class CompileError(Exception):
    """A grammar an engine refused: `kind` is how (exception type or error state)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Matcher(Protocol):
    """One walk's state, whatever the engine; `warnings` are the compiler's."""

    warnings: list[str]

    def fill(self, bitmask: Any) -> None: ...
    def consume(self, token: int) -> bool: ...
    def fork(self) -> Matcher: ...


class Engine(Protocol):
    name: str
    stop_ids: set[int]

    def setup(self, hf_tokenizer: Any) -> None: ...
    def compile(self, kind: str, text: str) -> Matcher: ...
    def allocate(self) -> Any: ...
    def apply(self, logits: Any, bitmask: Any) -> None: ...


# ------------------------------------------------------------------------ llguidance


class _LlgMatcher:
    def __init__(self, m: Any, fill: Callable[[Any, Any], None]) -> None:
        self.m, self._fill = m, fill
        self.warnings: list[str] = []

    def fill(self, bitmask: Any) -> None:
        self._fill(self.m, bitmask)

    def consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def fork(self) -> _LlgMatcher:
        return _LlgMatcher(self.m.deep_copy(), self._fill)


class Llguidance:
    def __init__(self, name: str = "llguidance", options: dict[str, bool] | None = None) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.name, self.options = name, options
        self.stop_ids: set[int] = set()

    def setup(self, hf_tokenizer: Any) -> None:
        self.tok = self.llg.hf.from_tokenizer(hf_tokenizer)
        self.vocab = self.tok.vocab_size
        self.stop_ids = set(self.tok.eos_tokens)

    def compile(self, kind: str, text: str) -> _LlgMatcher:
        M = self.llg.LLMatcher
        try:
            if kind == "json":
                grammar = M.grammar_from_json_schema(text, overrides=self.options)
            elif kind == "regex":
                grammar = M.grammar_from_regex(text)
            elif kind == "lark":
                grammar = M.grammar_from_lark(text)
            else:  # GBNF, through llguidance's own converter to Lark
                grammar = self.llg.grammar_from("gbnf", text)
            m = M(self.tok, grammar, log_level=0)
        except Exception as e:
            raise CompileError(type(e).__name__, str(e)) from e
        if m.is_error():
            raise CompileError("LLMatcher.is_error()", m.get_error())
        matcher = _LlgMatcher(m, self.llg.torch.fill_next_token_bitmask)
        matcher.warnings = list(m.get_grammar_warnings())
        return matcher

    def allocate(self) -> Any:
        return self.llg.torch.allocate_token_bitmask(1, self.vocab)

    def apply(self, logits: Any, bitmask: Any) -> None:
        self.llg.torch.apply_token_bitmask_inplace(logits, bitmask)


# -------------------------------------------------------------------------- xgrammar


class _XgrMatcher:
    def __init__(self, m: Any) -> None:
        self.m = m
        self.warnings: list[str] = []

    def fill(self, bitmask: Any) -> None:
        self.m.fill_next_token_bitmask(bitmask)

    def consume(self, token: int) -> bool:
        return bool(self.m.accept_token(token))

    def fork(self) -> _XgrMatcher:
        return _XgrMatcher(self.m.fork())


class Xgrammar:
    name = "xgrammar"  # compile_json_schema's defaults: any_whitespace, strict_mode

    def __init__(self, threads: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.threads = threads
        self.stop_ids: set[int] = set()

    def setup(self, hf_tokenizer: Any) -> None:
        self.info = self.xgr.TokenizerInfo.from_huggingface(hf_tokenizer)
        self.vocab = self.info.vocab_size
        self.stop_ids = set(self.info.stop_token_ids)
        # every schema is compiled once: the cache would only hold memory
        self.compiler = self.xgr.GrammarCompiler(self.info, max_threads=self.threads,
                                                 cache_enabled=False)

    def compile(self, kind: str, text: str) -> _XgrMatcher:
        c = self.compiler
        try:
            with captured_stderr() as logged:
                if kind == "json":
                    compiled = c.compile_json_schema(text)
                elif kind == "regex":
                    compiled = c.compile_regex(text)
                elif kind == "lark":
                    compiled = c.compile_lark(text)
                else:
                    compiled = c.compile_grammar(text)  # EBNF (GBNF-like), root rule `root`
                matcher = _XgrMatcher(self.xgr.GrammarMatcher(compiled))
        except Exception as e:
            raise CompileError(type(e).__name__, strip_log_prefix(str(e))) from e
        matcher.warnings = [strip_log_prefix(x) for x in logged if "Warning" in x]
        return matcher

    def allocate(self) -> Any:
        return self.xgr.allocate_token_bitmask(1, self.vocab)

    def apply(self, logits: Any, bitmask: Any) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)


def make_engine(name: str, threads: int) -> Engine:
    if name == "xgrammar":
        return Xgrammar(threads)
    return Llguidance(name, LENIENT if name == "llguidance-lenient" else None)


# ----------------------------------------------------------------------------- walks


@dataclass
class Walk:
    tokens: list[int]
    fill_us: list[float]
    end: str  # "eos" (completed), "cap", "dead end", "refused"

    @property
    def completed(self) -> bool:
        return self.end == "eos"


def allowed_ids(bitmask: Any, vocab: int) -> Any:
    """The token ids a (1, ceil(vocab/32)) int32 bitmask allows (bit j of word j//32)."""
    import numpy as np

    bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab])


def walk(matcher: Matcher, bitmask: Any, vocab: int, stop_ids: set[int], steps: int,
         pick: Callable[[Any], int]) -> Walk:
    tokens: list[int] = []
    fill_us: list[float] = []
    for _ in range(steps):
        t0 = time.perf_counter_ns()
        matcher.fill(bitmask)
        fill_us.append((time.perf_counter_ns() - t0) / 1000)
        allowed = allowed_ids(bitmask, vocab)
        if len(allowed) == 0:
            return Walk(tokens, fill_us, "dead end")
        token = pick(allowed)
        if not matcher.consume(token):
            return Walk(tokens, fill_us, "refused")
        if token in stop_ids:
            return Walk(tokens, fill_us, "eos")
        tokens.append(token)
    return Walk(tokens, fill_us, "cap")


def pickers(seed: int) -> dict[str, Callable[[Any], int]]:
    rng = random.Random(seed)
    return {"random": lambda allowed: int(allowed[rng.randrange(len(allowed))]),
            "lowest": lambda allowed: int(allowed[0])}


# ------------------------------------------------------------------------ validation


def validate(schema: Any, text: str) -> tuple[str | None, bool]:
    """(why the text is invalid or None, whether a `format` is violated). A schema the
    validator cannot use (unresolvable $ref, ...) gives "validator: ..." instead."""
    import jsonschema
    from jsonschema.validators import validator_for

    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}", False
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
        if error is not None:
            return f"{error.message[:160]} at {list(error.absolute_path)}", False
        fmt = next(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value), None)
    except Exception as e:  # referencing.exceptions.Unresolvable and the like
        return f"validator: {type(e).__name__}: {str(e)[:120]}", False
    return None, fmt is not None


def error_class(message: str) -> str:
    """A failure's message with quoted names, numbers and paths blanked, first line."""
    line = message.strip().splitlines()[0] if message.strip() else "(empty)"
    line = re.sub(r'"[^"]*"|\'[^\']*\'|`[^`]*`', "…", line)
    line = re.sub(r"\d+", "N", line)
    return line[:90]


# ------------------------------------------------------------------------ statistics


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def us(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:,.1f}"


@dataclass
class SchemaResult:
    path: str
    folder: str
    compile_s: float | None = None
    error: CompileError | None = None
    warnings: list[str] = field(default_factory=list)
    walks: dict[str, Walk] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    unvalidated: dict[str, str] = field(default_factory=dict)
    format_bad: int = 0


@dataclass
class EngineRun:
    name: str
    import_s: float = 0.0
    setup_s: float = 0.0
    schemas: list[SchemaResult] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ runs


def default_folder() -> Path:
    """The default model's converted folder, as `chatcli pull smollm2-135m` prints it."""
    out = subprocess.run([sys.executable, "-m", "chatcli", "pull", "smollm2-135m"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    found = re.search(r"at (\S+)", out)
    if found is None:
        raise SystemExit(f"cannot find the model folder in: {out!r}")
    return Path(found.group(1))


def schema_files(data: Path, limit: int | None) -> list[Path]:
    """The schemas, round-robin over the subfolders (so --limit keeps every category)."""
    folders = [sorted(d.glob("*.json")) for d in sorted(data.iterdir()) if d.is_dir()]
    order: list[Path] = []
    for i in range(max((len(f) for f in folders), default=0)):
        order += [f[i] for f in folders if i < len(f)]
    return order[:limit] if limit else order


def run_schema(engine: Engine, path: Path, data: Path, index: int, args: argparse.Namespace,
               bitmask: Any) -> SchemaResult:
    text = path.read_text()
    res = SchemaResult(str(path.relative_to(data)), path.parent.name)
    t0 = time.perf_counter()
    try:
        matcher = engine.compile("json", text)
    except CompileError as e:
        res.error = e
        return res
    res.compile_s = time.perf_counter() - t0
    res.warnings = matcher.warnings
    schema = json.loads(text)
    pick = pickers(args.seed * 100_003 + index)
    for name in WALKS:
        w = walk(matcher.fork(), bitmask, engine.vocab, engine.stop_ids, args.steps,
                 pick[name])
        res.walks[name] = w
        if w.completed:
            why, fmt = validate(schema, args.decode(w.tokens))
            res.format_bad += fmt
            if why is not None and why.startswith("validator:"):
                res.unvalidated[name] = why
            elif why is not None:
                res.invalid[name] = why
    return res


def witness_ends(engine: Engine, matcher: Matcher, ids: list[int], bitmask: Any) -> str:
    """Whether the matcher takes every token of `ids` and then allows a stop token."""
    for token in ids:
        if not matcher.consume(token):
            return "rejected"
    matcher.fill(bitmask)
    allowed = set(allowed_ids(bitmask, engine.vocab).tolist())
    return "ACCEPTED as complete" if allowed & engine.stop_ids else "rejected (incomplete)"


def run_checks(engine: Engine, args: argparse.Namespace, bitmask: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for check in CHECKS:
        try:
            matcher = engine.compile(check.kind, check.text)
        except CompileError as e:
            out[check.label] = f"refused: {e.kind}: {e.message.strip()[:220]}"
            continue
        walks = [walk(matcher.fork(), bitmask, engine.vocab, engine.stop_ids, args.steps,
                      p) for p in pickers(args.seed).values()]
        done = [args.decode(w.tokens) for w in walks if w.completed]
        ends = "/".join(w.end for w in walks)
        if matcher.warnings:
            ends += " (warned: " + "; ".join(matcher.warnings)[:160] + ")"
        texts = ", ".join(json.dumps(t[:40], ensure_ascii=False) for t in done) or "-"
        if check.kind == "json":
            why = [w for w in (validate(json.loads(check.text), t)[0] for t in done) if w]
            verdict = f"INVALID ({why[0][:100]})" if why else "valid" if done else "none"
        elif check.pattern is not None:
            verdict = ("match" if all(re.fullmatch(check.pattern, t) for t in done)
                       else "DO NOT MATCH")
        else:
            verdict = "not checked"
        text = f"compiles; walks end {ends}; outputs {verdict}: {texts}"
        if check.witness is not None:
            ids = args.encode(check.witness)
            text += (f"; witness {json.dumps(check.witness, ensure_ascii=False)}: "
                     f"{witness_ends(engine, matcher.fork(), ids, bitmask)}")
        out[check.label] = text
    return out


def time_apply(fn: Callable[[], None], reps: int) -> tuple[float, float, float]:
    t0 = time.perf_counter_ns()
    fn()
    first = (time.perf_counter_ns() - t0) / 1000
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return first, median(samples), pct(samples, 0.9)


def plain_torch_apply(vocab: int) -> tuple[Callable[[Any, Any], None], Callable[[Any], Any]]:
    """(apply from a packed int32 bitmask, unpack-only) in plain torch."""
    import torch

    shifts = torch.arange(32, dtype=torch.int32)

    def unpack(bitmask: Any) -> Any:
        return ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(-2)[..., :vocab]

    def apply(logits: Any, bitmask: Any) -> None:
        logits.masked_fill_(~unpack(bitmask), float("-inf"))

    return apply, unpack


def measure_apply(engines: dict[str, Engine], vocab: int, bitmask: Any,
                  reps: int) -> dict[str, tuple[float, float, float]]:
    """µs per call (first, median, p90) of every way to apply `bitmask` to logits."""
    import torch

    logits = torch.randn(1, vocab, dtype=torch.float32)
    out: dict[str, tuple[float, float, float]] = {}
    for name, engine in engines.items():
        if name == "llguidance-lenient":
            continue  # the same helper as llguidance's
        label = "llguidance.torch" if name == "llguidance" else name
        out[f"{label}.apply_token_bitmask_inplace"] = time_apply(
            lambda e=engine: e.apply(logits, bitmask), reps)
    if any(isinstance(e, Llguidance) for e in engines.values()):
        import llguidance.numpy

        logits_np, bitmask_np = logits.numpy(), bitmask.numpy()  # views, no copies
        out["llguidance.numpy.apply_token_bitmask_inplace"] = time_apply(
            lambda: llguidance.numpy.apply_token_bitmask_inplace(logits_np, bitmask_np), reps)
    apply, unpack = plain_torch_apply(vocab)
    out["torch: unpack bits + masked_fill_"] = time_apply(lambda: apply(logits, bitmask), reps)
    out["torch: unpack bits only"] = time_apply(lambda: unpack(bitmask), reps)
    reject = ~unpack(bitmask)
    out["torch: masked_fill_ from bool mask"] = time_apply(
        lambda: logits.masked_fill_(reject, float("-inf")), reps)
    return out


def probe_masks(engine: Engine, hf: Any, bitmask: Any) -> dict[str, Any]:
    """Two real masks: inside a JSON string (nearly all allowed), before a value (few)."""
    schema = '{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}'
    masks: dict[str, Any] = {}
    for label, prefix in (("inside a string", '{"a": "hello'), ("before the object", "")):
        probe = engine.compile("json", schema)
        for token in hf.encode(prefix, add_special_tokens=False):
            if not probe.consume(token):
                raise SystemExit(f"the probe refused token {token} of {prefix!r}")
        probe.fill(bitmask)
        masks[label] = bitmask.clone()
    return masks


def apply_table(engines: dict[str, Engine], vocab: int, masks: dict[str, Any],
                reps: int) -> tuple[list[str], dict[str, list[str]]]:
    """Columns (mask x torch threads) and one row of `median (p90)` µs per method; the
    first call of each method, whatever the mask, in the last column."""
    import torch

    default = torch.get_num_threads()
    columns: list[str] = []
    rows: dict[str, list[str]] = {}
    first: dict[str, float] = {}
    for threads in sorted({default, 1}, reverse=True):
        torch.set_num_threads(threads)
        for label, mask in masks.items():
            allowed = int(allowed_ids(mask, vocab).size)
            columns.append(f"{label} ({allowed:,} allowed), {threads} thread(s)")
            for method, (f, med, p90) in measure_apply(engines, vocab, mask, reps).items():
                first.setdefault(method, f)
                rows.setdefault(method, []).append(f"{us(med)} ({us(p90)})")
    torch.set_num_threads(default)
    for method, f in first.items():
        rows[method].append(us(f))
    return [*columns, "first call"], rows


# ----------------------------------------------------------------------------- report


def report(args: argparse.Namespace, cond: Conditions, runs: dict[str, EngineRun],
           apply: tuple[list[str], dict[str, list[str]]], versions: dict[str, str]) -> str:
    names = list(runs)
    n = len(next(iter(runs.values())).schemas)
    lines = [f"Constraint engines on {args.vocab:,}-token vocabulary ({args.folder.name}), "
             f"{n} schemas from {args.data}, walks of at most {args.steps} tokens, seed "
             f"{args.seed}; {', '.join(f'{k} {v}' for k, v in versions.items())}; "
             f"{cond.describe()}.", ""]

    def row(*cells: object) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    lines += [row("", *names), row(*["---"] * (len(names) + 1))]

    def per_engine(label: str, fn: Callable[[EngineRun], str]) -> None:
        lines.append(row(label, *(fn(runs[k]) for k in names)))

    def compiled(r: EngineRun) -> list[SchemaResult]:
        return [s for s in r.schemas if s.compile_s is not None]

    def fills(r: EngineRun, first: bool | None, walk_name: str | None = None) -> list[float]:
        v: list[float] = []
        for s in compiled(r):
            for k, w in s.walks.items():
                if walk_name is None or k == walk_name:
                    v += w.fill_us[:1] if first else w.fill_us[1:] if first is False \
                        else w.fill_us
        return v

    def worst(r: EngineRun) -> str:
        c = compiled(r)
        if not c:
            return "-"
        s = max(c, key=lambda s: s.compile_s or 0)
        return f"{ms(s.compile_s or 0)} ({s.path})"

    def walks(r: EngineRun, name: str, end: str) -> int:
        return sum(1 for s in compiled(r) if name in s.walks and s.walks[name].end == end)

    per_engine("import (s)", lambda r: f"{r.import_s:.2f}")
    per_engine("tokenizer setup (s)", lambda r: f"{r.setup_s:.2f}")
    per_engine("compiled / schemas", lambda r: f"{len(compiled(r))} / {len(r.schemas)}")
    def spread(values: list[float], fmt: Callable[[float], str]) -> str:
        return f"{fmt(median(values))} / {fmt(pct(values, 0.9))}"

    per_engine("compiled with a compiler warning", lambda r: str(
        sum(1 for s in compiled(r) if s.warnings)))
    per_engine("compile median / p90 (ms)",
               lambda r: spread([s.compile_s or 0 for s in compiled(r)], ms))
    per_engine("compile worst (ms)", worst)
    per_engine("mask fill, first of a matcher: median / p90 (µs)",
               lambda r: spread(fills(r, True), us))
    for wn in WALKS:
        per_engine(f"mask fill, later steps, {wn} walk: median / p90 (µs)",
                   lambda r, wn=wn: f"{spread(fills(r, False, wn), us)}"
                                    f"  ({len(fills(r, False, wn)):,} fills)")
    for wn in WALKS:
        per_engine(f"{wn} walks: completed / at cap / dead end / refused",
                   lambda r, wn=wn: " / ".join(str(walks(r, wn, e)) for e in
                                               ("eos", "cap", "dead end", "refused")))
    per_engine("completed outputs INVALID", lambda r: str(sum(len(s.invalid) for s in r.schemas)))
    per_engine("completed, schema unusable by jsonschema",
               lambda r: str(sum(len(s.unvalidated) for s in r.schemas)))
    per_engine("completed, `format` violated", lambda r: str(sum(s.format_bad for s in r.schemas)))

    folders = sorted({s.folder for r in runs.values() for s in r.schemas})
    lines += ["", "Coverage per subfolder (compiled / schemas):", "",
              row("subfolder", *names), row(*["---"] * (len(names) + 1))]
    for f in folders:
        lines.append(row(f, *(
            f"{sum(1 for s in runs[k].schemas if s.folder == f and s.compile_s is not None)}"
            f" / {sum(1 for s in runs[k].schemas if s.folder == f)}" for k in names)))

    for k in names:
        errors = Counter(f"{s.error.kind}: {error_class(s.error.message)}"
                         for s in runs[k].schemas if s.error)
        if errors:
            lines += ["", f"{k}: why schemas did not compile (count, class):", ""]
            lines += [f"- {c} × {e}" for e, c in errors.most_common()]
    for k in names:
        warned = Counter(error_class(w) for s in runs[k].schemas for w in set(s.warnings))
        if warned:
            lines += ["", f"{k}: compiler warnings (schemas, class):", ""]
            lines += [f"- {c} × {w}" for w, c in warned.most_common()]
    bad = [(k, s.path, w, why) for k in names for s in runs[k].schemas
           for w, why in s.invalid.items()]
    lines += ["", f"Invalid completed outputs: {len(bad) or 'none'}"]
    lines += [f"- {k} {p} ({w} walk): {why}" for k, p, w, why in bad]
    unv = [(k, s.path, why) for k in names for s in runs[k].schemas
           for why in s.unvalidated.values()]
    if unv:
        lines += ["", "Outputs jsonschema could not check:"]
        lines += [f"- {k} {p}: {why}" for k, p, why in unv]

    lines += ["", "Fixed checks:", "", row("check", *names), row(*["---"] * (len(names) + 1))]
    for check in CHECKS:
        lines.append(row(check.label, *(runs[k].checks.get(check.label, "-").replace("|", "\\|")
                                  .replace("\n", " ") for k in names)))

    columns, rows = apply
    lines += ["", f"Applying a mask to float32 logits (1, {args.vocab:,}): µs per call, "
              f"median (p90) of {args.apply_reps} calls:", "",
              row("method", *columns), row(*["---"] * (len(columns) + 1))]
    lines += [row(method, *cells) for method, cells in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help=f"some of {','.join(ENGINES)} (llguidance-lenient: "
                             f"llguidance with {LENIENT})")
    parser.add_argument("--limit", type=int, default=None, help="N schemas (round-robin)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--apply-reps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="xgrammar compiler threads (default: the CPU count)")
    add_write_options(parser, "constraint-engines")
    args = parser.parse_args()
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not names or any(e not in ENGINES for e in names):
        parser.error(f"--engines takes {','.join(ENGINES)}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cond = Conditions.observe()
    args.folder = args.folder or default_folder()
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(args.folder))
    args.vocab = len(hf)
    args.encode = lambda text: hf.encode(text, add_special_tokens=False)
    args.decode = lambda ids: hf.decode(ids, skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False)
    versions: dict[str, str] = {}
    runs: dict[str, EngineRun] = {}
    engines: dict[str, Engine] = {}
    bitmasks: dict[str, Any] = {}
    from importlib.metadata import version

    for name in names:
        t0 = time.perf_counter()
        engine = make_engine(name, args.threads)
        run = EngineRun(name, import_s=time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.setup(hf)
        run.setup_s = time.perf_counter() - t0
        versions[name.split("-")[0]] = version(name.split("-")[0])
        engines[name], runs[name], bitmasks[name] = engine, run, engine.allocate()
    versions["jsonschema"] = version("jsonschema")

    files = schema_files(args.data, args.limit)
    for i, path in enumerate(files):
        for name in names:
            runs[name].schemas.append(run_schema(engines[name], path, args.data, i, args,
                                                 bitmasks[name]))
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(files)} schemas", file=sys.stderr, flush=True)
    for name in names:
        runs[name].checks = run_checks(engines[name], args, bitmasks[name])

    masks = probe_masks(engines[names[0]], hf, bitmasks[names[0]])
    apply = apply_table(engines, args.vocab, masks, args.apply_reps)
    cond.finish()
    body = report(args, cond, runs, apply, versions)
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
