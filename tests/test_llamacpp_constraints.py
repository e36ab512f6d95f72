"""Answer shapes on a real server: llama.cpp's, serving the default GGUF.

Starts `python -m llama_cpp.server` (`pip install -e ".[server-tests]"`) on a free
loopback port, as tests/test_openai_server.py does, behind an alias with
server = "llama.cpp", and asks through chatcli with --schema (the answer validates
against the schema, checked with `jsonschema`), --choice (the answer is
one of the choices), --grammar with a GBNF file (the answer obeys it) and --regex
(refused before any request: the server's log shows none). The generic profile's
standard `response_format` (what `--base-url` alone sends) is checked too: this
server's answer to it must come back as one clear error.

Marked slow. Without llama_cpp installed they are skipped, except under CI (CI set),
where that is a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from llamacpp_server import LlamaServer, default_gguf, require_llama_cpp

pytestmark = pytest.mark.slow
ALIAS = "local-server"


Server = LlamaServer


@pytest.fixture(scope="module")
def server(real_home: Path) -> Iterator[Server]:
    require_llama_cpp()
    running = Server(default_gguf(real_home))
    yield running
    running.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> Path:
    root = tmp_path / "home"
    root.mkdir()
    (root / "models.toml").write_text(
        f'[models.{ALIAS}]\nbackend = "openai"\nbase_url = "{server.url}"\nmodel = "smollm2"\n'
        'server = "llama.cpp"\ncontext_window = 2048\n')
    monkeypatch.setenv("CHATCLI_HOME", str(root))
    monkeypatch.delenv("CHATCLI_DEBUG", raising=False)
    return root


def _ask(*args: str) -> dict:
    result = run_cli(["ask", "-m", ALIAS, "--json", *args])
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_schema_shorthand_validates(server: Server, home: Path) -> None:
    import jsonschema

    data = _ask("-n", "64", "--schema", "name str, age int",
                "Describe Ada Lovelace as JSON with her name and age.")
    assert data["finish_reason"] == "stop"
    assert data["constraint_satisfied"] is True
    value = json.loads(data["text"])
    schema = data["constraint"]["schema"]
    jsonschema.validate(value, schema)
    assert set(value) == {"name", "age"} and data["parsed"] == value
    assert server.completions() >= 1  # the server logs each request (the regex test counts)


def test_schema_file_validates(server: Server, home: Path, tmp_path: Path) -> None:
    import jsonschema

    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "enum": ["France", "Italy", "Spain"]}},
        "required": ["city", "country"]}
    path = tmp_path / "place.json"
    path.write_text(json.dumps(schema))
    data = _ask("-n", "64", "--schema", str(path), "Name a city in Europe and its country.")
    jsonschema.validate(json.loads(data["text"]), schema)
    assert data["constraint_satisfied"] is True


def test_choice_answers_one_of_them(server: Server, home: Path) -> None:
    result = run_cli(["ask", "-m", ALIAS, "--choice", "yes,no,not sure",
                      "Is the sky blue? Answer yes or no."])
    assert result.exit_code == 0, result.stderr
    assert result.stdout in ("yes\n", "no\n", "not sure\n")


def test_gbnf_grammar_is_obeyed(server: Server, home: Path, tmp_path: Path) -> None:
    grammar = tmp_path / "colours.gbnf"
    grammar.write_text('root ::= colour (", " colour){2}\n'
                       'colour ::= "red" | "green" | "blue" | "yellow"\n')
    data = _ask("-n", "32", "--grammar", str(grammar), "Name three colours.")
    assert re.fullmatch(r"(red|green|blue|yellow)(, (red|green|blue|yellow)){2}",
                        data["text"]), data["text"]
    assert data["constraint"] == {"kind": "grammar", "grammar": grammar.read_text(),
                                  "syntax": "gbnf"}
    assert data["constraint_satisfied"] is True


def test_regex_is_refused_before_any_request(server: Server, home: Path) -> None:
    run_cli(["ask", "-m", ALIAS, "-n", "1", "Hi"])  # one logged request, to count from
    before = server.completions()
    assert before >= 1
    result = run_cli(["ask", "-m", ALIAS, "--regex", "[0-9]+", "Pick a number."])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --regex cannot be sent to 'local-server' (server "
                                    "llama.cpp): llama.cpp cannot hold an answer to a regex; ")
    assert server.completions() == before


def test_the_generic_profile_gets_one_clear_error_from_this_server(server: Server,
                                                                  home: Path) -> None:
    """`--base-url` alone is the generic profile: OpenAI's `"type": "json_schema"`, which
    llama-cpp-python's server rejects (llama-server reads it). The error is one line
    naming the field; `server = "llama.cpp"` in the alias is the way to this server."""
    result = run_cli(["ask", "--base-url", server.url, "--schema", "name str", "hi"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {server.url} failed ("), \
        result.stderr
    assert "response_format" in lines[0]  # the server names the field it rejected
    assert result.stdout == ""
