"""llama.cpp's `convert_hf_to_gguf.py`, fetched from the installed binding's sdist and run
with the patches bench/vs_llamacpp.py needs.

Contract: `ensure_converter(root)` returns the converter script (with its `conversion`
package and `gguf-py`, unpacked once under `root/llama.cpp-<version>/` from
`pip download llama-cpp-python==<installed version> --no-deps --no-binary :all:`) and the
environment to run it in (the sdist's gguf-py first on PYTHONPATH unless the installed
`gguf` has its version). `convert(converter, folder, outtype, out)` writes a GGUF of a
transformers folder once (an existing `out` is kept), through a wrapper that
- raises the FileNotFoundError the converter expects when a folder has no
  tokenizer.model (it imports sentencepiece before looking, and without that package
  fails instead of falling back to tokenizer.json);
- with `pre_tokenizer`, answers the converter's pre-tokenizer check (a hash of a test
  string's tokens) with that name instead.
Why these patches are needed is in docs/benchmarks.md ("chatcli vs llama.cpp").

It knows nothing about chatcli, the models benchmarked or the engines; failures end the
script (SystemExit) with the command's last lines of output.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

Converter = tuple[Path, dict[str, str]]  # the script, its environment

_PATCHED_CONVERTER = """
import os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, script.rsplit("/", 1)[0])
import conversion.base as base
for cls in list(vars(base).values()):
    f = getattr(cls, "__dict__", {}).get("_create_vocab_sentencepiece")
    if f is not None:
        def patched(self, _f=f):
            if not (self.dir_model / "tokenizer.model").is_file():
                raise FileNotFoundError("no tokenizer.model")
            return _f(self)
        cls._create_vocab_sentencepiece = patched
pre = os.environ.get("VS_LLAMACPP_PRE_TOKENIZER")
if pre:
    for cls in list(vars(base).values()):
        if "get_vocab_base_pre" in getattr(cls, "__dict__", {}):
            cls.get_vocab_base_pre = lambda self, tokenizer: pre
runpy.run_path(script, run_name="__main__")
"""


def run_checked(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_converter(root: Path, log: Callable[[str], None]) -> Converter:
    """llama.cpp's convert_hf_to_gguf.py from the installed binding's sdist, and its env."""
    version = md.version("llama_cpp_python")
    base = root / f"llama.cpp-{version}"
    script = base / "convert_hf_to_gguf.py"
    if not script.is_file():
        log(f"fetching convert_hf_to_gguf.py from the llama-cpp-python {version} sdist")
        with tempfile.TemporaryDirectory() as tmp:
            run_checked([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
                         "--no-deps", "--no-binary", ":all:", "-d", tmp, "-q"], "pip download")
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
            with tarfile.open(sdist) as tar:
                members = []
                for m in tar.getmembers():
                    parts = m.name.split("/vendor/llama.cpp/", 1)
                    if len(parts) == 2 and parts[1].startswith(keep) and (m.isfile() or m.isdir()):
                        m.name = parts[1]
                        members.append(m)
                tar.extractall(base, members=members, filter="data")
    env = dict(os.environ)
    vendored = _gguf_py_version(base / "gguf-py" / "pyproject.toml")
    try:
        installed = md.version("gguf")
    except md.PackageNotFoundError:
        installed = None
    if installed != vendored:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(base / "gguf-py"), env.get("PYTHONPATH")) if p)
    return script, env


def _gguf_py_version(pyproject: Path) -> str | None:
    for line in pyproject.read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def convert(converter: Converter, folder: Path, outtype: str, out: Path,
            log: Callable[[str], None], pre_tokenizer: str | None = None) -> None:
    """GGUF `outtype` (f32, bf16, ...) of the transformers folder, written to `out` once."""
    if out.is_file():
        return
    log(f"converting {folder.name} to GGUF {outtype}")
    script, env = converter
    if pre_tokenizer:
        env = {**env, "VS_LLAMACPP_PRE_TOKENIZER": pre_tokenizer}
    tmp = out.with_suffix(".tmp")
    run_checked([sys.executable, "-c", _PATCHED_CONVERTER, str(script), str(folder),
                 "--outtype", outtype, "--outfile", str(tmp)],
                f"convert_hf_to_gguf.py --outtype {outtype}", env)
    tmp.rename(out)
