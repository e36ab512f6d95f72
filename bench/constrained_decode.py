"""Constrained decoding on the default model: speed against unconstrained decoding, schema
compile time, and how often an answer asked for JSON in words is valid without a constraint.

Usage: python bench/constrained_decode.py [--model ALIAS] [--quantize int4|int8|none]
           [--threads N] [--schemas 20] [--rounds 3] [--tokens 128] [--max-prompt 1024]
           [--quality-tokens 200] [--prompts 20] [--data DIR]
           [--parts compile,speed,quality]
           [--write docs/benchmarks.md] [--section constrained]

The model is loaded the way `chatcli ask` loads it (chatcli.loader.load_model: the
alias's quantization, int4 for the default model, unless --quantize says otherwise; a
compiled decode step when one is built for it), and every answer goes through
`chatcli.generation.stream.stream(..., constraint=...)`, greedy, as `chatcli ask
--schema` does. The schemas are JSONSchemaBench's sample (tests/data/
jsonschemabench-sample, one subfolder per category; bench/constraint_engines.py's
round-robin order). Parts, in this order:

- compile: every schema of --data compiled for the model's vocabulary
  (chatcli.constraints.engine.compile_constraint: llguidance's grammar, validated, a
  first matcher and its first mask). Reported apart: importing llguidance, building its
  tokenizer from tokenizer.json (once per process), the first compile of the process,
  then median / p90 / worst of the others; also the time of a new matcher, which every
  answer pays when it starts and again when its completeness is checked.
- speed: --schemas schemas (round-robin, those that compile and whose prompt "Give an
  example JSON value for this schema: <schema>" as a chat message fits --max-prompt
  tokens), each decoded with and without the schema as the constraint, at most --tokens
  tokens, interleaved --rounds times (alternating which goes first). Decode tokens/s is
  stream's own figure (tokens after the first / the time from the first to the last);
  medians per schema, the ratio constrained / unconstrained per schema, their median,
  and the pooled ratio (all tokens / all decode time). Target >= 0.9. Where the time goes:
  the constrained answer replayed through a fresh matcher, timing each mask (`allowed()`)
  and each `advance()`, the new matcher, and the completeness check (`satisfied()`).
- quality: 20 fixed prompts (QUALITY) that ask in words for a JSON object with given
  fields, each with a simple schema; the unconstrained greedy answer counts as valid when
  the whole text, or else its first balanced {...} span, parses and validates; the
  constrained answer (the schema as the constraint) must be complete (within
  --quality-tokens) and then validate: 100 % is expected; incomplete answers are counted
  apart. Validation: `jsonschema`, Draft 2020-12, format checking on.

The header states the CPU, torch's thread count and the load average at the start and the
end; with a 1-minute load average of at least half the cores at either end the timings
are marked provisional. It knows chatcli's loader, stream, constraint spec and engine,
nothing of the CLI; torch, chatcli and jsonschema are imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constraint_engines import schema_files  # bench/ is on sys.path when run as a script
from harness import Conditions, add_write_options, interleave, median, write_report

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "jsonschemabench-sample"
PARTS = ("compile", "speed", "quality")
SCHEMA_PROMPT = "Give an example JSON value for this schema: {schema}"


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


STR, INT, NUM, BOOL = ({"type": "string"}, {"type": "integer"}, {"type": "number"},
                       {"type": "boolean"})
STRINGS = {"type": "array", "items": STR}

# (prompt, schema): each prompt names the fields and their types in words.
QUALITY: list[tuple[str, dict[str, Any]]] = [
    ("Describe Ada Lovelace as a JSON object with the fields name (a string) and age "
     "(an integer: her age when she died).", _obj(name=STR, age=INT)),
    ("Give a JSON object for Paris with the fields city, country (strings) and population "
     "(an integer).", _obj(city=STR, country=STR, population=INT)),
    ("Return a JSON object describing the novel Pride and Prejudice with the fields title, "
     "author (strings) and year (an integer).", _obj(title=STR, author=STR, year=INT)),
    ("Describe the film Jaws as JSON: title and director (strings), year (an integer) and "
     "genres (a list of strings).", _obj(title=STR, director=STR, year=INT, genres=STRINGS)),
    ("Write a JSON object for a product in a shop with the fields name (a string), price "
     "(a number) and in_stock (true or false).", _obj(name=STR, price=NUM, in_stock=BOOL)),
    ("Give today's weather in London as a JSON object with the fields city (a string), "
     "temperature_c (a number) and condition (a string).",
     _obj(city=STR, temperature_c=NUM, condition=STR)),
    ("Give a pancake recipe as JSON with the fields name (a string), ingredients (a list "
     "of strings) and minutes (an integer).", _obj(name=STR, ingredients=STRINGS, minutes=INT)),
    ("Describe the planet Saturn as a JSON object with the fields name (a string), moons "
     "(an integer) and has_rings (a boolean).", _obj(name=STR, moons=INT, has_rings=BOOL)),
    ("Give a JSON object for Japan with the fields name, capital and continent, all "
     "strings.", _obj(name=STR, capital=STR, continent=STR)),
    ("Describe a car as JSON with the fields make and model (strings) and year (an "
     "integer).", _obj(make=STR, model=STR, year=INT)),
    ("Give the first Moon landing as a JSON object with the fields name (a string) and "
     "date (a date, YYYY-MM-DD).", _obj(name=STR, date={"type": "string", "format": "date"})),
    ("Describe a spider as a JSON object with the fields species (a string), legs (an "
     "integer) and can_fly (a boolean).", _obj(species=STR, legs=INT, can_fly=BOOL)),
    ("Give a famous song as JSON with the fields title and artist (strings) and "
     "duration_seconds (an integer).", _obj(title=STR, artist=STR, duration_seconds=INT)),
    ("Describe the chemical element oxygen as JSON with the fields name and symbol "
     "(strings) and atomic_number (an integer).", _obj(name=STR, symbol=STR, atomic_number=INT)),
    ("Create a user account as a JSON object with the fields username (a string) and email "
     "(an email address).", _obj(username=STR, email={"type": "string", "format": "email"})),
    ("Describe a well-known company as JSON with the fields name (a string), founded (the "
     "year, an integer) and headquarters (a string).",
     _obj(name=STR, founded=INT, headquarters=STR)),
    ("Describe the Python programming language as JSON with the fields name and creator "
     "(strings) and year (an integer).", _obj(name=STR, creator=STR, year=INT)),
    ("Give a point in the plane as a JSON object with the fields x and y (numbers).",
     _obj(x=NUM, y=NUM)),
    ("Write a to-do item as JSON with the fields task (a string), done (a boolean) and "
     "priority (an integer from 1 to 5).",
     _obj(task=STR, done=BOOL, priority={"type": "integer", "minimum": 1, "maximum": 5})),
    ("Describe Mount Everest as a JSON object with the fields name (a string), height_m "
     "(an integer, metres) and country (a string).", _obj(name=STR, height_m=INT, country=STR)),
]


# ----------------------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:,.1f}"


def us(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e6:,.0f}"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def first_object_span(text: str) -> str | None:
    """The first balanced {...} of `text` (braces inside JSON strings ignored)."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def extract_json(text: str) -> tuple[bool, Any]:
    """(found, value): the whole text as JSON, else its first balanced {...} span."""
    for candidate in (text.strip(), first_object_span(text)):
        if candidate:
            try:
                return True, json.loads(candidate)
            except ValueError:
                pass
    return False, None


