"""The default model's GGUF read at its stored precision, against today's int4 and llama.cpp.

Usage: python bench/gguf_stored.py [--rounds 5] [--tokens 64] [--threads 2]
           [--quality-tokens 32] [--write docs/benchmarks.md] [--section gguf_stored]

One process, interleaved rounds (each runs every engine, the order reversed every other
round; medians), decode tokens/s after a 32-token prompt:
- chatcli gguf: `chatcli ask`'s default for a GGUF (quantize gguf) -- the file's Q4_1
  layers and Q8_0 head read as stored (chatcli/lm/gguf_weights.py), bf16 activations;
- chatcli int4: the previous default -- the GGUF converted to safetensors, requantized
  to int4 (head int8);
- llama.cpp Q4_1: llama.cpp on the same file;
- with `--fastest`, llama.cpp Q4_0 too: the model converted to F32 by llama.cpp's
  converter and quantized by its quantizer (bench/vs_llamacpp_files.py, once, under
  `--cache-dir`), llama.cpp's fastest <= 8-bit variant of it (docs/benchmarks.md);
- with `--compiled`, the compiled decode steps of both chatcli modes too (`chatcli
  compile` and `chatcli compile --quantize int4` first).
Then, each engine alone in a fresh process, the resident memory loading and decoding 16
tokens added (VmRSS, and the peak VmHWM, less VmRSS before loading) beside the GGUF's
size; and the greedy tokens of
every engine for ten chat prompts (the chat template applied by chatcli) against llama.cpp's
on the same file: prompts whose first N tokens are identical, and the mean common prefix.
The weights come from chatcli's own cache (CHATCLI_HOME): the default alias is fetched,
read and converted there as `chatcli` would.
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
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Explain what a prime number is.",
    "Give me a tip for learning to cook.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Write one sentence about a cat.",
]
ENGINES = ("chatcli gguf", "chatcli int4", "llama.cpp Q4_1")
WHAT = {
    "chatcli gguf": ("bf16 activations; the file's Q4_1 layers (int4) and Q8_0 head as "
                     "stored (chatcli's block kernel)"),
    "chatcli int4": "bf16; requantized to int4 from the converted weights, head int8",
    "llama.cpp Q4_1": "the same file",
    "llama.cpp Q4_0": "the model requantized by llama.cpp's quantizer (from F32)",
    "chatcli gguf compiled": "chatcli gguf through its compiled decode step",
    "chatcli int4 compiled": "chatcli int4 through its compiled decode step",
}


def files() -> tuple[Path, Path, Path]:
    """The default alias's GGUF, its config/tokenizer folder and its converted folder."""
    from chatcli import loader, sources
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry

    spec = load_registry().resolve("smollm2-135m")
    weights = sources.fetch(spec, SilentReporter())
    converted = loader.ensure_converted(spec, weights, SilentReporter())
    assert weights.gguf_path is not None
    return weights.gguf_path, converted, converted


def q4_0_file(cache_dir: str, threads: int) -> Path:
    """llama.cpp's own Q4_0 of the default model (made once under `cache_dir`)."""
    from vs_llamacpp_files import prepare

    root = Path(cache_dir).expanduser()
    return prepare("smollm2", ["Q4_0"], root, threads, lambda m: None).ggufs["Q4_0"]


def load(name: str, threads: int, cache_dir: str) -> Any:
    gguf, meta, converted = files()
    if name == "llama.cpp Q4_0":
        return LlamaCppEngine(q4_0_file(cache_dir, threads), "Q4_0", threads, 512)
    if name.startswith("llama.cpp"):
        return LlamaCppEngine(gguf, "Q4_1", threads, 512)
    import torch

    from chatcli import paths
    from chatcli.lm import block_kernels, gguf_weights
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel
    from chatcli.loader import compiled_package, weights_id
    from chatcli.runtime import Runtime

    block_kernels.use_folder(paths.cache_dir() / "kernels")  # as the loader does

    class Engine:
        feed = None

    engine = Engine()
    if name.startswith("chatcli gguf"):
        config = json.loads((meta / "config.json").read_text())
        model = gguf_weights.load_model(gguf, config, torch.bfloat16)
        mode, folder, source = "gguf", meta, gguf
    else:
        model = NativeCausalLM.from_folder(converted, torch.bfloat16)
        model.quantize("int4")
        mode, folder, source = "int4", converted, None
    engine.lm = NativeLanguageModel(model)
    if name.endswith("compiled"):
        from chatcli.lm.compiled import CompiledLanguageModel

        package = compiled_package(folder, Runtime("cpu", "bfloat16", None, mode))
        engine.lm = CompiledLanguageModel.open(model, package, weights_id(folder, source))
        if not engine.lm.compiled:
            raise SystemExit(f"{engine.lm.reason}: run `chatcli compile --quantize {mode}` "
                             "first (minutes, once)")
    return engine


