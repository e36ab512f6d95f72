"""Bad input in decoding settings, models.toml and chat commands: one line, never a crash.

Every decoding parameter of every built-in strategy goes through each way a user can
write it (`/set`, `-o`, `compare -S`, `[models.X.defaults]`): a bad value is one error
line that names the parameter and the fix, a good one arrives as the declared type.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from chatcli.chat.commands import ChatContext, dispatch
from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.cli.compare import spelling as compare_spelling
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import CommonParams, resolve_settings
from chatcli.errors import ChatcliError, ConfigError, UsageError
from chatcli.loader import load_model
from chatcli.progress import SilentReporter
from chatcli.registry import ModelSpec, parse_models_file
from chatcli.runtime import Runtime
from chatcli.ui.console import UI
from conftest import Tiny, run_cli

REG = strategy_registry()
# (strategy that owns it, or None for a common parameter; parameter name)
PARAMS = [(None, f.name) for f in dataclasses.fields(CommonParams)] + [
    (s, f.name) for s in REG.names() for f in dataclasses.fields(REG.get(s).Params)
]
IDS = [f"{s or 'common'}.{n}" for s, n in PARAMS]
# What each parameter is, as error messages say it: (type, placeholder, example).
TYPES = {
    "max_new_tokens": ("an integer", "N", "512"),
    "seed": ("an integer", "N", "42"),
    "stop": ("a string or a list of strings", "TEXT", '["###"]'),
    "repetition_penalty": ("a number", "X", "1.0"),
    "frequency_penalty": ("a number", "X", "0.0"),
    "presence_penalty": ("a number", "X", "0.0"),
    "no_repeat_ngram_size": ("an integer", "N", "0"),
    "thinking_budget": ("an integer", "N", "42"),
    "speculate": ("a string", "TEXT", '"ngram"'),
    "temperature": ("a number", "X", "1.0"),
    "top_k": ("an integer", "N", "0"),
    "top_p": ("a number", "X", "1.0"),
    "min_p": ("a number", "X", "0.0"),
    "typical_p": ("a number", "X", "1.0"),
    "num_beams": ("an integer", "N", "4"),
    "length_penalty": ("a number", "X", "1.0"),
    "early_stopping": ("true, false or a string", "true|false|WORD", "false"),
    "num_return_sequences": ("an integer", "N", "1"),
}
# A good typed-in value and what it must become (ints typed for numbers become floats).
GOOD = {
    "max_new_tokens": ("3", 3), "seed": ("5", 5), "stop": ("###", ("###",)),
    "repetition_penalty": ("2", 2.0), "frequency_penalty": ("-1", -1.0),
    "presence_penalty": ("0.5", 0.5), "no_repeat_ngram_size": ("3", 3),
    "thinking_budget": ("64", 64), "speculate": ("ngram:4", "ngram:4"),
    "temperature": ("2", 2.0), "top_k": ("3", 3), "top_p": ("0.5", 0.5), "min_p": ("0", 0.0),
    "typical_p": ("1", 1.0), "num_beams": ("3", 3), "length_penalty": ("-1", -1.0),
    "early_stopping": ("never", "never"), "num_return_sequences": ("2", 2),
}
# A typed-in value that is not of the parameter's type (stop and early_stopping take any text).
BAD = {name: ("2.5" if kind == "an integer" else "hot") for name, (kind, _, _) in TYPES.items()
       if kind in ("an integer", "a number")}


def test_the_tables_cover_every_parameter() -> None:
    """A new parameter must be added above, so that its types are checked too."""
    assert sorted({n for _, n in PARAMS}) == sorted(TYPES) == sorted(GOOD)


def value_of(settings: Any, name: str) -> Any:
    return getattr(settings.common if name in TYPES and hasattr(settings.common, name)
                   else settings.params, name)


def check_typed(value: Any, expected: Any) -> None:
    assert value == expected and type(value) is type(expected)


# -- /set in chat -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_model: Tiny) -> Any:
    spec = ModelSpec(alias="tiny", source="path", path=tiny_model.folder, dtype="float32")
    return load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())


def chat_context(loaded: Any, strategy: str | None) -> ChatContext:
    session = ChatSession(loaded, REG, DecodingRequest(strategy, {}, {}))
    return ChatContext(session, UI(), answer=lambda: None, load_model=lambda _: loaded)


@pytest.mark.parametrize(("strategy", "name"), PARAMS, ids=IDS)
def test_set_types_every_parameter(loaded: Any, capsys: pytest.CaptureFixture[str],
                                   strategy: str | None, name: str) -> None:
    ctx = chat_context(loaded, strategy)
    kind, placeholder, example = TYPES[name]
    if name in BAD:
        bad = BAD[name]
        assert dispatch(f"/set {name} {bad}", ctx) is False
        example = example.strip('"[]')
        assert capsys.readouterr().err == (
            f"error: /set {name} {bad}: {name} must be {kind}; "
            f"hint: write /set {name} {placeholder}, e.g. /set {name} {example}\n"
        )
    text, expected = GOOD[name]
    assert dispatch(f"/set {name} {text}", ctx) is False
    assert capsys.readouterr().err == f"chatcli: {name} = {expected}\n"
    check_typed(value_of(ctx.session.settings, name), expected)


def test_set_seed_in_a_piped_chat_is_used(cli) -> None:
    result = run_cli(["chat", "-n", "3"], input="/set seed 5\n/set seed x\nHi\n/stats\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "chatcli: seed = 5\n"
        "error: /set seed x: seed must be an integer; hint: write /set seed N, e.g. /set seed 42\n"
    )
    assert " seed=5 " in result.stdout


def test_set_max_new_tokens_names_set_not_o(cli) -> None:
    result = run_cli(["chat", "-n", "3"], input="/set max_new_tokens abc\n/set max_new_tokens 0\n"
                     "/strategy beam\n/set num_return_sequences 9\n/set seed none\n")
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "error: /set max_new_tokens abc: max_new_tokens must be an integer; "
        "hint: write /set max_new_tokens N, e.g. /set max_new_tokens 512",
        "error: /set max_new_tokens 0: max_new_tokens must be an integer >= 1; "
        "hint: 'chatcli strategies' lists every parameter",
        "chatcli: strategy = beam",
        "error: /set num_return_sequences 9: num_return_sequences must be in [1, num_beams=4]; "
        "hint: 'chatcli strategies' lists every parameter",
        "chatcli: seed = none",
    ]


# -- -o key=value and compare -S name:key=value --------------------------------------------
@pytest.mark.parametrize(("strategy", "name"), PARAMS, ids=IDS)
def test_option_types_every_parameter(strategy: str | None, name: str) -> None:
    kind, placeholder, example = TYPES[name]
    example = example.strip('"[]')
    text, expected = GOOD[name]
    if strategy is None:  # common parameters have their own flags
        with pytest.raises(UsageError) as err:
            resolve_settings(REG, options={name: text})
        assert err.value.message.startswith(f"-o {name}={text}: use the flag --")
        return
    if name in BAD:
        with pytest.raises(UsageError) as err:
            resolve_settings(REG, strategy=strategy, options={name: BAD[name]})
        assert (err.value.message, err.value.hint) == (
            f"-o {name}={BAD[name]}: {name} must be {kind}",
            f"write -o {name}={placeholder}, e.g. -o {name}={example}",
        )
    settings = resolve_settings(REG, strategy=strategy, options={name: text})
    check_typed(value_of(settings, name), expected)


@pytest.mark.parametrize(("strategy", "name"), PARAMS, ids=IDS)
def test_compare_spec_types_every_parameter(strategy: str | None, name: str) -> None:
    strategy = strategy or "greedy"
    kind, placeholder, example = TYPES[name]
    example = example.strip('"[]')
    spell = compare_spelling(strategy)
    text, expected = GOOD[name]
    if name in BAD:
        with pytest.raises(UsageError) as err:
            resolve_settings(REG, strategy=strategy, options={name: BAD[name]}, spelling=spell,
                             common_options=True)
        w = f"-S {strategy}:{name}="
        assert (err.value.message, err.value.hint) == (
            f"{w}{BAD[name]}: {name} must be {kind}", f"write {w}{placeholder}, e.g. {w}{example}")
    settings = resolve_settings(REG, strategy=strategy, options={name: text}, spelling=spell,
                                common_options=True)
    check_typed(value_of(settings, name), expected)


@pytest.mark.parametrize(
    ("args", "line", "code"),
    [
        (["ask", "-S", "beam", "-o", "num_beams=x"],
         "error: -o num_beams=x: num_beams must be an integer; "
         "hint: write -o num_beams=N, e.g. -o num_beams=4", 2),
        (["compare", "-S", "beam:num_beams=x"],
         "error: -S beam:num_beams=x: num_beams must be an integer; "
         "hint: write -S beam:num_beams=N, e.g. -S beam:num_beams=4", 2),
        (["compare", "-S", "greedy", "-S", "beam:num_beams=1"],
         "error: -S beam:num_beams=1: num_beams must be an integer >= 2; "
         "hint: 'chatcli strategies' lists every parameter", 2),
        (["compare", "-S", "sample:seed=x"],
         "error: -S sample:seed=x: seed must be an integer; "
         "hint: write -S sample:seed=N, e.g. -S sample:seed=42", 2),
        (["compare", "-n", "100000000"],
         "error: max_new_tokens (100000000) leaves no room in the context window of 256 "
         "tokens; hint: lower -n to at most 242 (in chat: /set max_new_tokens N)", 1),
    ],
)
def test_command_line_values_are_one_line(cli, args: list[str], line: str, code: int) -> None:
    result = run_cli([*args, "Hello"])
    assert (result.exit_code, result.stdout, result.stderr) == (code, "", line + "\n")


def test_compare_spec_sets_a_common_parameter(cli) -> None:
    result = run_cli(["compare", "--json", "-n", "4", "-S", "greedy",
                      "-S", "greedy:repetition_penalty=1.5,max_new_tokens=2", "Hello"])
    assert result.exit_code == 0, result.stderr
    import json

    plain, penalised = json.loads(result.stdout)["results"]
    assert plain["decoding"]["repetition_penalty"] == 1.0
    assert penalised["decoding"]["repetition_penalty"] == 1.5
    assert penalised["completion_tokens"] <= 2 < plain["completion_tokens"]


def test_generation_config_values_are_typed_and_blamed_on_the_file() -> None:
    gc = {"do_sample": True, "temperature": "0.7", "top_k": 50}
    with pytest.raises(ChatcliError) as err:
        resolve_settings(REG, generation_config=gc)
    assert (err.value.message, err.value.hint) == (
        "generation_config.json: temperature must be a number, got '0.7'",
        "fix or remove 'temperature' there, or override it with its flag")
    settings = resolve_settings(REG, flags={"temperature": 0.7}, generation_config=gc)
    assert (settings.params.temperature, settings.params.top_k) == (0.7, 50)
    with pytest.raises(ChatcliError) as err:
        resolve_settings(REG, generation_config={"do_sample": True, "temperature": 0})
    assert err.value.message == ("the model's generation_config.json sets temperature = 0.0, "
                                 "but it must be a number > 0")
    check_typed(resolve_settings(REG, generation_config={"do_sample": True, "temperature": 1})
                .params.temperature, 1.0)


# -- [models.X.defaults] ---------------------------------------------------------------------
# Values of the wrong type as TOML writes them, and how the error quotes them.
BAD_TOML = {name: ('"many"', "'many'") if kind == "an integer" else ('"hot"', "'hot'")
            for name, (kind, _, _) in TYPES.items()}
BAD_TOML.update({"seed": ('"x"', "'x'"), "stop": ("[1, 2]", "[1, 2]"),
                 "early_stopping": ("3", "3"), "speculate": ("4", "4")})
GOOD_TOML = {name: text if name != "stop" else '["a", "b"]' for name, (text, _) in GOOD.items()}
GOOD_TOML["early_stopping"] = '"never"'
GOOD_TOML["speculate"] = '"ngram:4"'
GOOD_TYPED = {name: value for name, (_, value) in GOOD.items()} | {"stop": ("a", "b")}


def models_toml(tmp_path: Path, defaults: str, folder: Path = Path("/nowhere")) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'default = "a"\n[models.a]\nsource = "path"\npath = "{folder}"\n'
                    f"[models.a.defaults]\n{defaults}\n")
    return path


@pytest.mark.parametrize(("strategy", "name"), PARAMS, ids=IDS)
def test_models_toml_defaults_are_typed(tmp_path: Path, strategy: str | None, name: str) -> None:
    kind, _, example = TYPES[name]
    toml, shown = BAD_TOML[name]
    path = models_toml(tmp_path, f"{name} = {toml}")
    with pytest.raises(ConfigError) as err:
        parse_models_file(path)
    assert (err.value.message, err.value.hint) == (
        f"{path}:6: [models.a] defaults.{name} must be {kind}, got {shown}",
        f"e.g. {name} = {example}",
    )
    path = models_toml(tmp_path, f"{name} = {GOOD_TOML[name]}")
    models, _ = parse_models_file(path)
    check_typed(models["a"].defaults[name], GOOD_TYPED[name])


@pytest.mark.parametrize(
    ("defaults", "message", "hint"),
    [
        ("max_new_tokens = true", "defaults.max_new_tokens must be an integer, got True",
         "e.g. max_new_tokens = 512"),
        ("num_beams = 2.5", "defaults.num_beams must be an integer, got 2.5",
         "e.g. num_beams = 4"),
        ("temperature = -1", "defaults.temperature must be a number > 0 (got -1.0)",
         "'chatcli strategies' lists every parameter"),
        ('stop = [""]', "defaults.stop must be a non-empty string (got '')",
         "'chatcli strategies' lists every parameter"),
        ("num_return_sequences = 5", "defaults.num_return_sequences must be in [1, "
         "num_beams=4] (got 5)", "'chatcli strategies' lists every parameter"),
        ('strategy = "sampel"', "defaults.strategy: unknown strategy 'sampel' (known: greedy, "
         "sample, beam)", "did you mean 'sample'? run 'chatcli strategies' to see them all"),
        ("strategy = 1", "defaults.strategy must be a string, got 1", 'e.g. strategy = "sample"'),
        ("top_q = 0.5", "defaults has unknown parameter 'top_q'", "did you mean 'top_p'?"),
    ],
)
def test_models_toml_defaults_ranges_and_names(tmp_path: Path, defaults: str, message: str,
                                               hint: str) -> None:
    path = models_toml(tmp_path, defaults)
    with pytest.raises(ConfigError) as err:
        parse_models_file(path)
    assert (err.value.message, err.value.hint) == (f"{path}:6: [models.a] {message}", hint)


def test_models_toml_defaults_that_fit_together_pass(tmp_path: Path) -> None:
    path = models_toml(tmp_path, 'num_beams = 8\nnum_return_sequences = 5\nstop = "###"\n'
                       "temperature = 1\nstrategy = \"beam\"")
    defaults = parse_models_file(path)[0]["a"].defaults
    assert defaults == {"num_beams": 8, "num_return_sequences": 5, "stop": ("###",),
                        "temperature": 1.0, "strategy": "beam"}


@pytest.mark.parametrize("command", [["ask", "hi"], ["chat"], ["compare", "hi"],
                                     ["models", "show", "tiny"]])
@pytest.mark.parametrize(("defaults", "message"), [
    ('temperature = "hot"', "defaults.temperature must be a number, got 'hot'; "
     "hint: e.g. temperature = 1.0"),
    ('seed = "x"', "defaults.seed must be an integer, got 'x'; hint: e.g. seed = 42"),
    ('max_new_tokens = "many"', "defaults.max_new_tokens must be an integer, got 'many'; "
     "hint: e.g. max_new_tokens = 512"),
    ("stop = [1, 2]", "defaults.stop must be a string or a list of strings, got [1, 2]; "
     'hint: e.g. stop = ["###"]'),
])
def test_bad_defaults_are_one_line_in_every_command(cli, home: Path, command: list[str],
                                                     defaults: str, message: str) -> None:
    path = home / "models.toml"
    lines = path.read_text().count("\n")
    path.write_text(path.read_text() + f"[models.tiny.defaults]\n{defaults}\n")
    result = run_cli(command, input="Hi\n")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: {path}:{lines + 2}: [models.tiny] {message}\n"


# -- models.toml: encoding and type names ---------------------------------------------------
def test_latin1_models_toml_is_an_encoding_error(cli, home: Path) -> None:
    path = home / "models.toml"
    path.write_bytes(path.read_bytes() + 'description2 = "café"\n'.encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")
    line = path.read_bytes()[:offset].count(b"\n") + 1
    result = run_cli(["models", "list"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {path}:{line}: not UTF-8: byte 0xe9 at offset {offset} (invalid continuation "
        "byte); hint: save the file as UTF-8 (TOML files are UTF-8)\n"
    )


@pytest.mark.parametrize(("line", "message"), [
    ('context_window = "big"', "'context_window' must be an integer, got 'big'"),
    ("context_window = true", "'context_window' must be an integer, got True"),
    ("description = 3", "'description' must be a string, got 3"),
    ("trust_remote_code = 1", "'trust_remote_code' must be true or false, got 1"),
    ("defaults = 3", "'defaults' must be a table, got 3"),
])
def test_models_toml_type_names_have_their_article(tmp_path: Path, line: str,
                                                   message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(f'[models.a]\nsource = "path"\npath = "/x"\n{line}\n')
    with pytest.raises(ConfigError) as err:
        parse_models_file(path)
    assert err.value.message == f"{path}:4: [models.a] {message}"


def test_remote_timeout_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.r]\nbackend = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
                    'model = "m"\ntimeout = "soon"\n')
    with pytest.raises(ConfigError) as err:
        parse_models_file(path)
    assert err.value.message == f"{path}:5: [models.r] 'timeout' must be a number, got 'soon'"


# -- chat commands on an empty conversation, and messages that start with "/" -------------------
def test_commands_on_an_empty_conversation_keep_the_session(cli) -> None:
    script = "/prompt\n/retry\n/context\nHi\n/undo\n/prompt\n/retry\n/context\n/clear\n" \
             "/prompt\n"
    result = run_cli(["chat", "-n", "3"], input=script)
    assert result.exit_code == 0, result.stderr
    empty = "the conversation is empty\n"
    assert result.stdout.startswith(empty * 2) and result.stdout.endswith(empty * 3)
    assert result.stdout.count(empty) == 5
    assert result.stderr.splitlines() == [
        "chatcli: nothing to retry", "chatcli: removed the last exchange (2 messages)",
        "chatcli: nothing to retry", "chatcli: conversation cleared",
    ]


def stored(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "data" / "history.db") as db:
        return db.execute("SELECT role, content FROM messages ORDER BY position").fetchall()


def test_double_slash_sends_a_message_that_starts_with_a_slash(cli, home: Path) -> None:
    result = run_cli(["chat", "-n", "3"],
                     input="/usr/bin/env is cool\n//usr/bin/env is cool\n/prompt\n/help\n")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "error: unknown command '/usr/bin/env'; hint: /help lists the commands; to send a "
        "message that starts with /, begin it with //\n"
    )
    assert "<|im_start|>user\n/usr/bin/env is cool<|im_end|>\n" in result.stdout
    assert stored(home)[0] == ("user", "/usr/bin/env is cool")
    assert result.stdout.endswith(
        "To send a message that starts with /, begin it with //: one / is dropped "
        "(//usr/bin/env is cool sends /usr/bin/env is cool).\n")


# -- piped chat: honest exit codes ------------------------------------------------------------
def test_piped_chat_exits_1_when_a_turn_failed(cli, home: Path) -> None:
    long = "word " * 80
    result = run_cli(["chat", "--no-truncate", "--context-window", "64", "-n", "8"],
                     input=f"Hi\n{long}\nHello\n")
    assert result.exit_code == 1
    err = result.stderr.splitlines()
    assert len(err) == 2 and err[0].startswith("error: the newest message needs 411 tokens ")
    assert err[1].startswith("warning: context window full: dropped the oldest 2 exchange(s)")
    assert [role for role, _ in stored(home)] == ["user", "assistant", "user", "user",
                                                  "assistant"]
    assert len(result.stdout.splitlines()) >= 2  # the turns before and after were answered


def test_piped_chat_without_failures_exits_0(cli) -> None:
    result = run_cli(["chat", "--context-window", "64", "-n", "8"], input="Hi\nHello\n")
    assert (result.exit_code, result.stderr) == (0, "")


@pytest.mark.parametrize(("args", "line"), [
    (["--context-window", "16"],
     "error: no message can be answered: the context window of 16 tokens holds an empty "
     "message with the chat template (11 tokens) but not 512 new tokens; "
     "hint: lower -n (--max-new-tokens) to at most 5"),
    (["--context-window", "30", "-n", "10", "-s", "You are a very helpful assistant who answers"],
     "error: no message can be answered: an empty message with the chat template and system "
     "prompt needs 41 tokens, more than the context window of 30 tokens; hint: raise "
     "--context-window, shorten the system prompt (-s) or choose a model with a larger "
     "context window (-m)"),
])
def test_chat_refuses_up_front_when_nothing_can_be_answered(cli, home: Path, args: list[str],
                                                            line: str) -> None:
    result = run_cli(["chat", *args], input="Hi\nHello\n")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", line + "\n")
    assert not (home / "data" / "history.db").exists() or stored(home) == []


def test_just_enough_room_is_not_refused(cli) -> None:
    result = run_cli(["chat", "--context-window", "16", "-n", "5"], input="\n")
    assert (result.exit_code, result.stderr) == (0, "")


@pytest.mark.skipif(os.name != "posix", reason="needs a pty")
def test_interactive_chat_goes_on_after_a_failed_turn(home: Path) -> None:
    from test_chat import spawn

    child = spawn(home, "--no-truncate", "--context-window", "64", "-n", "4")
    child.expect("›")
    child.sendline("word " * 80)
    child.expect("error: the newest message needs")
    child.expect("›")
    child.sendline("/exit")
    child.expect(__import__("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0