def why_invalid(schema: dict[str, Any], value: Any) -> str | None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema,
                                                format_checker=jsonschema.FormatChecker())
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else f"{error.message[:80]}"


@dataclass
class Answer:
    tokens: list[int]
    text: str
    decode_tps: float
    wall_s: float  # stream() called (compile included) to the last event
    satisfied: bool | None
    finish: str | None


def answer(loaded: Any, settings: Any, ids: list[int], limit: int,
           constraint: Any = None) -> Answer:
    from chatcli.generation.stream import stream

    start = time.perf_counter()
    gen = stream(loaded, ids, settings, limit, constraint=constraint)
    for _ in gen:
        pass
    return Answer(list(gen.token_ids), gen.text, gen.stats.decode_tokens_per_s,
                  time.perf_counter() - start, gen.constraint_satisfied,
                  gen.stats.finish_reason)


# ----------------------------------------------------------------------------- compile


@dataclass
class CompileRun:
    import_s: float = 0.0
    tokenizer_s: float = 0.0
    first: tuple[str, float] | None = None  # (schema, seconds): the first compile
    warm: dict[str, float] = field(default_factory=dict)  # the others
    matcher: dict[str, float] = field(default_factory=dict)  # a new matcher
    rejected: dict[str, str] = field(default_factory=dict)
    total: int = 0


