"""`chatcli compare`: run several decoding strategies on the same prompt, side by side.

Wiring only: parses `-S NAME[:key=value,...]` (repeatable; any parameter of the
strategy or a common one, errors quoted as `-S NAME:key=value`) and the common
parameters' flags (applied to every strategy), gathers the prompt like `ask` (piped
stdin first), packs it once (leaving room for the most new tokens any strategy may
generate), runs each strategy on the same prompt ids and hands the results to the
UI. Without -S it compares the built-in strategies the alias's backend can run.
`--alt STEP:RANK` is checked as ask checks it: STEP against -n before anything loads,
RANK against the vocabulary before any answer. `--raw` completes the prompt as plain
text, as `ask --raw` does (no chat template, no -s); a model without a chat template does
so by itself, with a note. Knows nothing about how tokens are chosen.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import typer

from chatcli.cli.options import (
    BaseUrlOpt,
    ChoiceOpt,
    DeviceOpt,
    DtypeOpt,
    GrammarOpt,
    JsonObjectOpt,
    JsonOpt,
    ModelChoice,
    ModelOpt,
    ModelsFileOpt,
    NoServerOpt,
    QuantizeOpt,
    RawOpt,
    RegexOpt,
    RuntimeChoice,
    SchemaOpt,
    SystemOpt,
    ThreadsOpt,
    constraint_of,
    decoding_options,
)
from chatcli.decoding.base import Spelling
from chatcli.errors import UsageError
from chatcli.ui.console import UI, read_piped_stdin

PromptArg = Annotated[str | None, typer.Argument(help="The prompt. Piped stdin is put before it.",
                                                 show_default=False)]
SpecsOpt = Annotated[
    list[str] | None,
    typer.Option("--strategy", "-S", metavar="NAME[:K=V,...]",
                 help="A strategy to compare, with its parameters (repeatable), e.g. "
                 "-S greedy -S beam:num_beams=4 -S sample:temperature=0.8,top_p=0.9.",
                 show_default=False),
]
CompareAltOpt = Annotated[
    str | None, typer.Option("--alt", metavar="STEP:RANK", show_default=False,
                             help="Beside each answer, the one the model gives when its RANK-th "
                             "token is taken at STEP (same strategy and seed), with the step "
                             "where they part.")]
FreeTooOpt = Annotated[
    bool, typer.Option("--free-too", rich_help_panel="Answer shape (constrained decoding)",
                       help="With a constraint: run each strategy without it too, side by "
                       "side.")
]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-S {spec}: expected NAME:key=value,...",
                             "e.g. -S sample:temperature=0.8,top_p=0.9")
        options[key.strip()] = value.strip()
    if not name.strip():
        raise UsageError(f"-S {spec}: missing the strategy name", "e.g. -S greedy")
    return name.strip(), options


def spelling(name: str) -> Spelling:
    """How a parameter of strategy `name` is written on compare's command line."""
    return lambda key, value: f"-S {name}:{key}={value}"


def divergence(first: list[int], other: list[int]) -> int | None:
    """1-based step where `other` first differs from `first` (None: identical)."""
    for i, (a, b) in enumerate(zip(first, other, strict=False), start=1):
        if a != b:
            return i
    return None if len(first) == len(other) else min(len(first), len(other)) + 1


def runnable(spec: Any, name: str) -> bool:
    """Whether the alias's backend can run strategy `name` (at its defaults)."""
    from chatcli.backends.base import Views
    from chatcli.cli.common import check_settings
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings

    try:
        settings = resolve_settings(strategy_registry(), strategy=name)
        check_settings(spec, settings, Views(candidates=0))
    except UsageError:
        return False
    return True


