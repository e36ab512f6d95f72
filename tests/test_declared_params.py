"""Each decoding parameter is declared once, and strategies declare what they can do.

The command-line options of ask, chat and compare, their help, the range checks and
the strategy chosen by a generation_config.json all come from `param(...)` and
`Capabilities` declarations; a new declaration is enough to get them, and a strategy
is never recognised by its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import typer
from typer.testing import CliRunner

from chatcli.cli import options
from chatcli.cli.app import app
from chatcli.cli.ask import refuse_views
from chatcli.decoding.base import (
    Capabilities,
    Declared,
    NoParams,
    StrategyParams,
    TokenStep,
    Valid,
    at_least,
    declared,
    interval,
    param,
)
from chatcli.decoding.registry import StrategyRegistry, register_builtins, strategy_registry
from chatcli.decoding.settings import (
    CommonParams,
    Flagged,
    command_line_parameters,
    resolve_settings,
)
from chatcli.errors import UsageError


def options_of(help_text: str) -> dict[str, str]:
    """Each option of a --help text: its flags (without the metavar) -> its help, unwrapped."""
    entries: list[list[str]] = []
    for line in help_text.splitlines():
        if line.startswith("  -"):
            flags, _, rest = line.strip().partition("  ")
            entries.append([flags, rest.strip()])
        elif entries and line.startswith("     ") and line.strip():  # a wrapped help line
            entries[-1][1] = f"{entries[-1][1]} {line.strip()}".strip()
    out = {}
    for flags, text in entries:
        names = [w.rstrip(",") for w in flags.split() if w.startswith("-")]
        if names:
            out[", ".join(names)] = text
    return out


def _option_lines(command: str) -> dict[str, str]:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    return options_of(result.output)


# -- the options come from the declarations ---------------------------------------------------
def test_every_flagged_parameter_is_an_option_of_ask_and_chat() -> None:
    flagged = command_line_parameters()
    assert [f.param.name for f in flagged] == [
        "max_new_tokens", "seed", "stop", "repetition_penalty", "frequency_penalty",
        "presence_penalty", "no_repeat_ngram_size", "thinking_budget", "speculate", "temperature",
        "top_k",
        "top_p", "min_p", "typical_p", "num_beams", "length_penalty"]
    for command in ("ask", "chat"):
        lines = _option_lines(command)
        for f in flagged:
            names = ", ".join([*([f.param.short] if f.param.short else []), f.param.flag])
            assert names in lines, (command, names)
            assert lines[names].startswith(
                f"{', '.join(f.owners) or 'Any strategy'}: {f.param.help}.")
    assert _option_lines("ask")["-t, --temperature"] == (
        "sample: divide logits by this; < 1 sharper, > 1 flatter. A number > 0; default: the "
        "alias's, else 1.0.")
    assert _option_lines("ask")["--stop"] == (
        "Any strategy: stop when this text appears (not printed). A non-empty string; "
        "repeatable.")


def test_compare_gets_the_common_flags_only() -> None:
    lines = _option_lines("compare")
    common = [f for f in command_line_parameters() if not f.owners]
    for f in common:
        assert ", ".join([*([f.param.short] if f.param.short else []), f.param.flag]) in lines
    assert "-t, --temperature" not in lines and "-o, --option" not in lines
    assert lines["-S, --strategy"].startswith("A strategy to compare")


def test_a_new_declaration_is_a_new_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """What adding `xtc_probability: float = param(0.0, ..., "--xtc-probability",
    valid=interval(0, 1))` to a built-in strategy would give every command."""
    new = Declared("xtc_probability", float, 0.0, "chance of excluding the top choices",
                   "--xtc-probability", None, interval(0, 1), 0.0, "xtc_probability")
    flagged = [*command_line_parameters(), Flagged(new, ("sample",))]
    monkeypatch.setattr(options, "_flagged", lambda: flagged)
    seen: dict[str, Any] = {}
    demo = typer.Typer(rich_markup_mode=None, add_completion=False)

    @demo.command()
    @options.decoding_options()
    def run(ctx: typer.Context, decoding: dict[str, Any] | None = None) -> None:
        seen.update(decoding=decoding, request=options.decoding_request(dict(ctx.params)))

    result = CliRunner().invoke(demo, ["--help"])
    assert options_of(result.output)["--xtc-probability"] == (
        "sample: chance of excluding the top choices. In [0, 1]; default: the alias's, "
        "else 0.0.")
    result = CliRunner().invoke(demo, ["-S", "sample", "--xtc-probability", "0.5", "--stop",
                                       "a", "--stop", "b", "-o", "k=v"])
    assert result.exit_code == 0, result.output
    assert seen["decoding"]["xtc_probability"] == 0.5 and seen["decoding"]["top_k"] is None
    assert seen["request"] == ("sample", {"xtc_probability": 0.5, "stop": ("a", "b")},
                               {"k": "v"})


def test_decoding_options_needs_a_decoding_parameter() -> None:
    with pytest.raises(TypeError, match="has no `decoding` parameter"):
        options.decoding_options()(lambda ctx: None)


# -- declared ranges ------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoParams(StrategyParams):
    level: int = param(1, "how much", valid=at_least(1))
    words: tuple[str, ...] = param((), "some words", valid=Valid("a short word",
                                                                    lambda w: len(w) < 4))
    limit: int | None = param(None, "an optional limit", valid=at_least(0))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"level": 0}, "-o level must be an integer >= 1 (got 0)"),
    ({"words": ("ok", "toolong")}, "-o words must be a short word (got 'toolong')"),
    ({"limit": -1}, "-o limit must be an integer >= 0 (got -1)"),
])
def test_the_constructor_checks_declared_ranges(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        DemoParams(**kwargs)
    assert err.value.message == message
    assert DemoParams(words=("a", "bc"), limit=None).words == ("a", "bc")


def test_declared_reads_every_field_of_a_declaration() -> None:
    top_p = next(d for d in declared(strategy_registry().get("sample").Params)
                 if d.name == "top_p")
    assert (top_p.flag, top_p.short, top_p.valid.text if top_p.valid else None, top_p.off,
            top_p.request, top_p.spelled) == ("--top-p", None, "in (0, 1]", 1.0, "top_p",
                                              "--top-p")
    no_repeat = next(d for d in declared(CommonParams) if d.name == "no_repeat_ngram_size")
    assert (no_repeat.request, no_repeat.off) == (None, 0)
    early = next(d for d in declared(strategy_registry().get("beam").Params)
                 if d.name == "early_stopping")
    assert (early.flag, early.spelled) == (None, "-o early_stopping")


# -- what the registry accepts ---------------------------------------------------------------
class _Base:
    Params: ClassVar[type] = NoParams

    def decode(self, lm: Any, prompt_ids: list[int], params: Any, ctx: Any
               ) -> Iterator[TokenStep]:
        return iter(())


def _registry() -> StrategyRegistry:
    reg = StrategyRegistry()
    register_builtins(reg.register)
    return reg


def test_a_plugin_may_not_declare_a_flag_of_its_own() -> None:
    @dataclass(frozen=True)
    class Flagged_(StrategyParams):
        depth: int = param(2, "how deep", "--depth")

    class Deep(_Base):
        name = "deep"
        Params = Flagged_

    with pytest.raises(ValueError) as err:
        _registry().register(Deep, "plugin deep")
    assert str(err.value) == (
        "strategy 'deep': parameter 'depth' declares the flag --depth, but only chatcli's own "
        "parameters have flags (it is set with -o depth=VALUE): remove flag=")
    _registry().register(Deep)  # a built-in may


def test_declared_ranges_need_strategy_params_and_capabilities_their_type() -> None:
    @dataclass(frozen=True)
    class Plain:
        level: int = param(1, "how much", valid=at_least(1))

    class Unchecked(_Base):
        name = "unchecked"
        Params = Plain

    with pytest.raises(ValueError) as err:
        _registry().register(Unchecked, "plugin x")
    assert str(err.value) == ("strategy 'unchecked' declares valid= ranges: derive its Params "
                              "from chatcli.decoding.base.StrategyParams")

    class Odd(_Base):
        name = "odd"
        capabilities: ClassVar[Any] = {"streams": True}

    with pytest.raises(ValueError) as err:
        _registry().register(Odd, "plugin x")
    assert str(err.value) == ("strategy 'odd': `capabilities` must be a "
                              "chatcli.decoding.base.Capabilities")


# -- capabilities, not names ------------------------------------------------------------------
class Contrastive(_Base):
    """A plugin that says nothing: token by token, distributions, local only."""

    name = "contrastive"


class BestOfN(_Base):
    """A plugin that returns several hypotheses and has no per-token distributions."""

    name = "best_of_n"
    capabilities = Capabilities(streams=False, distributions=False, hypotheses=True,
                                implied_by=lambda config: "best_of" in config)


def _with_plugins() -> StrategyRegistry:
    reg = _registry()
    reg.register(Contrastive, "plugin c")
    reg.register(BestOfN, "plugin b")
    return reg


def test_capability_queries() -> None:
    reg = _with_plugins()
    assert reg.with_capability(lambda c: c.hypotheses) == ["beam", "best_of_n"]
    assert reg.with_capability(lambda c: c.distributions) == ["greedy", "sample", "contrastive"]
    assert reg.with_capability(lambda c: c.remote is not None) == ["greedy", "sample", "beam"]
    assert reg.capabilities("contrastive") == Capabilities()


@pytest.mark.parametrize(("strategy", "candidates", "beams", "message", "hint"), [
    ("beam", 3, False, "--show-candidates shows token-by-token choices; beam search scores "
     "whole sequences", "use --show-beams with --strategy beam"),
    ("best_of_n", 3, False, "--show-candidates shows token-by-token choices; strategy "
     "'best_of_n' has no per-token distributions", "use --show-beams with --strategy "
     "best_of_n"),
    ("contrastive", None, True, "--show-beams needs --strategy beam or best_of_n (the "
     "strategy is contrastive)", "add -S beam"),
])
def test_views_are_refused_by_capability(strategy: str, candidates: int | None, beams: bool,
                                         message: str, hint: str) -> None:
    reg = _with_plugins()
    settings = resolve_settings(reg, strategy=strategy)
    with pytest.raises(UsageError) as err:
        refuse_views(reg, settings, candidates, beams)
    assert (err.value.message, err.value.hint) == (message, hint)
    refuse_views(reg, resolve_settings(reg, strategy="contrastive"), 3, False)
    refuse_views(reg, resolve_settings(reg, strategy="best_of_n"), None, True)


def test_generation_config_implies_a_strategy_by_capability() -> None:
    reg = _with_plugins()
    assert resolve_settings(reg, generation_config={"best_of": 3}).strategy == "best_of_n"
    assert resolve_settings(reg, generation_config={"num_beams": 2}).strategy == "beam"
    assert resolve_settings(reg, generation_config={"do_sample": True}).strategy == "sample"
    assert resolve_settings(reg, generation_config={"do_sample": False, "num_beams": 1,
                                                    "max_length": 9}).strategy == "greedy"
    # Every generation_config key that names a parameter is a value; others are ignored.
    s = resolve_settings(reg, generation_config={"num_beams": 3, "length_penalty": 0.5,
                                                 "max_new_tokens": 9, "max_length": 99})
    assert (s.params.num_beams, s.params.length_penalty, s.common.max_new_tokens) == (3, 0.5, 9)
    assert s.origins["length_penalty"] == "generation_config.json"


def test_settings_carry_the_strategy_capabilities() -> None:
    reg = _with_plugins()
    for name in reg.names():
        assert resolve_settings(reg, strategy=name).capabilities == reg.capabilities(name)


def test_a_strategy_that_does_not_stream_waits_behind_a_spinner() -> None:
    from contextlib import contextmanager

    from chatcli.cli.ask import waited

    log: list[str] = []

    class TerminalUI:
        err_tty = True

        @contextmanager
        def busy(self, message: str) -> Iterator[None]:
            log.append(f"spinner: {message}")
            yield
            log.append("spinner off")

    def events() -> Iterator[str]:
        for e in ("a", "b"):
            log.append(f"computed {e}")
            yield e

    for e in waited(TerminalUI(), events(), "beam: the answer comes when the search ends"):
        log.append(f"shown {e}")
    assert log == ["spinner: beam: the answer comes when the search ends", "computed a",
                   "spinner off", "shown a", "computed b", "shown b"]
    TerminalUI.err_tty = False  # piped: no spinner, nothing printed
    log.clear()
    assert list(waited(TerminalUI(), events(), "x")) == ["a", "b"]
    assert log == ["computed a", "computed b"]