def compile_all(loaded: Any, files: list[Path], data: Path) -> CompileRun:
    from chatcli.constraints import engine
    from chatcli.constraints.spec import schema_constraint

    out = CompileRun(total=len(files))
    tokenizer_json = str(loaded.folder / "tokenizer.json")
    vocab, eos = loaded.lm.vocab_size, frozenset(loaded.eos_ids)
    t0 = time.perf_counter()
    import llguidance  # noqa: F401  # timed on its own

    out.import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine._tokenizer(tokenizer_json, vocab, tuple(sorted(eos)))  # what compile caches
    out.tokenizer_s = time.perf_counter() - t0
    for path in files:
        name = path.relative_to(data).as_posix()
        constraint = schema_constraint(str(path))
        t0 = time.perf_counter()
        try:
            compiled = engine.compile_constraint(constraint, tokenizer_json, vocab, eos)
        except engine.ConstraintError as exc:
            out.rejected[name] = exc.message
            continue
        seconds = time.perf_counter() - t0
        if out.first is None:
            out.first = (name, seconds)
        else:
            out.warm[name] = seconds
        t0 = time.perf_counter()
        compiled.matcher()
        out.matcher[name] = time.perf_counter() - t0
    return out


def compile_report(run: CompileRun) -> list[str]:
    warm = list(run.warm.values())
    worst = max(run.warm, key=lambda k: run.warm[k]) if run.warm else "-"
    slow_matcher = max(run.matcher, key=lambda k: run.matcher[k]) if run.matcher else "-"
    compiled = run.total - len(run.rejected)
    lines = ["**Schema compile time** (all schemas of the sample, for this vocabulary):", "",
             row("", "ms"), row("---", "---"),
             row("import llguidance (once per process)", ms(run.import_s)),
             row("llguidance tokenizer from tokenizer.json (once per process)",
                 ms(run.tokenizer_s))]
    if run.first is not None:
        lines.append(row(f"first compile of the process ({run.first[0]})", ms(run.first[1])))
    lines += [
        row(f"compile, the other {len(warm)}: median / p90", f"{ms(median(warm))} / "
            f"{ms(pct(warm, 0.9))}"),
        row(f"compile, worst ({worst})", ms(run.warm.get(worst, float("nan")))),
        row("new matcher (each answer, at its start and at its completeness check): "
            "median / p90", f"{ms(median(list(run.matcher.values())))} / "
            f"{ms(pct(list(run.matcher.values()), 0.9))}"),
        row(f"new matcher, worst ({slow_matcher})",
            ms(run.matcher.get(slow_matcher, float("nan")))),
        "",
        f"Coverage: {compiled} / {run.total} compile. Refused ({len(run.rejected)}): "
        + "; ".join(f"{k}: {v}" for k, v in sorted(run.rejected.items())) + ".",
    ]
    return lines


# ------------------------------------------------------------------------------- speed


