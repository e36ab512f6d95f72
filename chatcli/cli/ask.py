"""`chatcli ask`: one question, one streamed answer.

Parses options, gathers the prompt (piped stdin first, then the argument), loads
the model, resolves the decoding settings and hands the stream of events to the
UI. What it shows must suit the strategy, which says what it can do (per-token
distributions for --show-candidates, several hypotheses for --show-beams); a strategy
that does not stream shows a spinner on a terminal until its answer comes; an answer
the token limit cut short is followed, on a terminal, by a dim line saying so. Files
past --max-files/--max-bytes are refused unless --truncate-files.
`--alt STEP:RANK` is checked before the model runs (STEP and RANK from 1, STEP within
-n, RANK within the vocabulary); when the answer then has no such alternative (it ended
before STEP), the answer found is shown, saved, and the error follows. Once everything
is printed, a missing compiled decode step is built in the background
(`chatcli.autocompile.after_answer`). Knows nothing about how tokens are chosen.

`--raw` completes the prompt as plain text (no chat template, so no `-s`); a model
without a chat template does so by itself, with a note on stderr. `-c` goes on with
the latest conversation as it is: a raw one continues its text (the new prompt right
after the last completion, with or without --raw), a chat one stays a chat (--raw is
refused). The reply is saved marked raw, and --json says "raw".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import Annotated, Any

import typer

from chatcli.cli.options import (
    BaseUrlOpt,
    ChoiceOpt,
    ContinueOpt,
    DeviceOpt,
    DtypeOpt,
    ExplainContextOpt,
    FileOpt,
    GrammarOpt,
    HideThinkingOpt,
    JsonObjectOpt,
    JsonOpt,
    MaxBytesOpt,
    MaxFilesOpt,
    ModelChoice,
    ModelOpt,
    ModelsFileOpt,
    NoServerOpt,
    PinOpt,
    QuantizeOpt,
    RawOpt,
    RegexOpt,
    RuntimeChoice,
    SchemaOpt,
    ShowBeamsOpt,
    ShowCandidatesOpt,
    ShowThinkingOpt,
    StatsOpt,
    SystemOpt,
    ThinkOpt,
    ThreadsOpt,
    ToolFlags,
    TruncateFilesOpt,
    constraint_of,
    decoding_options,
    tool_options,
)
from chatcli.errors import ChatcliError, UsageError
from chatcli.ui.console import UI, read_piped_stdin

PromptArg = Annotated[
    str | None,
    typer.Argument(help="The question. Piped stdin is put before it.", show_default=False),
]

RAW_NO_SYSTEM = ("--raw completes your text as it is, without a chat template, so there is "
                 "no system prompt (-s)")


def refuse_views(strategies: Any, settings: Any, show_candidates: int | None,
                 show_beams: bool) -> None:
    """What ask shows must suit the strategy: refused, naming what it lacks."""
    caps, name = settings.capabilities, settings.strategy
    if show_candidates and not caps.distributions:
        why = caps.note or f"strategy '{name}' has no per-token distributions"
        fix = (f"use --show-beams with --strategy {name}" if caps.hypotheses else
               "use a strategy with per-token distributions, e.g. " + " or ".join(
                   f"-S {n}" for n in strategies.with_capability(lambda c: c.distributions)))
        raise UsageError(f"--show-candidates shows token-by-token choices; {why}", fix)
    if show_beams and not caps.hypotheses:
        takers = strategies.with_capability(lambda c: c.hypotheses)
        if not takers:
            raise UsageError("--show-beams needs a strategy that returns several hypotheses "
                             f"(the strategy is {name}), and none is installed", "remove it")
        raise UsageError(f"--show-beams needs --strategy {' or '.join(takers)} (the strategy is "
                         f"{name})", f"add -S {takers[0]}")


AltOpt = Annotated[
    str | None, typer.Option("--alt", metavar="STEP:RANK", show_default=False,
                             help="Answer, then answer again taking the model's RANK-th token "
                             "at STEP (1: its top one) and going on with the same strategy and "
                             "seed; the alternative is shown and saved.")]


def parse_alt(value: str) -> tuple[int, int]:
    step, sep, rank = value.partition(":")
    if not sep or not step.strip().isdigit() or not rank.strip().isdigit():
        raise UsageError(f"--alt {value}: expected STEP:RANK", "e.g. --alt 3:2 (at step 3, the "
                         "model's second choice); chatcli chat's /alt lists the steps to try")
    if int(step) < 1:
        raise UsageError(f"--alt {value}: STEP counts from 1 (the answer's first token)",
                         "e.g. --alt 1:2: the model's second choice for the first token")
    if int(rank) < 1:
        raise UsageError(f"--alt {value}: RANK counts from 1 (the model's most likely token)",
                         "e.g. --alt 3:2: the model's second choice at step 3")
    return int(step), int(rank)


def check_alt(value: str, alt: tuple[int, int], max_new_tokens: int | None = None,
              vocab: int | None = None) -> None:
    """Refuse, before anything is generated, a STEP past -n or a RANK past the vocabulary."""
    step, rank = alt
    if max_new_tokens is not None and step > max_new_tokens:
        raise UsageError(f"--alt {value}: step {step} is past the answer's end: -n "
                         f"(--max-new-tokens) {max_new_tokens} allows {max_new_tokens} "
                         "tokens at most", f"choose a STEP in 1..{max_new_tokens}, or raise -n")
    if vocab is not None and rank > vocab:
        raise UsageError(f"--alt {value}: RANK must be in 1..{vocab}, the model's vocabulary",
                         "RANK 1 is the model's most likely token at STEP, 2 the next")


def waited(ui: UI, events: Iterable[Any], message: str) -> Iterator[Any]:
    """`events` of a strategy that answers at the end: a spinner on a terminal until then."""
    it = iter(events)
    if ui.err_tty:
        with ui.busy(message):
            first = next(it, None)
        if first is None:
            return
        yield first
    yield from it


@decoding_options()
@tool_options
def ask(
    prompt: PromptArg = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    system: SystemOpt = None,
    raw: RawOpt = False,
    decoding: dict[str, Any] | None = None,
    cont: ContinueOpt = False,
    show_candidates: ShowCandidatesOpt = None,
    show_beams: ShowBeamsOpt = False,
    explain_context: ExplainContextOpt = False,
    json_out: JsonOpt = False,
    stats: StatsOpt = False,
    schema: SchemaOpt = None,
    json_object: JsonObjectOpt = False,
    regex: RegexOpt = None,
    grammar: GrammarOpt = None,
    choice: ChoiceOpt = None,
    file: FileOpt = None,
    alt_spec: AltOpt = None,
    max_files: MaxFilesOpt = 50,
    max_bytes: MaxBytesOpt = 1_000_000,
    truncate_files: TruncateFilesOpt = False,
    pin: PinOpt = False,
    models_file: ModelsFileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quantize: QuantizeOpt = None,
    threads: ThreadsOpt = None,
    no_server: NoServerOpt = False,
    think: ThinkOpt = None,
    hide_thinking: HideThinkingOpt = False,
    show_thinking: ShowThinkingOpt = False,
    tools: ToolFlags | None = None,
) -> None:
    """Answer one question with a model, streaming the reply (saved in history)."""
    from chatcli.chat.recorder import Recorder, open_history
    from chatcli.chat.session import ChatSession
    from chatcli.cli.common import gather_files, raw_without_template, setup
    from chatcli.conversation import Conversation
    from chatcli.decoding.registry import strategy_registry
    from chatcli.prompt import join_prompt
    from chatcli.store import history_path
    from chatcli.ui.answers import (
        show_spans,
        speculation_note,
        stats_line,
        stopped_note,
        stream_answer,
    )
    from chatcli.ui.candidates import show_table

    ui = UI()
    # Flags are validated before stdin is read or anything loads.
    constraint = constraint_of(schema=schema, json_object=json_object, regex=regex,
                               grammar=grammar, choice=choice)
    alt = parse_alt(alt_spec) if alt_spec is not None else None
    if raw and system is not None:
        raise UsageError(RAW_NO_SYSTEM, "put what the model should read first in the prompt "
                         "itself, or drop --raw")
    if hide_thinking and show_thinking:
        raise UsageError("--hide-thinking and --show-thinking contradict each other",
                         "use one of them")
    show_thought = not hide_thinking and (ui.out_tty or show_thinking)
    from chatcli.cli import tool_loop

    flags = tools or ToolFlags()
    toolset = tool_loop.setup(flags, model, base_url, models_file, constraint, raw, alt_spec)
    if toolset:  # the template shows them to the model; every call it writes is right
        constraint = toolset.constraint

    def check(early: Any) -> None:
        refuse_views(strategy_registry(), early, show_candidates, show_beams)
        if alt is not None and early.capabilities.hypotheses:
            raise UsageError(f"--alt explores one answer's steps; strategy '{early.strategy}' "
                             "returns several hypotheses, so no step's token was chosen from "
                             "that step's distribution", "use --strategy greedy or sample")
        if alt is not None:
            check_alt(str(alt_spec), alt, max_new_tokens=early.common.max_new_tokens)

    prep = setup(ui, ModelChoice(model, base_url, models_file, think=think,
                                 tools=toolset.listing if toolset else None),
                 RuntimeChoice(device, dtype, threads, quantize, no_server), decoding,
                 check=check,
                 candidates=show_candidates or None,
                 internals="--show-beams" if show_beams else
                 "--explain-context" if explain_context else None, constraint=constraint,
                 raw=raw)
    if alt is not None:
        from chatcli.backends import backend_of
        from chatcli.backends.base import check_alternatives

        check_alternatives(prep.spec, backend_of(prep.spec).capabilities_of(prep.spec), "--alt")
    paths = list(file or [])
    gathered = gather_files(ui, paths, max_files, max_bytes, truncate_files) if paths else None
    # `-f -` takes stdin as a file; otherwise piped stdin joins the prompt
    text = join_prompt(prompt, None if "-" in paths else read_piped_stdin(ui))
    attached = gathered.attachments if gathered is not None else []
    if attached:
        from chatcli.attachments import render

        text = render(attached, text)
    if not text.strip():
        raise UsageError(
            "the prompt is empty", 'pass a question, e.g. chatcli ask "Why is the sky blue?"'
        )

    # A history that cannot be written warns, and the question is still answered.
    store = open_history(ui.warn, need_read=cont)
    conv_id, conv, message_ids = None, None, None
    latest = store.latest() if cont and store is not None else None
    if store is not None and latest is not None:
        _, conv, message_ids = store.load(latest.id)
        conv_id = latest.id
        continued_raw = store.raw(latest.id)
        if raw and not continued_raw:
            raise UsageError(f"--raw continues only a raw completion, and conversation "
                             f"{conv_id} is a chat", "drop -c to complete new text, or drop "
                             "--raw to go on with the chat")
        if continued_raw and system is not None:
            raise UsageError(f"conversation {conv_id} is a raw completion: its text goes on "
                             "as it is, with no system prompt (-s)", "drop -s, or drop -c to "
                             "start a new conversation")
        raw = continued_raw
        if model is None:
            prep.use(latest.model)
    conversation = conv or Conversation()
    recorder = Recorder(store, conversation, conv_id, message_ids, alias=lambda: prep.spec.alias,
                        warn=ui.warn, path=history_path())
    try:
        # The question is saved before the model loads: a failed load or a kill keeps it.
        if system is not None:
            conversation.system = system
            recorder.system_changed()
        conversation.add_user(text, pinned=pin)
        if attached:
            recorder.added(attachments=recorded_files(attached))
        else:
            recorder.added()
        backend = prep.open()
        if not raw and conv is None:
            raw = raw_without_template(backend, prep.spec.alias, system, ui)
        if alt is not None:  # before the answer is generated
            check_alt(str(alt_spec), alt, vocab=backend.vocab_size)
        # A continued conversation drops old exchanges to fit; a single question never
        # shortens what the user wrote.
        session = ChatSession(backend, prep.strategies, prep.decoding(), conversation,
                              recorder=recorder, truncate=False, raw=raw,
                              settings=prep.settings)
        session.candidates = show_candidates or None
        session.trace_beams = show_beams
        session.constraint = constraint
        gen, dropped = session.start_reply()
        if dropped:
            ui.warn(f"dropped the oldest {dropped} exchange(s) to fit the context window")
        if session.packing_note:
            ui.warn(session.packing_note)
        settings = session.settings
        original = None
        no_alt: ChatcliError | None = None  # the alternative does not exist: why
        shown: Iterable[Any] = gen
        if toolset:  # a call's text is not the answer: what it does is said instead
            from chatcli.ui.tools import hide_calls

            shown = hide_calls(gen)
        if alt is not None:  # the answer first, unseen; then the road not taken
            original = gen
            made: list[Any] = []
            with ui.busy("Answering once to find the step to change") if ui.err_tty \
                    else nullcontext():
                made.extend(original)
            session.finish_reply(original)
            try:
                taken, gen = session.start_alternative(*alt)
                shown = gen
            except ChatcliError as exc:  # the answer found is shown: it is the one saved
                no_alt, original, shown = _no_alternative(alt_spec, alt, gen, exc), None, made
        events: list[Any] = []
        drafts = settings.common.speculate is not None  # marked on a terminal
        if not settings.capabilities.streams and not json_out and no_alt is None:
            shown = waited(ui, gen, f"{settings.strategy}: the answer comes when the search "
                           "ends")
        try:
            stream_answer(ui, shown, events, coloured=session.candidates is not None,
                          quiet=json_out, thinking=show_thought, drafts=drafts)
        except BaseException:  # Ctrl-C, closed pipe: keep the partial answer, marked
            if no_alt is None:
                session.finish_reply(gen, interrupted=True)
            raise
        if no_alt is None:
            session.finish_reply(gen)
        calls: list[Any] = []
        decided = None  # with --show-candidates: how likely a call was, and which tool
        if toolset and session.candidates is not None:
            from chatcli.tools.calls import decision

            decided = decision(events, session.token_text, list(toolset.tools))
        if toolset:
            from chatcli.ui.tools import hide_calls

            def answer(g: Any) -> None:
                events.clear()
                try:
                    stream_answer(ui, hide_calls(g), events,
                                  coloured=session.candidates is not None, quiet=json_out,
                                  thinking=show_thought, drafts=drafts)
                except BaseException:
                    session.finish_reply(g, interrupted=True)
                    raise
                session.finish_reply(g)

            from chatcli.tools.loop import loop

            gen, calls = loop(ui, session, gen, toolset.tools, toolset.consent(ui),
                              flags.max_calls, flags.timeout, answer)
        if gen.budget_hit:
            ui.notify(f"thinking reached its budget of {settings.common.thinking_budget} "
                      "tokens: chatcli closed it, and the model answered")
        elif hide_thinking and gen.thinking_tokens and not json_out:
            ui.aside(f"(thought for {gen.thinking_tokens} tokens: --hide-thinking)")
        if drafts and gen.stats.speculation is not None and ui.out_tty and not json_out:
            ui.aside(speculation_note(gen.stats.speculation))
        note = stopped_note(gen.stats, settings.common.max_new_tokens, session.room(), "-n")
        if note and not json_out and not (constraint is not None
                                          and gen.constraint_satisfied is False):
            ui.aside(note)  # on a terminal: the answer ends mid-sentence for a reason
    finally:
        recorder.close()  # what could not be saved goes to a recovery file
    spans = None
    if explain_context:
        packed = session.last_packed
        assert packed is not None
        with ui.busy("Measuring attention per turn (one extra forward pass)"):
            spans = backend.attention(packed, gen.token_ids, **({"raw": True} if raw else {}))
    s = gen.stats
    spec = prep.spec
    token_text = session.token_text

    if json_out:
        from chatcli.cli.records import answer_record

        ui.print_json(answer_record(
            gen, alias=spec.alias, backend=backend, settings=settings, raw=raw,
            attachments=recorded_files(attached),
            alternative=(taken, original) if original is not None else None,
            constraint=None if toolset else constraint,
            events=events if session.candidates is not None else None,
            token_text=token_text, pruned=show_beams, spans=spans,
            tool_calls=[c.as_dict() for c in calls] if toolset else None,
            tool_decision=decided))
    elif session.candidates is not None:
        if decided is not None:
            from chatcli.ui.tools import decision_line

            ui.print(decision_line(decided))
        show_table(ui, events, token_text)
    elif show_beams and gen.search is not None:
        from chatcli.ui.beams import show_beams as show_beam_tree

        show_beam_tree(ui, gen.search.title, gen.search.score, gen.hypotheses, gen.pruned)
    if spans is not None and not json_out:
        show_spans(ui, spans)
    if stats:
        implementation = backend.implementation
        ui.print_err("stats: " + stats_line(spec.alias, settings, s, s.completion_tokens,
                                            implementation=implementation,
                                            thinking_tokens=gen.thinking_tokens))
    from chatcli.autocompile import after_answer

    after_answer(backend)  # the compiled step, built in the background if it is missing
    if no_alt is not None:
        raise no_alt
    if constraint is not None and toolset is None and gen.constraint_satisfied is False:
        from chatcli.constraints.spec import incomplete

        raise ChatcliError(*incomplete(constraint, s.finish_reason, s.completion_tokens))


def recorded_files(attached: list[Any]) -> list[dict[str, Any]] | None:
    """How --json and the history describe the attached files (None: none)."""
    if not attached:
        return None
    from chatcli.attachments import describe

    return describe(attached)


def _no_alternative(value: str | None, alt: tuple[int, int], answer: Any,
                    exc: ChatcliError) -> ChatcliError:
    """Why `--alt` found no alternative of `answer` (which is then shown and saved)."""
    step, n = alt[0], len(answer.token_ids)
    if step > n:
        return UsageError(f"--alt {value}: the answer ended after {n} token"
                          f"{'' if n == 1 else 's'}, before step {step}; it is shown and "
                          "saved as it is", f"choose a STEP in 1..{n}" if n else
                          "ask something the model answers at more length")
    return ChatcliError(f"--alt {value}: {exc.message}; the answer is shown and saved as it is",
                        exc.hint, exit_code=exc.exit_code)
