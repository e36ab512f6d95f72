"""The Backend seam: a new backend is one module plus one registry line.

`tests/echo_backend.py` is written the way a user would write a backend; here it
is registered with one line (`BACKENDS["echo"] = ...`) and driven through the real
entry point: models.toml keys it declares (and those it does not), `models list`,
`models show`, `ask` (plain, --json, history), piped `chat`, and the refusals its
declared capabilities imply, each naming the missing capability, before anything
is opened. Also: the capabilities the built-in backends declare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatcli import backends
from chatcli.backends.base import Capabilities
from chatcli.registry import ModelSpec
from conftest import run_cli


@pytest.fixture
def echo(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(backends.BACKENDS, "echo", "echo_backend:EchoBackend")
    with (home / "models.toml").open("a") as f:
        f.write('\n[models.parrot]\nbackend = "echo"\nprefix = "you said:"\n'
                'context_window = 1024\n')
    return home


def test_ask_runs_on_the_new_backend(echo: Path) -> None:
    result = run_cli(["ask", "-m", "parrot", "hello there"])
    assert (result.exit_code, result.stdout, result.stderr) == (
        0, "you said: hello there\n", "")
    shown = run_cli(["history", "show", "1"])
    assert "hello there" in shown.stdout and "you said: hello there" in shown.stdout


def test_ask_json_names_the_backend_and_no_token_ids(echo: Path) -> None:
    result = run_cli(["ask", "-m", "parrot", "--json", "-n", "3", "a b c d"])
    out = json.loads(result.stdout)
    assert (result.exit_code, out["text"], out["model"], out["token_ids"],
            out["finish_reason"], out["implementation"]) == (
        0, "you said: a", "parrot", None, "length", {"name": "echo", "reason": None})


def test_piped_chat_on_the_new_backend(echo: Path) -> None:
    result = run_cli(["chat", "-m", "parrot"], input="one\ntwo three\n")
    assert result.exit_code == 0, result.stderr
    assert "you said: one\n" in result.stdout and "you said: two three\n" in result.stdout


def test_models_list_and_show(echo: Path) -> None:
    items = {i["alias"]: i for i in json.loads(run_cli(["models", "list", "--json"]).stdout)}
    assert items["parrot"] == {"alias": "parrot", "default": False, "params": None,
                               "context_window": 1024, "cached": None, "compiled": None,
                               "backend": "echo", "source": "echo (prefix 'you said:')"}
    shown = json.loads(run_cli(["models", "show", "parrot", "--json"]).stdout)
    assert {k: shown[k] for k in ("alias", "backend", "prefix", "context_window")} == {
        "alias": "parrot", "backend": "echo", "prefix": "you said:", "context_window": 1024}
    assert run_cli(["pull", "parrot"]).stdout == "parrot: nothing to pull\n"


def test_refusals_name_the_missing_capability(echo: Path) -> None:
    for args, line in [
        (["--show-candidates", "2"], "error: --show-candidates needs the capability "
         "'candidates', which 'parrot' (backend echo) lacks; hint: drop --show-candidates, or use "
         "a local model"),
        (["--explain-context"], "error: --explain-context needs the capability 'internals', "
         "which 'parrot' (backend echo) lacks; hint: use a local model (-m)"),
        (["-S", "beam"], "error: strategy 'beam' needs the capability 'beam', which "
         "'parrot' (backend echo) lacks; hint: choose another strategy (-S), or use a local "
         "model (-m)"),
        (["--raw"], "error: --raw needs the capability 'raw', which 'parrot' (backend echo) "
         "lacks; hint: drop --raw, or use a local model (-m)"),
    ]:
        result = run_cli(["ask", "-m", "parrot", *args, "hi"])
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr.splitlines()[0] == line


def test_its_keys_are_its_own(echo: Path) -> None:
    with (echo / "models.toml").open("a") as f:
        f.write('\n[models.mixed]\nbackend = "echo"\nrepo = "org/name"\n')
    result = run_cli(["models", "list"])
    assert result.exit_code != 0
    assert "[models.mixed] 'repo' applies to local models, not backend = \"echo\"" in \
        result.stderr


def test_another_backends_key_names_the_backend(echo: Path) -> None:
    with (echo / "models.toml").open("a") as f:
        f.write('\n[models.other]\nprefix = "x"\nsource = "path"\npath = "/tmp"\n')
    result = run_cli(["models", "list"])
    assert result.exit_code != 0
    assert "[models.other] 'prefix' needs backend = \"echo\"" in result.stderr


def test_builtin_backends_declare_their_capabilities() -> None:
    local = backends.backend_class("local")
    remote = backends.backend_class("openai")
    spec = ModelSpec(alias="x", source="path")
    assert local.capabilities_of(spec) == Capabilities(
        token_ids=True, internals=True, any_strategy=True, beam=True, max_candidates=None,
        constrained=True, kv_reuse=True, exact_count=True, raw=True, alternatives=True,
        compile=True)
    far = ModelSpec(alias="far", source="remote", backend="openai", base_url="http://h/v1",
                    model="m")
    assert remote.capabilities_of(far) == Capabilities(
        token_ids=False, internals=False, any_strategy=False, beam=False, max_candidates=20,
        constrained=False, kv_reuse=False, exact_count=False, raw=True, alternatives=False,
        compile=False)
    vllm = ModelSpec(alias="v", source="remote", backend="openai", base_url="http://h/v1",
                     model="m", server="vllm", tokenizer="tiny")
    caps = remote.capabilities_of(vllm)
    assert (caps.beam, caps.exact_count) == (True, True)
    served = ModelSpec(alias="t", source="remote", backend="openai", base_url="http://h/v1",
                       model="m", server="transformers")
    assert remote.capabilities_of(served).raw is False  # no completions endpoint