@dataclass
class SpeedCase:
    name: str
    prompt_tokens: int
    runs: dict[str, list[Answer]]
    mask_s: list[float] = field(default_factory=list)  # allowed() per token
    advance_s: list[float] = field(default_factory=list)
    new_matcher_s: float = float("nan")
    satisfied_s: float = float("nan")
    compile_s: float = float("nan")

    def tps(self, variant: str) -> float:
        return median(a.decode_tps for a in self.runs[variant] if a.decode_tps > 0)

    def tokens(self, variant: str) -> int:
        return len(self.runs[variant][0].tokens)


def speed_cases(loaded: Any, files: list[Path], args: argparse.Namespace) -> list[SpeedCase]:
    from chatcli.constraints.engine import ConstraintError
    from chatcli.constraints.spec import schema_constraint
    from chatcli.generation.stream import constrained_lm
    from chatcli.prompt import Message, render_ids

    settings = greedy_settings()
    chosen: list[tuple[str, Any, list[int]]] = []
    for path in files:
        if len(chosen) == args.schemas:
            break
        text = json.dumps(json.loads(path.read_text()), separators=(",", ":"))
        ids = render_ids(loaded.tokenizer,
                         [Message("user", SCHEMA_PROMPT.format(schema=text))])
        if len(ids) > args.max_prompt:
            continue
        constraint = schema_constraint(str(path))
        try:
            constrained_lm(loaded, constraint)
        except ConstraintError:
            continue
        chosen.append((path.relative_to(args.data).as_posix(), constraint, ids))

    # Warm-up (lazy imports, first calls), not measured.
    answer(loaded, settings, chosen[0][2], 8)
    answer(loaded, settings, chosen[0][2], 8, chosen[0][1])
    cases = []
    for i, (name, constraint, ids) in enumerate(chosen, start=1):
        variants: dict[str, Callable[[], Answer]] = {
            "unconstrained": lambda ids=ids: answer(loaded, settings, ids, args.tokens),
            "constrained": lambda ids=ids, c=constraint: answer(loaded, settings, ids,
                                                                args.tokens, c),
        }
        case = SpeedCase(name, len(ids), interleave(variants, args.rounds, alternate=True))
        where_time_goes(loaded, constraint, case)
        cases.append(case)
        print(f"{i}/{len(chosen)} {name}: {case.tps('unconstrained'):.1f} vs "
              f"{case.tps('constrained'):.1f} tok/s", file=sys.stderr, flush=True)
    return cases


def where_time_goes(loaded: Any, constraint: Any, case: SpeedCase) -> None:
    """Replay the constrained answer through a fresh matcher, timing each piece."""
    from chatcli.generation.stream import constrained_lm

    t0 = time.perf_counter()
    clm = constrained_lm(loaded, constraint)
    case.compile_s = time.perf_counter() - t0
    tokens = case.runs["constrained"][0].tokens
    body = [t for t in tokens if t not in loaded.eos_ids]
    t0 = time.perf_counter()
    matcher = clm.compiled.matcher()
    case.new_matcher_s = time.perf_counter() - t0
    for token in body:
        t0 = time.perf_counter()
        matcher.allowed()
        t1 = time.perf_counter()
        matcher.advance(token)
        case.advance_s.append(time.perf_counter() - t1)
        case.mask_s.append(t1 - t0)
    t0 = time.perf_counter()
    clm.satisfied(tokens)
    case.satisfied_s = time.perf_counter() - t0


