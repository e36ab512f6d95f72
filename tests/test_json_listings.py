"""`--json` on the listing commands: `models list|show`, `history list`, `strategies`.

Each prints one JSON value on one line of stdout, with the information of its text
output under the keys its --help documents; errors stay one line on stderr.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli import store as store_mod
from chatcli.registry import load_registry
from conftest import Tiny, run_cli, time_zone

DAY1 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def dumped(value: Any) -> str:
    """What --json prints for `value`: one line, keys in order, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False) + "\n"


@pytest.fixture
def tz() -> Iterator[None]:
    """Local time two hours east of UTC (a POSIX TZ string: no tz database needed)."""
    with time_zone("XYZ-2"):
        yield


def _add_remote(home: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write('\n[models.far]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                'model = "served"\napi_key_env = "CHATCLI_TEST_KEY"\ncontext_window = 2048\n'
                'timeout = 7.5\n')


# -- models list ------------------------------------------------------------------------------
def test_models_list_json(cli, home: Path, tiny_model: Tiny) -> None:
    _add_remote(home)
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.q4]\nsource = "path"\npath = "{tiny_model.folder}"\n'
                'dtype = "float32"\nquantize = "int4"\n')
    result = run_cli(["models", "list", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.count("\n") == 1
    items = json.loads(result.stdout)
    by_alias = {item["alias"]: item for item in items}
    assert by_alias["tiny"] == {
        "alias": "tiny", "default": True, "params": "0.03M", "context_window": None,
        "cached": True, "compiled": None, "backend": "local",
        "source": f"path:{tiny_model.folder}",
    }
    package = _package(home, tiny_model)
    assert by_alias["q4"]["compiled"] == {
        "state": "not built", "mode": "float32/int4", "path": str(package), "pid": None,
        "log": None, "reason": None, "automatic": False,
        "automatic_off": "CHATCLI_AUTO_COMPILE=0"}
    assert by_alias["far"] == {
        "alias": "far", "default": False, "params": None, "context_window": 2048,
        "cached": None, "compiled": None, "backend": "openai",
        "source": "openai:http://127.0.0.1:9/v1 (served)",
    }
    # The same aliases, in the same order, saying the same as the table, row by row.
    text = run_cli(["models", "list"]).stdout.splitlines()
    assert len(text) == len(items) + 1
    columns = ["alias", "params", "context", "cached", "compiled", "backend", "source"]
    starts = [text[0].index(c) for c in columns]
    for line, item in zip(text[1:], items, strict=True):
        name, params, ctx, cached, compiled, backend, source = (
            line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True))
        assert name == item["alias"] + (" (default)" if item["default"] else "")
        assert params == (item["params"] or "?")
        assert ctx == (str(item["context_window"]) if item["context_window"] else
                       "from server" if item["backend"] != "local" else "from config")
        assert cached == {None: "-", True: "yes", False: "no"}[item["cached"]]
        assert compiled == ("-" if item["compiled"] is None else
                            {"not built": "no", "built": "yes"}.get(
                                item["compiled"]["state"], item["compiled"]["state"]))
        assert (backend, source) == (item["backend"], item["source"])


def _package(home: Path, tiny: Tiny) -> Path:
    """Where the float32 int4 package of the tiny model lives in `home`."""
    from chatcli.loader import compiled_package
    from chatcli.runtime import Runtime

    return home / "cache" / "compiled" / compiled_package(
        tiny.folder, Runtime("cpu", "float32", None, "int4")).name


def test_models_list_json_error_is_one_line(cli, home: Path) -> None:
    (home / "models.toml").write_text('default = "tiny"\n[models.tiny\n')
    result = run_cli(["models", "list", "--json"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {home / 'models.toml'}: invalid TOML: Expected ']' at the end of a table "
        "declaration (at line 2, column 13); hint: fix the syntax at that line\n"
    )


# -- models show ------------------------------------------------------------------------------
def _decoding(**changed: tuple[Any, str]) -> dict[str, dict[str, Any]]:
    values: dict[str, Any] = {"strategy": "greedy", "max_new_tokens": 512, "seed": None,
                              "stop": [], "repetition_penalty": 1.0, "frequency_penalty": 0.0,
                              "presence_penalty": 0.0, "no_repeat_ngram_size": 0,
                              "thinking_budget": None, "speculate": None}
    out = {k: {"value": v, "origin": "default"} for k, v in values.items()}
    if changed.get("strategy", ("greedy",))[0] == "sample":
        sample = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}
        out = {"strategy": out.pop("strategy"),
               **{k: {"value": v, "origin": "default"} for k, v in sample.items()}, **out}
    for key, (value, origin) in changed.items():
        out[key] = {"value": value, "origin": origin}
    return out


def test_models_show_json_local_with_every_origin(cli, home: Path, tiny_model: Tiny,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model.folder, folder)
    (folder / "generation_config.json").write_text('{"top_k": 20, "temperature": 0.5}')
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.mine]\nsource = "path"\npath = "{folder}"\nchat_template = "x"\n'
                'license = "MIT"\ncontext_window = 128\n[models.mine.defaults]\n'
                'strategy = "sample"\ntemperature = 0.7\nstop = ["END"]\n')
    result = run_cli(["models", "show", "mine", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == dumped({
        "alias": "mine", "default": False, "description": None, "backend": "local",
        "source": f"path:{folder}", "params": None, "context_window": 128, "dtype": "auto",
        "architecture": "llama", "implementation": "native", "quantize": "none",
        "stored_precision": None, "chat_template": "models.toml",
        "trust_remote_code": False, "license": "MIT", "cached": str(folder),
        "compiled": None, "compile": "auto", "defined_in": str(home / "models.toml"),
        "decoding_defaults": _decoding(strategy=("sample", "models.toml"),
                                       temperature=(0.7, "models.toml"),
                                       top_k=(20, "generation_config.json"),
                                       stop=(["END"], "models.toml")),
        "decoding_note": None,
    })
    text = run_cli(["models", "show", "mine"]).stdout.splitlines()
    assert "strategy            sample (models.toml)" in text
    assert "  top_k             20 (generation_config.json)" in text
    assert "  stop              ('END',) (models.toml)" in text


def test_models_show_json_default_alias(cli, home: Path, tiny_model: Tiny) -> None:
    result = run_cli(["models", "show", "tiny", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    shown = json.loads(result.stdout)
    assert {k: shown[k] for k in ("alias", "default", "description", "params", "dtype",
                                  "cached", "chat_template", "license")} == {
        "alias": "tiny", "default": True, "description": "tiny random test model",
        "params": "0.03M", "dtype": "float32", "cached": str(tiny_model.folder),
        "chat_template": "model", "license": None,
    }
    assert shown["decoding_defaults"] == _decoding()


def test_models_show_json_remote(cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _add_remote(home)
    monkeypatch.setenv("CHATCLI_TEST_KEY", "sk-secret")
    result = run_cli(["models", "show", "far", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == dumped({
        "alias": "far", "default": False, "description": None, "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1", "model": "served", "server": "generic",
        "api_key_env": {"name": "CHATCLI_TEST_KEY", "set": True}, "tokenizer": None,
        "params": None, "context_window": 2048, "timeout": 7.5, "license": None,
        "defined_in": str(home / "models.toml"), "decoding_defaults": _decoding(),
        "decoding_note": "a remote alias: only models.toml and flags apply here",
    })
    monkeypatch.delenv("CHATCLI_TEST_KEY")
    unset = json.loads(run_cli(["models", "show", "far", "--json"]).stdout)
    assert unset["api_key_env"] == {"name": "CHATCLI_TEST_KEY", "set": False}


def test_models_show_json_unknown_alias_is_one_error_line(cli, home: Path) -> None:
    result = run_cli(["models", "show", "nope", "--json"])
    known = ", ".join(sorted(load_registry(None).models))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: unknown model 'nope' (known: {known}); hint: run 'chatcli models list', "
        f"or add the alias to {home / 'models.toml'}\n"
    )


# -- history list -----------------------------------------------------------------------------
def test_history_list_json_of_a_conversation_made_by_ask(
    cli, home: Path, monkeypatch: pytest.MonkeyPatch, tz: None
) -> None:
    monkeypatch.setattr(store_mod, "_now", lambda: DAY1)
    asked = run_cli(["ask", "-n", "3", "Héllo there"])
    assert asked.exit_code == 0, asked.stderr
    result = run_cli(["history", "list", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == dumped([{
        "id": 1, "updated": "2023-11-15T00:13:20+02:00", "model": "tiny", "messages": 2,
        "title": "Héllo there",
    }])
    assert run_cli(["history", "list"]).stdout.splitlines()[1].split() == [
        "1", "2023-11-15", "00:13", "tiny", "2", "Héllo", "there"]


def test_history_list_json_untitled_limit_and_empty(cli, home: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tz: None) -> None:
    empty = run_cli(["history", "list", "--json"])
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "[]\n", "")
    ticks = iter(range(100))
    monkeypatch.setattr(store_mod, "_now", lambda: DAY1 + next(ticks))
    with store_mod.Store.open() as s:
        s.new_conversation("tiny", None)
        s.new_conversation("other", None)
    result = run_cli(["history", "list", "--json", "--limit", "1"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == dumped([{
        "id": 2, "updated": "2023-11-15T00:13:21+02:00", "model": "other", "messages": 0,
        "title": None,
    }])


def test_history_list_json_usage_error_is_one_line(cli) -> None:
    result = run_cli(["history", "list", "--json", "--limit", "0"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: Invalid value for '--limit' / '-n': Input should be greater than or equal to 1; "
        "hint: see 'chatcli history list --help'\n"
    )


# -- strategies -------------------------------------------------------------------------------
def _param(name: str, flag: str, kind: str, default: Any, help_text: str) -> dict[str, Any]:
    return {"name": name, "flag": flag, "type": kind, "default": default, "help": help_text}


STRATEGIES = {
    "strategies": [
        {"name": "greedy", "description": "Always pick the most likely next token "
         "(deterministic).", "origin": "built-in", "params": []},
        {"name": "sample", "description": "Draw from the model's distribution after "
         "temperature, top-k, top-p, min-p, typical.", "origin": "built-in", "params": [
             _param("temperature", "--temperature", "float", 1.0,
                    "divide logits by this; < 1 sharper, > 1 flatter"),
             _param("top_k", "--top-k", "int", 0, "keep the k most likely tokens (0: off)"),
             _param("top_p", "--top-p", "float", 1.0,
                    "keep the smallest set with this much probability (1: off)"),
             _param("min_p", "--min-p", "float", 0.0,
                    "drop tokens below min_p x the top probability (0: off)"),
             _param("typical_p", "--typical-p", "float", 1.0,
                    "locally typical sampling mass (1: off)"),
         ]},
        {"name": "beam", "description": "Keep the num_beams most likely sequences; print the "
         "best (length-normalised).", "origin": "built-in", "params": [
             _param("num_beams", "--num-beams", "int", 4, "hypotheses kept at each step"),
             _param("length_penalty", "--length-penalty", "float", 1.0,
                    "score / length^this; > 0 favours longer answers"),
             _param("early_stopping", "-o early_stopping", "bool | str", False,
                    "true: stop at num_beams finished; false: stop when no better one can "
                    "appear; never"),
             _param("num_return_sequences", "-o num_return_sequences", "int", 1,
                    "hypotheses returned (the best is printed)"),
         ]},
    ],
    "common": {
        "params": [
            _param("max_new_tokens", "--max-new-tokens", "int", 512, "most tokens to generate"),
            _param("seed", "--seed", "int", None,
                   "random seed (a fixed seed reproduces a sampled answer)"),
            _param("stop", "--stop", "str (repeatable)", [],
                   "stop when this text appears (not printed)"),
            _param("repetition_penalty", "--repetition-penalty", "float", 1.0,
                   "divide logits of seen tokens (1: off)"),
            _param("frequency_penalty", "--frequency-penalty", "float", 0.0,
                   "subtract this x count of each generated token"),
            _param("presence_penalty", "--presence-penalty", "float", 0.0,
                   "subtract this from every generated token"),
            _param("no_repeat_ngram_size", "--no-repeat-ngram-size", "int", 0,
                   "never repeat an n-gram of this size (0: off)"),
            _param("thinking_budget", "--thinking-budget", "int", None,
                   "a reasoning model thinks at most this many tokens, then chatcli closes "
                   "its thinking"),
            _param("speculate", "--speculate", "str", None,
                   "draft tokens and verify them in one pass: ngram[:N] (prompt lookup) or a "
                   "model alias[:N] (a draft model)"),
        ],
        "precedence": ["default", "generation_config.json", "models.toml", "flag"],
    },
}


def test_strategies_json(cli) -> None:
    result = run_cli(["strategies", "--json"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == dumped(STRATEGIES)
    text = run_cli(["strategies"]).stdout
    for strategy in STRATEGIES["strategies"]:
        assert f"{strategy['name']}: {strategy['description']}\n" in text
        for p in strategy["params"]:
            assert f"  {p['type']}, default {p['default']!r}: {p['help']}\n" in text


def test_strategies_json_usage_error_is_one_line(cli) -> None:
    result = run_cli(["strategies", "--json", "extra"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        "error: Got unexpected extra argument(s) (extra); hint: see 'chatcli strategies --help'\n"
    )


def test_json_option_is_documented_in_each_help(cli) -> None:
    for command in (["models", "list"], ["models", "show"], ["history", "list"],
                    ["strategies"]):
        out = run_cli([*command, "--help"]).stdout
        assert "With --json:" in out
        assert "--json  " in out and "Print one JSON value on stdout instead of text" in out
