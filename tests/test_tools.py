"""Tools: Python functions a model calls while it answers (`ask --tool`).

Schemas from signatures; every flag and loading fault in one line; on the tiny
random-weight model, a constrained call (every call names a real tool with arguments
that validate, whatever the weights say), consent (nothing runs unasked when stdin is
not a terminal; a question on a terminal), a tool's exception, time-out and huge
output given back to the model, the history of each step; the real default model
calling a calculator (slow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import pytest

from chatcli.tools.calls import constraint, read_call, response
from chatcli.tools.functions import ToolError, describe
from chatcli.tools.runner import Consent, run
from conftest import run_cli

TOOLS = '''
import time
from typing import Literal

def weather(city: Literal["Paris", "Rome"]) -> str:
    """The weather in a city today.

    More text that is not the description."""
    open(__file__ + ".ran", "a").write(city + "\\n")
    return {"Paris": "rain", "Rome": "sun"}[city]

def boom(loud: bool) -> str:
    """Fails."""
    raise ValueError("boom")

def slow(fast: bool) -> str:
    """Takes its time."""
    time.sleep(3)
    return "late"

def huge(big: bool) -> str:
    """Says a lot."""
    print("printed, not answered")
    return "x" * 20000

def _private():
    pass
'''


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a window that holds the tools' instructions (2,048 tokens)."""
    from conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide"), seed=2, positions=2048)


@pytest.fixture
def home(home: Path, wide_model: Path) -> Path:
    """The test home, its default alias the wide model."""
    toml = home / "models.toml"
    toml.write_text(toml.read_text().replace('default = "tiny"', 'default = "wide"')
                    + f'\n[models.wide]\nsource = "path"\npath = "{wide_model}"\n'
                    'dtype = "float32"\n')
    return home


@pytest.fixture
def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.py"
    path.write_text(TOOLS)
    return path