def prompt_ids(n: int) -> list[int]:
    from tokenizers import Tokenizer

    _, meta, _ = files()
    ids = Tokenizer.from_file(str(meta / "tokenizer.json")).encode(TEXT.read_text()).ids
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def chat_ids(prompt: str) -> list[int]:
    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import Message, render_ids

    _, meta, _ = files()
    return render_ids(ChatTokenizer.from_folder(meta), [Message("user", prompt)])


def probe(name: str, threads: int, quality_tokens: int, cache_dir: str) -> None:
    """In a process of its own: memory before loading (everything imported), after loading
    and decoding, and greedy tokens. llama.cpp's process never imports torch."""
    if name.startswith("chatcli"):
        import torch

        import chatcli.lm.gguf_weights
        import chatcli.lm.llama
        import chatcli.lm.native  # noqa: F401

        torch.set_num_threads(threads)
    prompt, chats = prompt_ids(DECODE_PROMPT), [chat_ids(p) for p in PROMPTS]
    before = process_memory_kib()
    engine = load(name, threads, cache_dir)
    greedy(engine.lm, prompt, 16, feed=engine.feed)
    after = process_memory_kib()
    tokens = [greedy(engine.lm, ids, quality_tokens, feed=engine.feed).tokens for ids in chats]
    print(json.dumps({"before_kib": before, "memory_kib": after, "tokens": tokens}))


def probe_alone(name: str, args: argparse.Namespace) -> dict[str, Any]:
    return run_probe([sys.executable, __file__, "--probe", name, "--threads",
                      str(args.threads), "--quality-tokens", str(args.quality_tokens),
                      "--cache-dir", args.cache_dir], name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-tokens", type=int, default=32)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--fastest", action="store_true",
                        help="llama.cpp's Q4_0 of the model too (made once under --cache-dir)")
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    add_write_options(parser, "gguf_stored")
    args = parser.parse_args()
    import_llama_cpp()
    if args.probe:
        probe(args.probe, args.threads, args.quality_tokens, args.cache_dir)
        return
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    gguf, _, _ = files()
    names = list(ENGINES) + (["chatcli gguf compiled", "chatcli int4 compiled"]
                             if args.compiled else []) + (["llama.cpp Q4_0"] if args.fastest
                                                          else [])
    if args.fastest:
        q4_0_file(args.cache_dir, args.threads)  # made before anything is measured
    conditions = Conditions.observe()
    prompt = prompt_ids(DECODE_PROMPT)
    decode = decode_rounds(lambda n: load(n, args.threads, args.cache_dir), names, prompt,
                           args.tokens, args.rounds, log)
    conditions.finish()
    probes = {}
    for n in names:
        log(f"probing {n} alone")
        probes[n] = probe_alone(n, args)
    reference = probes["llama.cpp Q4_1"]["tokens"]

    cmd = "python bench/gguf_stored.py " + " ".join(sys.argv[1:])
    size = gguf.stat().st_size
    lines = [
        f"`{cmd.strip()}` — SmolLM2-135M-Instruct.Q4_1.gguf ({size / 2**20:.1f} MiB), "
        f"{args.threads} threads on both sides, torch {torch.__version__}, llama-cpp-python "
        f"{md.version('llama_cpp_python')}, {args.rounds} interleaved rounds (medians), decode "
        f"{args.tokens} tokens after a {DECODE_PROMPT}-token prompt; {conditions.describe()}.",
        "",
        "| engine | what | decode tok/s | vs llama.cpp | model RSS MiB | / file | "
        f"load peak MiB | same {args.quality_tokens} tokens as llama.cpp | common prefix "
        "per prompt |",
        "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        model, peak = memory_added(probes[n])  # what loading and decoding added
        prefixes, same = agreement(probes[n]["tokens"], reference)
        lines.append(
            f"| {n} | {WHAT[n]} | {decode[n]:.1f} | "
            f"{format_ratio(decode[n], decode['llama.cpp Q4_1'])} | {model / 2**20:.0f} | "
            f"{model / size:.2f} | {peak / 2**20:.0f} | {same}/{len(PROMPTS)} | "
            f"{' '.join(str(p) for p in prefixes)} |")
    lines += ["", "Model RSS: the process's resident memory after loading and decoding 16 "
              "tokens, less what it held before loading (imports done); load peak: the "
              "highest resident memory, less the same. The quality prompts are the chat "
              f"prompts in bench/gguf_stored.py, {args.quality_tokens} greedy tokens each.",
              "", f"- chatcli gguf / chatcli int4 decode: "
              f"{format_ratio(decode['chatcli gguf'], decode['chatcli int4'])}"]
    if args.fastest:
        fastest = max((n for n in names if n.startswith("llama.cpp")), key=decode.__getitem__)
        default = "chatcli gguf compiled" if args.compiled else "chatcli gguf"
        lines.append(f"- {default} (what `chatcli ask` runs) / llama.cpp's fastest "
                     f"({fastest}): {format_ratio(decode[default], decode[fastest])}")
    body = "\n".join(lines)
    print(body)
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