def speed_report(cases: list[SpeedCase], args: argparse.Namespace) -> list[str]:
    ratios = [c.tps("constrained") / c.tps("unconstrained") for c in cases
              if c.tps("unconstrained") > 0 and c.tps("constrained") > 0]

    def pooled(variant: str) -> float:
        tokens = sum(len(a.tokens) - 1 for c in cases for a in c.runs[variant]
                     if a.decode_tps > 0)
        seconds = sum((len(a.tokens) - 1) / a.decode_tps for c in cases
                      for a in c.runs[variant] if a.decode_tps > 0)
        return tokens / seconds if seconds else float("nan")

    med = median(ratios)
    pooled_ratio = pooled("constrained") / pooled("unconstrained")
    verdict = "met" if min(med, pooled_ratio) >= 0.9 else "MISSED"
    lines = [f"**Decode speed, constrained / unconstrained** ({len(cases)} schemas, greedy, at "
             f"most {args.tokens} tokens, {args.rounds} interleaved rounds, medians; prompt: "
             f"\"{SCHEMA_PROMPT}\" as a chat message): median of the per-schema ratios "
             f"**{med:.2f}**, pooled {pooled_ratio:.2f} ({pooled('constrained'):.1f} vs "
             f"{pooled('unconstrained'):.1f} tok/s); target >= 0.9: {verdict}.", "",
             row("schema", "prompt tokens", "tokens U / C", "C complete", "tok/s U", "tok/s C",
                 "C / U", "mask µs median (p90)", "advance µs", "new matcher ms",
                 "completeness check ms", "compile ms"),
             row(*["---"] * 12)]
    for c in cases:
        ratio = c.tps("constrained") / c.tps("unconstrained") if c.tps("unconstrained") else 0
        done = c.runs["constrained"][0].satisfied
        lines.append(row(
            c.name, c.prompt_tokens, f"{c.tokens('unconstrained')} / {c.tokens('constrained')}",
            "yes" if done else "no", f"{c.tps('unconstrained'):.1f}",
            f"{c.tps('constrained'):.1f}", f"{ratio:.2f}",
            f"{us(median(c.mask_s))} ({us(pct(c.mask_s, 0.9))})", us(median(c.advance_s)),
            ms(c.new_matcher_s), ms(c.satisfied_s), ms(c.compile_s)))
    step_u = [1 / c.tps("unconstrained") for c in cases if c.tps("unconstrained") > 0]
    step_c = [1 / c.tps("constrained") for c in cases if c.tps("constrained") > 0]
    masks = [m for c in cases for m in c.mask_s]
    advances = [a for c in cases for a in c.advance_s]
    lines += ["", f"Where the time goes: a decode step takes {ms(median(step_u))} ms "
              f"unconstrained and {ms(median(step_c))} ms constrained (medians over the "
              f"schemas); the mask (`Matcher.allowed()`: llguidance's mask plus unpacking "
              f"it to a bool tensor) takes {us(median(masks))} µs median "
              f"({us(pct(masks, 0.9))} p90) and `advance()` {us(median(advances))} µs, "
              f"on the same thread, after the forward pass (not overlapped). Outside the "
              f"decode rate: the compile and a new matcher before the first token, and "
              f"the completeness check after the last (a fresh matcher replaying the "
              f"answer)."]
    return lines


# ----------------------------------------------------------------------------- quality


@dataclass
class QualityCase:
    prompt: str
    fields: str
    plain: Answer
    constrained: Answer
    plain_found: bool
    plain_why: str | None
    constrained_why: str | None


def quality(loaded: Any, limit: int, prompts: int) -> list[QualityCase]:
    from chatcli.constraints.spec import schema_constraint
    from chatcli.prompt import Message, render_ids

    settings = greedy_settings()
    cases = []
    for i, (prompt, schema) in enumerate(QUALITY[:prompts], start=1):
        ids = render_ids(loaded.tokenizer, [Message("user", prompt)])
        plain = answer(loaded, settings, ids, limit)
        found, value = extract_json(plain.text)
        plain_why = why_invalid(schema, value) if found else "no JSON parses"
        constrained = answer(loaded, settings, ids, limit,
                             schema_constraint(json.dumps(schema)))
        if constrained.satisfied:
            ok, value = extract_json(constrained.text)
            c_why = why_invalid(schema, value) if ok else "not JSON"
        else:
            c_why = "incomplete"
        cases.append(QualityCase(prompt, ", ".join(schema["properties"]), plain, constrained,
                                 found, plain_why, c_why))
        print(f"quality {i}/{prompts}: plain {plain_why or 'valid'}, "
              f"constrained {c_why or 'valid'}", file=sys.stderr, flush=True)
    return cases