def ask_json(*args: str, input: str | None = None) -> dict[str, Any]:
    result = run_cli(["ask", "--json", "--no-server", *args], input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# -- schemas ---------------------------------------------------------------------------------
def test_a_signature_becomes_a_schema() -> None:
    def f(a: int, b: float, c: str, d: bool, e: list[int], g: dict, h: Literal["x", "y"],
          i: int | None = None, j=3) -> None:
        """Does f.

        Details."""

    tool = describe(f, "t.py")
    assert (tool.name, tool.description) == ("f", "Does f.")
    assert tool.parameters == {
        "type": "object", "additionalProperties": False,
        "properties": {"a": {"type": "integer"}, "b": {"type": "number"},
                       "c": {"type": "string"}, "d": {"type": "boolean"},
                       "e": {"type": "array", "items": {"type": "integer"}},
                       "g": {"type": "object"}, "h": {"enum": ["x", "y"]},
                       "i": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "j": {}},
        "required": ["a", "b", "c", "d", "e", "g", "h"]}
    with pytest.raises(ToolError) as err:
        describe(lambda z: z, "t.py")  # no annotation: fine
        def bad(x: set[int]) -> None: ...
        describe(bad, "t.py")
    assert err.value.message == "t.py: bad(x): the annotation set[int] has no JSON form"


def test_a_call_is_read_back_and_its_result_given_back() -> None:
    assert read_call('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>') == (
        "f", {"a": 1})
    assert read_call("Just words.") is None
    assert read_call('<tool_call>\n{"name": "f"}\n</tool_call>') is None
    assert response("f", "5", None) == '<tool_response>\n{"name": "f", "result": "5"}\n' \
                                       "</tool_response>"


def test_the_runner_turns_every_failure_into_a_result(tools_file: Path) -> None:
    from chatcli.tools.functions import load_file

    tools = {t.name: t for t in load_file(str(tools_file))}
    assert sorted(tools) == ["boom", "huge", "slow", "weather"]
    assert run(tools["weather"], {"city": "Rome"}, 5, 100).result == "sun"
    assert run(tools["boom"], {"loud": True}, 5, 100).error == "ValueError: boom"
    assert run(tools["slow"], {"fast": False}, 0.2, 100).error == "timed out after 0.2 s"
    cut = run(tools["huge"], {"big": True}, 5, 100).result
    assert cut == "x" * 100 + " [cut: 20000 characters, the first 100 kept]"
    assert run(tools["weather"], {"town": "Rome"}, 5, 100).error.startswith("TypeError: ")
    asked: list[str] = []
    consent = Consent(ask=lambda name, args: asked.append(name) or "a")
    assert consent("weather", {}) and consent("weather", {}) and asked == ["weather"]
    assert not Consent()("weather", {}) and Consent(allow_all=True)("weather", {})


# -- loading and flags: one line each ----------------------------------------------------------
@pytest.mark.parametrize(("args", "error"), [
    (["--tool", "missing.py"], "error: --tool missing.py: no such file: missing.py; hint: give "
     "a Python file, e.g. --tool tools.py or --tool tools.py:add\n"),
    (["--tool", "TOOLS:nope"], "error: --tool TOOLS:nope: tools.py has no function 'nope'; "
     "hint: its public functions: weather, boom, slow, huge\n"),
    (["--tool-module", "no_such_module:f"], "error: --tool-module no_such_module:f: cannot "
     "import no_such_module: ModuleNotFoundError: No module named 'no_such_module'; hint: "
     "install the package, or run chatcli where it can be imported\n"),
    (["--tool", "TOOLS", "--regex", "a+"], "error: --tool shapes the answer itself (a call, or "
     "words), so it does not go with --schema, --json-object, --regex, --grammar or --choice; "
     "hint: drop one of them\n"),
    (["--tool", "TOOLS", "--raw"], "error: --tool needs the chat template: a raw completion has "
     "no system prompt to say what the tools are; hint: drop --raw\n"),
    (["--tool", "TOOLS", "--tool-choice", "always"], "error: --tool-choice must be one of auto, "
     "required, none (got 'always'); hint: e.g. --tool-choice required\n"),
    (["--tool", "TOOLS", "--max-tool-calls", "0"], "error: --max-tool-calls must be at least 1 "
     "(got 0); hint: e.g. --max-tool-calls 8\n"),
    (["--allow-tools"], "error: --allow-tools goes with --tool, --tool-module or --mcp; hint: add "
     "--tool FILE.py, or drop --allow-tools\n"),
])
def test_a_bad_tool_flag_is_one_line(home: Path, tools_file: Path, args: list[str],
                                     error: str) -> None:
    args = [str(tools_file) if a == "TOOLS" else a.replace("TOOLS", str(tools_file))
            for a in args]
    result = run_cli(["ask", "--no-server", *args, "hi"])
    assert (result.exit_code, result.stderr) == (2, error.replace("TOOLS", str(tools_file)))
    assert json.loads(run_cli(["history", "list", "--json"]).stdout) == []


def test_a_tool_file_that_does_not_run_is_one_line(home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    result = run_cli(["ask", "--no-server", "--tool", str(broken), "hi"])
    assert (result.exit_code, result.stderr) == (2, (
        f"error: --tool {broken}: {broken}:1: invalid syntax; hint: fix the file; chatcli runs "
        "it to read its functions\n"))


# -- the tiny model calls ------------------------------------------------------------------
def test_every_call_names_a_tool_with_arguments_that_validate(home: Path,
                                                              tools_file: Path) -> None:
    out = ask_json("--tool", f"{tools_file}:weather", "--tool-choice", "required",
                   "--allow-tools", "-n", "150", "Weather in Rome?")
    first = out["tool_calls"][0]
    assert first["name"] == "weather" and first["arguments"]["city"] in ("Paris", "Rome")
    assert first["allowed"] is True
    assert first["result"] == {"Paris": "rain", "Rome": "sun"}[first["arguments"]["city"]]
    assert Path(f"{tools_file}.ran").read_text().splitlines()[0] == first["arguments"]["city"]
    assert not out["text"].startswith("<tool_call>")  # the last answer is words
    saved = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    roles = [m["role"] for m in saved["messages"]]
    assert roles[:3] == ["user", "assistant", "user"]
    assert read_call(saved["messages"][1]["content"]) == (first["name"], first["arguments"])
    assert saved["messages"][2]["content"] == response("weather", first["result"], None)
    assert saved["system"] is None  # the template shows the tools; the history is yours


def test_nothing_runs_unasked_when_stdin_is_not_a_terminal(home: Path, tools_file: Path
                                                           ) -> None:
    result = run_cli(["ask", "--no-server", "--json", "--tool", f"{tools_file}:weather",
                      "--tool-choice", "required", "-n", "150", "Weather?"])
    assert result.exit_code == 0, result.stderr
    first = json.loads(result.stdout)["tool_calls"][0]
    assert (first["allowed"], first["error"]) == (False, "the user did not allow this call")
    assert not Path(f"{tools_file}.ran").exists()
    assert "chatcli: not running weather(city=" in result.stderr
    assert "tools run when you allow them (--allow-tools, or y at the question on a " \
           "terminal)\n" in result.stderr


@pytest.mark.parametrize(("name", "flags", "error"), [
    ("boom", [], "ValueError: boom"),
    ("slow", ["--tool-timeout", "0.2"], "timed out after 0.2 s"),
])
def test_a_failing_tool_is_a_result_the_model_reads(home: Path, tools_file: Path, name: str,
                                                    flags: list[str], error: str) -> None:
    result = run_cli(["ask", "--no-server", "--json", "--tool", f"{tools_file}:{name}",
                      "--tool-choice", "required", "--allow-tools", "-n", "150", *flags, "Go"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["tool_calls"][0]["error"] == error
    assert "Traceback" not in result.stderr
    assert " failed (" in result.stderr and f"): {error}\n" in result.stderr


def test_what_a_tool_prints_stays_off_the_answer(home: Path, tools_file: Path) -> None:
    result = run_cli(["ask", "--no-server", "--tool", f"{tools_file}:huge", "--tool-choice",
                      "required", "--allow-tools", "-n", "150", "Go"])
    assert result.exit_code == 0, result.stderr
    assert "printed, not answered" not in result.stdout + result.stderr
    assert "<tool_call>" not in result.stdout


def test_a_terminal_asks_before_each_call(home: Path, tools_file: Path) -> None:
    from screen import Terminal

    term = Terminal(home, ["ask", "--no-server", "--tool", f"{tools_file}:weather",
                           "--tool-choice", "required", "--max-tool-calls", "1", "-n", "150",
                           "Weather?"], columns=100)
    term.wait_for("? [y]es, [n]o, [a]lways weather:")
    assert not Path(f"{tools_file}.ran").exists()  # asked first
    term.send_line("y")
    assert term.finish() == 0
    screen = term.text()
    assert "Run weather(city=" in screen
    assert "chatcli: weather(city=" in screen and " → " in screen
    assert Path(f"{tools_file}.ran").exists()


def test_a_constraint_for_tools_compiles_for_any_choice() -> None:
    from chatcli.tools.functions import describe as d

    def f(x: int) -> int:
        """F."""
        return x

    tools = {"f": d(f, "t.py")}
    for choice in ("auto", "required", "none"):
        grammar = constraint(tools, choice)
        assert grammar.kind == "grammar" and grammar.syntax == "lark"
        assert ("%json" in grammar.text) == (choice != "none")
        assert ("TEXT" in grammar.text) == (choice != "required")


@pytest.mark.slow
def test_the_default_model_calls_a_calculator(real: Path, tmp_path: Path) -> None:
    calc = tmp_path / "calc.py"
    calc.write_text('def add(a: int, b: int) -> int:\n    """Add two whole numbers."""\n'
                    "    return a + b\n")
    out = ask_json("--tool", str(calc), "--tool-choice", "required", "--allow-tools",
                   "--max-tool-calls", "1", "-n", "150", "What is 2 + 3?")
    first = out["tool_calls"][0]
    assert first["name"] == "add" and set(first["arguments"]) == {"a", "b"}
    assert first["result"] == str(first["arguments"]["a"] + first["arguments"]["b"])
    assert os.path.exists(calc)


def test_a_served_answer_calls_tools_as_one_made_here(home: Path, tools_file: Path) -> None:
    from test_serve import start_server, stop, without_timing

    args = ["--tool", f"{tools_file}:weather", "--tool-choice", "required", "--allow-tools",
            "-n", "150", "Weather?"]
    served = start_server(home)
    try:
        result = run_cli(["ask", "--json", *args])
        assert result.exit_code == 0, result.stderr
        here = ask_json(*args)
        remote = json.loads(result.stdout)
        for out in (remote, here):
            for call in out["tool_calls"]:
                call.pop("seconds")
        assert without_timing(remote, False) == without_timing(here, False)
        assert here["tool_calls"] and "answered" in served.text()
    finally:
        stop(served)


def test_an_allowed_tool_runs_without_asking(home: Path, tools_file: Path) -> None:
    out = ask_json("--tool", f"{tools_file}:weather", "--allow-tool", "weather",
                   "--tool-choice", "required", "--max-tool-calls", "1", "-n", "150", "Weather?")
    assert out["tool_calls"][0]["allowed"] is True
    assert Path(f"{tools_file}.ran").exists()


# -- chat ------------------------------------------------------------------------------------
def test_a_piped_chat_runs_tools_only_when_allowed(home: Path, tools_file: Path) -> None:
    args = ["chat", "--no-server", "--tool", f"{tools_file}:weather", "--tool-choice",
            "required", "--max-tool-calls", "1", "-n", "150"]
    refused = run_cli(args, input="Weather?\n")
    assert refused.exit_code == 0, refused.stderr
    assert "chatcli: not running weather(city=" in refused.stderr
    assert not Path(f"{tools_file}.ran").exists()
    allowed = run_cli([*args, "--allow-tools"], input="Weather?\nAgain?\n")
    assert allowed.exit_code == 0, allowed.stderr
    assert len(Path(f"{tools_file}.ran").read_text().splitlines()) == 2  # a call per turn
    assert "<tool_call>" not in allowed.stdout


def test_ctrl_c_at_the_question_is_no_and_the_chat_goes_on(home: Path, tools_file: Path
                                                           ) -> None:
    from screen import Terminal

    term = Terminal(home, ["chat", "--no-server", "--tool", f"{tools_file}:weather",
                           "--tool-choice", "required", "--max-tool-calls", "1", "-n", "150"],
                    columns=100)
    term.wait_for("›")
    term.send_line("Weather?")
    term.wait_for("? [y]es, [n]o, [a]lways weather:")
    term.child.sendintr()
    term.wait_for("chatcli: not running weather(city=")
    term.wait_for(lambda t: t.rstrip().endswith("›"))
    term.child.sendeof()
    assert term.finish() == 0
    assert not Path(f"{tools_file}.ran").exists()


# -- MCP servers -----------------------------------------------------------------------------
MCP = Path(__file__).parent / "mcp_server.py"


def mcp_command(mode: str = "ok") -> str:
    import sys

    return f"{sys.executable} {MCP} {mode}"


def test_an_mcp_servers_tools_are_listed_called_and_closed() -> None:
    from chatcli.tools.mcp import MCPServer, close_all

    server = MCPServer(mcp_command())
    tools = {t.name: t for t in server.tools()}  # two pages
    assert sorted(tools) == ["fail_now", "shout"]
    assert tools["shout"].parameters["properties"]["text"]["enum"] == ["hi", "bye"]
    assert run(tools["shout"], {"text": "hi"}, 5, 100).result == "HI"
    assert run(tools["fail_now"], {"why": True}, 5, 100).error == "RuntimeError: it failed"
    close_all()
    assert server.proc.poll() is not None


@pytest.mark.parametrize(("mode", "error"), [
    ("die", "exited (code 3) before it answered initialize (it said: cannot open the "
            "database)"),
    ("garbage", "wrote something that is not JSON-RPC: 'Welcome to my server!'"),
])
def test_an_mcp_server_that_fails_is_one_line(home: Path, mode: str, error: str) -> None:
    result = run_cli(["ask", "--no-server", "--mcp", mcp_command(mode), "hi"])
    assert (result.exit_code, result.stderr) == (2, (
        f"error: MCP server {mcp_command(mode)!r} {error}; hint: run the command by hand to "
        "see what it does\n"))


def test_an_mcp_server_that_does_not_answer_times_out(home: Path) -> None:
    result = run_cli(["ask", "--no-server", "--tool-timeout", "0.5", "--mcp",
                      mcp_command("silent"), "hi"])
    assert result.exit_code == 2
    assert result.stderr.endswith("did not answer initialize within 0.5 s; hint: run the "
                                  "command by hand to see what it does\n")


def test_the_model_calls_an_mcp_tool(home: Path) -> None:
    out = ask_json("--mcp", mcp_command(), "--tool-choice", "required", "--allow-tools",
                   "--max-tool-calls", "1", "-n", "150", "Shout hi")
    first = out["tool_calls"][0]
    assert first["name"] in ("shout", "fail_now")
    if first["name"] == "shout":
        assert first["result"] == first["arguments"]["text"].upper()
    else:
        assert first["error"] == "RuntimeError: it failed"


def test_an_mcp_server_that_dies_mid_call_is_a_result(home: Path) -> None:
    result = run_cli(["ask", "--no-server", "--json", "--mcp", mcp_command("die-on-call"),
                      "--tool-choice", "required", "--allow-tools", "--max-tool-calls", "1",
                      "-n", "150", "Shout"])
    assert result.exit_code == 0, result.stderr
    first = json.loads(result.stdout)["tool_calls"][0]
    assert first["error"].startswith(f"MCPError: MCP server {mcp_command('die-on-call')!r} "
                                     "exited")


def test_tools_with_a_server_alias_are_refused_before_anything_starts(home: Path) -> None:
    result = run_cli(["ask", "--no-server", "-m", "local-server", "--mcp", mcp_command(), "hi"])
    assert (result.exit_code, result.stderr) == (2, (
        "error: tools run with local models for now, and 'local-server' (backend openai) is a "
        "server; hint: use a local model (-m), or drop the tool flags\n"))


# -- the model's own format ------------------------------------------------------------------
from test_thinking import CONVERSATION  # noqa: E402

from conftest import QWEN3  # noqa: E402

TOOL_LIST = [{"type": "function", "function": {
    "name": "add", "description": 'Add "two"\nnumbers, ü.',
    "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
        "required": ["a"], "additionalProperties": False}}}]


@pytest.mark.parametrize("system", [True, False])
def test_a_template_with_tools_renders_them_as_transformers_does(thinker: Path,
                                                                 system: bool) -> None:
    from transformers import AutoTokenizer

    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import render_text
    from chatcli.tools.calls import own_format, with_tools

    messages = CONVERSATION if system else CONVERSATION[1:]
    want = AutoTokenizer.from_pretrained(thinker).apply_chat_template(
        [m.as_dict() for m in messages], tools=TOOL_LIST, tokenize=False,
        add_generation_prompt=True)
    ours = ChatTokenizer.from_folder(thinker)
    assert own_format(QWEN3)
    ours.chat_template = with_tools(QWEN3, TOOL_LIST)
    assert render_text(ours, messages) == want
    assert '"name": "add"' in want and "<tools>" in want


def test_a_template_without_tools_gets_chatcli_instructions_in_its_system_message(
        tiny_model: Any) -> None:
    from transformers import AutoTokenizer

    from chatcli.conversation import Message
    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import render_text
    from chatcli.tools.calls import instructions_of, own_format, with_tools

    hf = AutoTokenizer.from_pretrained(tiny_model.folder)
    ours = ChatTokenizer.from_folder(tiny_model.folder)
    assert not own_format(ours.chat_template)
    plain = ours.chat_template
    ours.chat_template = with_tools(plain, TOOL_LIST)
    taught = instructions_of([TOOL_LIST[0]["function"]])
    for system in ("Be brief.", None):
        messages = ([Message("system", system)] if system else []) + [Message("user", "Hi")]
        joined = (system + "\n\n" if system else "") + taught
        want = hf.apply_chat_template([{"role": "system", "content": joined},
                                       {"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True)
        assert render_text(ours, messages) == want


def test_slash_tools_lists_what_the_model_may_call(home: Path, tools_file: Path) -> None:
    result = run_cli(["chat", "--no-server", "--tool", f"{tools_file}:weather", "--mcp",
                      mcp_command(), "-n", "2"], input="/tools\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "weather(city): The weather in a city today. [tools.py]\n"
        f"shout(text): The text in capital letters. [mcp {mcp_command()!r}]\n"
        f"fail_now(why): Always fails. [mcp {mcp_command()!r}]\n")
    bare = run_cli(["chat", "--no-server", "-n", "2"], input="/tools\n")
    assert bare.stdout == ("no tools: start the chat with --tool FILE.py, --tool-module "
                           "MOD:FUNC or --mcp 'CMD'\n")


def test_history_show_tells_the_steps_as_what_they_are(home: Path, tools_file: Path) -> None:
    out = ask_json("--tool", f"{tools_file}:weather", "--tool-choice", "required",
                   "--allow-tools", "--max-tool-calls", "1", "-n", "150", "Weather?")
    city = out["tool_calls"][0]["arguments"]["city"]
    shown = run_cli(["history", "show", "1"]).stdout
    assert f"## Tool call\n\n`weather(city=\"{city}\")`\n\n*" in shown
    result = json.dumps({"name": "weather", "result": out["tool_calls"][0]["result"]},
                        indent=2)
    assert f"## Tool result (weather)\n\n```json\n{result}\n```\n" in shown
    assert "<tool_call>" not in shown and "<tool_response>" not in shown


def test_the_readme_example_server_lists_files_inside_its_folder_only(tmp_path: Path,
                                                                      monkeypatch: Any) -> None:
    import sys

    from chatcli.tools.mcp import MCPServer

    example = Path(__file__).parent.parent / "docs" / "examples" / "mcp_list_files.py"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("a")
    monkeypatch.chdir(tmp_path)
    server = MCPServer(f"{sys.executable} {example}")
    try:
        [tool] = server.tools()
        assert tool.name == "list_files"
        assert run(tool, {"folder": "docs"}, 5, 100).result == "a.md"
        assert run(tool, {"folder": ".."}, 5, 100).error == \
            "RuntimeError: only folders inside the project"
    finally:
        server.close()


def test_the_candidates_show_the_decision_to_call_and_which_tool(home: Path,
                                                                tools_file: Path) -> None:
    out = ask_json("--tool", f"{tools_file}:weather", "--tool", f"{tools_file}:boom",
                   "--tool-choice", "required", "--allow-tools", "--max-tool-calls", "1",
                   "--show-candidates", "5", "-n", "150", "Weather?")
    found = out["tool_decision"]
    assert (found["call"], found["words"], found["call_below"]) == (pytest.approx(1.0),
                                                                   pytest.approx(0.0), None)
    assert set(found["tools"]) == {"weather", "boom"}
    assert sum(found["tools"].values()) == pytest.approx(1.0, abs=1e-3)
    chosen = out["tool_calls"][0]["name"]
    assert found["tools"][chosen] > 0
    shown = run_cli(["ask", "--no-server", "--tool", f"{tools_file}:weather", "--tool",
                     f"{tools_file}:boom", "--tool-choice", "required", "--allow-tools",
                     "--max-tool-calls", "1", "--show-candidates", "5", "-n", "150",
                     "Weather?"]).stdout
    assert "decision at step 1: call a tool 100% (" in shown
    assert ", answer in words 0%\n" in shown


def test_slash_tool_add_offers_more_functions(home: Path, tools_file: Path) -> None:
    result = run_cli(["chat", "--no-server", "--tool", f"{tools_file}:weather", "-n", "2"],
                     input=f"/tool add {tools_file}:boom\n/tools\n/tool add {tools_file}:boom\n"
                           "/tool remove x\n")
    assert result.exit_code == 0, result.stderr
    assert "chatcli: offering boom; loading the model again with the new list\n" in result.stderr
    assert result.stdout.splitlines() == ["weather(city): The weather in a city today. [tools.py]",
                                          "boom(loud): Fails. [tools.py]"]
    assert (f"error: /tool add {tools_file}:boom: a tool named boom is offered already; hint: "
            "name another function: FILE.py:NAME\n") in result.stderr
    assert "error: /tool takes add FILE.py[:NAME]; hint: e.g. /tool add tools.py:weather\n" \
        in result.stderr
    shown = run_cli(["chat", "--no-server", "--tool", f"{tools_file}:weather", "-n", "2"],
                    input=f"/tool add {tools_file}:boom\nHi\n/prompt\n")
    assert '"name": "boom"' in shown.stdout and '"name": "weather"' in shown.stdout
    bare = run_cli(["chat", "--no-server", "-n", "2"], input=f"/tool add {tools_file}\n")
    assert "error: /tool add needs a chat started with tools; hint: start it with --tool " \
           "FILE.py (or --mcp 'CMD')\n" in bare.stderr


def test_continuing_a_servers_conversation_with_tools_is_one_line(home: Path,
                                                                  tools_file: Path) -> None:
    from screen import add_script_alias, script_server

    with script_server("Hello.") as server:
        add_script_alias(home, server)
        assert run_cli(["ask", "-m", "script", "hi"]).exit_code == 0
        result = run_cli(["chat", "-c", "--tool", str(tools_file)], input="Weather?\n")
    assert (result.exit_code, result.stderr) == (2, (
        "error: tools run with local models for now, and 'script' (backend openai) is a "
        "server; hint: use a local model (-m), or drop the tool flags\n"))