@decoding_options(strategies=False, strategy=False, option=False)
def compare(
    prompt: PromptArg = None,
    strategy: SpecsOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    system: SystemOpt = None,
    raw: RawOpt = False,
    decoding: dict[str, Any] | None = None,
    json_out: JsonOpt = False,
    schema: SchemaOpt = None,
    json_object: JsonObjectOpt = False,
    regex: RegexOpt = None,
    grammar: GrammarOpt = None,
    choice: ChoiceOpt = None,
    free_too: FreeTooOpt = False,
    alt_spec: CompareAltOpt = None,
    models_file: ModelsFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = None,
    threads: ThreadsOpt = None,
    no_server: NoServerOpt = False,
) -> None:
    """Answer one prompt with several strategies and show the answers side by side.

    Default strategies: the built-in ones the model can run (all of them locally; on a
    server, those it can run: beam search only where it has it)."""
    from chatcli.cli.common import Request, setup
    from chatcli.cli.options import decoding_request
    from chatcli.decoding.registry import strategy_registry
    from chatcli.prompt import join_prompt

    _, flags, _ = decoding_request(decoding or {})

    def requests(spec: Any) -> list[Request]:
        registry = strategy_registry()
        from chatcli.decoding.base import capabilities_of

        names = strategy or [
            n for n in registry.names()
            if registry.origins[n] == "built-in" and runnable(spec, n)
            and not (alt is not None and capabilities_of(registry.get(n)).hypotheses)]
        return [Request(name, flags, options, spelling(name))
                for name, options in map(parse_spec, names)]

    ui = UI()
    # Every strategy is validated before stdin is read or anything loads.
    constraint = constraint_of(schema=schema, json_object=json_object, regex=regex,
                               grammar=grammar, choice=choice)
    if free_too and constraint is None:
        raise UsageError("--free-too compares answers with and without a constraint, and "
                         "none is given", "add --schema, --json-object, --regex, --grammar or "
                         "--choice")
    from chatcli.cli.ask import RAW_NO_SYSTEM, check_alt, parse_alt

    if raw and system is not None:
        raise UsageError(RAW_NO_SYSTEM, "put what the model should read first in the prompt "
                         "itself, or drop --raw")
    alt = parse_alt(alt_spec) if alt_spec is not None else None

    def check(early: Any) -> None:
        if alt is not None and early.capabilities.hypotheses:
            raise UsageError(f"--alt explores one answer's steps; strategy '{early.strategy}' "
                             "returns several hypotheses", "compare greedy or sample with --alt")
        if alt is not None:  # a STEP past -n is known before anything runs
            check_alt(str(alt_spec), alt, max_new_tokens=early.common.max_new_tokens)

    prep = setup(ui, ModelChoice(model, base_url, models_file),
                 RuntimeChoice(device, dtype, threads, quantize, no_server), requests=requests,
                 candidates=0, constraint=constraint, check=check, raw=raw)
    if alt is not None:
        from chatcli.backends import backend_of
        from chatcli.backends.base import check_alternatives

        check_alternatives(prep.spec, backend_of(prep.spec).capabilities_of(prep.spec), "--alt")
    text = join_prompt(prompt, read_piped_stdin(ui))
    if not text.strip():
        raise UsageError("the prompt is empty", 'e.g. chatcli compare "Name three rivers."')

    from chatcli.backends.base import Views
    from chatcli.chat.session import pack_for
    from chatcli.cli.common import raw_without_template
    from chatcli.conversation import Conversation

    backend = prep.open()
    if not raw:
        raw = raw_without_template(backend, prep.spec.alias, system, ui)
    if alt is not None:  # before any answer is generated
        check_alt(str(alt_spec), alt, vocab=backend.vocab_size)
    conversation = Conversation(system=system)
    conversation.add_user(text)
    all_settings = prep.resolved
    # One packed prompt serves every strategy: its budget leaves room for the most
    # new tokens any of them may generate.
    most = max(s.common.max_new_tokens for s in all_settings)
    packed = pack_for(conversation, backend, most, raw=raw, truncate=False)
    results: list[dict[str, Any]] = []
    shapes = ([None] if free_too else []) + [constraint]
    runs = [(request, settings, shape) for request, settings in
            zip(prep.requests, all_settings, strict=True) for shape in shapes]
    def result(label: str, name: str, settings: Any, shape: Any, gen: Any, events: list[Any],
               seconds: float) -> dict[str, Any]:
        entropies = [e.candidates.entropy for e in events if e.candidates is not None]
        # A strategy that returns hypotheses scores whole sequences: the best one's log-prob.
        logprob = gen.hypotheses[0].logprob if gen.hypotheses else sum(e.logprob for e in events)
        if not math.isfinite(logprob):  # a server that returned no logprobs
            logprob = None
        # what a constraint removed (an alternative's forced steps look like one: left out)
        removed = [e.candidates.removed_mass for e in events
                   if shape is not None and e.candidates is not None
                   and e.candidates.removed_mass is not None]
        return {
            "label": label,
            "strategy": name,
            "decoding": settings.as_dict(),
            "text": gen.text,
            "thinking": gen.thinking if gen.thinking_tokens else None,
            "token_ids": gen.token_ids if backend.capabilities.token_ids else None,
            "completion_tokens": len(gen.token_ids),
            "logprob": logprob,
            "mean_entropy": sum(entropies) / len(entropies) if entropies else None,
            "seconds": seconds,
            "tokens_per_second": len(gen.token_ids) / seconds if seconds > 0 else 0.0,
            "finish_reason": gen.stats.finish_reason,
            "constraint": None if shape is None else shape.as_dict(),
            "constraint_satisfied": gen.constraint_satisfied,
            "mean_removed": sum(removed) / len(removed) if removed else None,
            "ids": gen.token_ids,  # remote: ids that name token texts, enough for divergence
        }

    from chatcli.thinking import split_thinking

    thinking = None if raw else backend.thinking  # compared: the answers, thinking apart
    for request, settings, shape in runs:
        start = time.perf_counter()
        # Candidates (K=0) give each step's entropy; a server's logprobs give the
        # sequence log-probability.
        backend.invalidate()  # each strategy starts from the same cold prompt
        extra: dict[str, Any] = {"raw": True} if raw else {}
        if shape is not None:
            extra["constraint"] = shape
        gen = backend.stream(packed, settings, settings.common.max_new_tokens,
                             Views(candidates=0), strategies=prep.strategies, **extra)
        split_thinking(gen, thinking)
        events = list(gen)
        seconds = time.perf_counter() - start
        name, options = request.strategy, request.options
        label = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options
                        else "")
        if constraint is not None:
            label += f" [{shape.source or shape.describe()}]" if shape is not None else " [free]"
        results.append(result(label, name, settings, shape, gen, events, seconds))
        if alt is None:
            continue
        start = time.perf_counter()
        taken, other = backend.alternative(
            packed, settings, settings.common.max_new_tokens, Views(candidates=0),
            gen.token_ids, *alt, strategies=prep.strategies, constraint=shape)
        split_thinking(other, thinking)
        other_events = list(other)
        alternative = result(f"{label} [alt {alt[0]}:{alt[1]}]", name, settings, shape, other,
                             other_events, time.perf_counter() - start)
        alternative["parts_at"] = divergence(gen.token_ids, other.token_ids)
        alternative["alternative"] = {"step": taken.step, "rank": taken.rank,
                                      "token_id": taken.token_id, "probability": taken.prob,
                                      "original_token_id": taken.original_id}
        results.append(alternative)
    first = results[0]["ids"]
    for r in results:
        r["diverges_at"] = divergence(first, r.pop("ids"))
    if json_out:
        ui.print_json({"model": prep.spec.alias, "prompt_tokens": len(packed.ids),
                       "raw": raw, "results": results})
        return
    from chatcli.ui.compare import show_comparison

    show_comparison(ui, results)