def quality_report(cases: list[QualityCase], limit: int) -> list[str]:
    n = len(cases)
    found = sum(c.plain_found for c in cases)
    plain_valid = sum(c.plain_why is None for c in cases)
    complete = [c for c in cases if c.constrained.satisfied]
    c_valid = sum(c.constrained_why is None for c in complete)
    lines = [f"**Quality: asked for JSON in words** ({n} fixed prompts naming the fields and "
             f"their types, greedy, at most {limit} tokens; an unconstrained answer counts "
             f"when the whole text or its first balanced {{...}} span parses and validates):",
             "", row("", "answers with JSON", "valid", "incomplete (token limit)"),
             row("---", "---", "---", "---"),
             row("unconstrained", f"{found} / {n}", f"**{plain_valid} / {n}** "
                 f"({plain_valid / n:.0%})", "-"),
             row("constrained (the schema)", f"{len(complete)} / {n}",
                 f"**{c_valid} / {len(complete)}** of the complete "
                 f"({c_valid / max(1, len(complete)):.0%})", f"{n - len(complete)}"),
             "", row("#", "fields", "unconstrained", "constrained", "tokens U / C"),
             row("---", "---", "---", "---", "---")]
    for i, c in enumerate(cases, start=1):
        lines.append(row(i, c.fields, c.plain_why or "valid", c.constrained_why or "valid",
                         f"{len(c.plain.tokens)} / {len(c.constrained.tokens)}"))
    return lines


# -------------------------------------------------------------------------------- main


def greedy_settings() -> Any:
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings

    return resolve_settings(strategy_registry(), strategy="greedy")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--model", default=None, help="alias (default: the default model)")
    parser.add_argument("--quantize", default=None, choices=("none", "int8", "int4"),
                        help="default: the alias's (int4 for the default model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: chatcli's choice for this machine)")
    parser.add_argument("--schemas", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--max-prompt", type=int, default=1024)
    parser.add_argument("--quality-tokens", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=len(QUALITY),
                        help="how many of the quality prompts (a quick check: fewer)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    add_write_options(parser, "constrained")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts takes {','.join(PARTS)}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cond = Conditions.observe()
    import torch

    from chatcli.loader import load_model
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import resolve_runtime

    spec = load_registry().resolve(args.model)
    runtime = resolve_runtime("cpu", "auto", args.threads, spec.dtype, args.quantize,
                              spec.quantize)
    loaded = load_model(spec, runtime, SilentReporter())
    files = schema_files(args.data, None)
    sections: list[list[str]] = []
    if "compile" in parts:
        sections.append(compile_report(compile_all(loaded, files, args.data)))
    if "speed" in parts:
        sections.append(speed_report(speed_cases(loaded, files, args), args))
    if "quality" in parts:
        sections.append(quality_report(quality(loaded, args.quality_tokens, args.prompts),
                                       args.quality_tokens))
    cond.finish()
    cores = os.cpu_count() or 1
    busy = max(cond.load_start[0], cond.load_end[0] if cond.load_end else 0) >= cores / 2
    from importlib.metadata import version

    command = " ".join(["python bench/constrained_decode.py", *sys.argv[1:]])
    head = [f"`{command}` — model {spec.alias} ({loaded.implementation}, "
            f"{type(loaded.lm).__name__}, {loaded.runtime.dtype}, quantize "
            f"{loaded.runtime.quantize}), {len(files)} schemas from "
            f"{args.data.relative_to(REPO) if args.data.is_relative_to(REPO) else args.data}; "
            f"torch {torch.__version__} on {torch.get_num_threads()} thread(s) "
            f"({cores} cores), llguidance {version('llguidance')}, jsonschema "
            f"{version('jsonschema')}; {cond.describe()}."
            + (" The machine was busy: the timings are provisional." if busy else "")]
    body = "\n".join(["## Constrained decoding (issue 14)", "", *head, "",
                      *("\n".join(s) + "\n" for s in sections)]).rstrip()
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
