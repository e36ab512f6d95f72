"""CUDA-graph decoding on a GPU: tokens/s eager vs graphed, and whether the tokens match.

Usage: python bench/gpu_check.py [--tokens 128] [--prompt 32] [--rounds 3]
                                 [--dtype bfloat16] [--device cuda] [--tiny]

Builds a random-weight Llama with SmolLM2-135M's exact configuration (--tiny: a
2-layer toy, to check the code paths on a CPU), saves it with save_pretrained
(safetensors) to a temporary folder and loads it from there, then measures greedy
decode tokens/s (time after the first token; every run produces exactly --tokens
tokens) of: transformers' `generate()`; chatcli's eager native loop
(`NativeLanguageModel`); and chatcli's `GraphedLanguageModel` (static KV cache, the
decode step captured as a CUDA graph; its one-time warm-up/capture is timed
separately). Medians of --rounds interleaved rounds after one short warm-up round.
It prints a Markdown table for docs/benchmarks.md, the ratios graphed / generate()
(target >= 5x) and graphed / eager, and whether the greedy token ids of the graphed
decoder equal the eager native loop's and generate()'s (first difference if not).

Without CUDA (and --device cuda, the default) it exits with a message, not a
traceback. On --device cpu no graph is captured: the static step runs eagerly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    first_difference,
    generate,
    greedy,
    interleave,
    medians,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # chatcli from this checkout

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
TINY = {
    **SMOLLM2_135M,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
# Weights drawn wider than transformers' default init (0.02), so that random logits have
# clear winners and a greedy token-match check is not decided by rounding near-ties.
INIT_STD = 0.1


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_model(folder: Path, tiny: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(TINY if tiny else SMOLLM2_135M)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("norm.weight"):
                param.normal_(0, INIT_STD)
    model.save_pretrained(folder)


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_generate(model: Any, ids: list[int], n: int) -> tuple[float, list[int]]:
    """Decode tok/s of transformers' greedy generate(), and its tokens."""
    out = generate(model, ids, n, do_sample=False)
    return out.decode_tokens_per_s, out.tokens


def run_chatcli(lm: Any, ids: list[int], n: int) -> tuple[float, list[int]]:
    """Decode tok/s of a chatcli LanguageModel in the harness's greedy loop, its tokens."""
    out = greedy(lm, ids, n)  # a host sync every token (int(argmax)), as when streaming
    sync(lm.device)
    return out.decode_tokens_per_s, out.tokens


def same_tokens(a: list[int], b: list[int]) -> str:
    index = first_difference(a, b)
    return "yes" if index is None else f"no (first difference at token {index})"


class _Reporter:
    """chatcli's Reporter on stderr; remembers warnings (a failed capture)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def notify(self, message: str) -> None:
        self.notes.append(message)
        print(f"chatcli: {message}", file=sys.stderr)

    def warn(self, message: str) -> None:
        self.notes.append(message)
        print(f"warning: {message}", file=sys.stderr)

    @contextmanager
    def busy(self, message: str) -> Iterator[None]:
        print(f"chatcli: {message}", file=sys.stderr)
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy config instead")
    args = ap.parse_args()
    if args.tokens < 2 or args.rounds < 1 or args.prompt < 1:
        fail("--tokens must be >= 2, --rounds and --prompt >= 1")
    conditions = Conditions.observe()

    try:
        import torch
        import transformers
    except ImportError as exc:
        fail(f"needs torch and transformers ({exc})")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"CUDA is not available (torch {torch.__version__}, built for CUDA "
             f"{torch.version.cuda or 'none'}); run this on a CUDA machine, or pass --device cpu")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as tlog

    from chatcli.lm.graphs import GraphedLanguageModel
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n = args.tokens
    with tempfile.TemporaryDirectory(prefix="chatcli-gpu-check-") as tmp:
        folder = Path(tmp)
        build_model(folder, args.tiny)
        ref = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        native = NativeCausalLM.from_folder(folder, dtype, args.device)
    max_len = native.config["max_position_embeddings"]
    if args.prompt + n > max_len:
        fail(f"--prompt + --tokens must fit the context window of {max_len}")
    ids = torch.randint(1, native.vocab_size, (args.prompt,),
                        generator=torch.Generator().manual_seed(1)).tolist()
    eager = NativeLanguageModel(native)
    reporter = _Reporter()
    graphed = GraphedLanguageModel(native, max_len, reporter)
    started = time.perf_counter()
    graphed.warm_up()
    sync(device)
    warm_up_s = time.perf_counter() - started

    runners = {
        "generate()": lambda k: run_generate(ref, ids, k),
        "eager": lambda k: run_chatcli(eager, ids, k),
        "graphed": lambda k: run_chatcli(graphed, ids, k),
    }
    for run in runners.values():  # warm-up: kernels, allocator, the first prefill
        run(min(n, 8))
    runs = interleave({name: lambda run=run: run(n) for name, run in runners.items()},
                      args.rounds)
    conditions.finish()
    med = medians({name: [speed for speed, _ in samples] for name, samples in runs.items()})
    tokens = {name: samples[-1][1] for name, samples in runs.items()}  # the last round's

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    mode = "CUDA graph" if graphed.graphs else "static step, eager (no graph)"
    if reporter.notes:
        mode += "; capture failed"
    g = med["graphed"]
    lines = [
        f"`python bench/gpu_check.py --tokens {n} --rounds {args.rounds} --dtype {args.dtype}"
        f"{' --tiny' if args.tiny else ''}{' --device cpu' if device.type == 'cpu' else ''}` — "
        f"random-weight {'toy' if args.tiny else 'SmolLM2-135M-shaped'} Llama, {args.dtype}, "
        f"{where}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"prompt {args.prompt} tokens, greedy decode tok/s after the first token, "
        f"medians of {args.rounds} interleaved rounds; static cache of {max_len} positions; "
        f"{conditions.describe()}.",
        "",
        "| decoder | decode tok/s | vs generate() | tokens = eager native |",
        "|---|---|---|---|",
        f"| transformers generate() | {med['generate()']:.1f} | 1.00x | "
        f"{same_tokens(tokens['generate()'], tokens['eager'])} |",
        f"| chatcli native, eager | {med['eager']:.1f} | "
        f"{med['eager'] / med['generate()']:.2f}x | - |",
        f"| chatcli native, {mode} | {g:.1f} | {g / med['generate()']:.2f}x | "
        f"{same_tokens(tokens['graphed'], tokens['eager'])} |",
        "",
        f"- graphed / generate(): **{g / med['generate()']:.2f}x** (target >= 5x); "
        f"graphed / eager native: **{g / med['eager']:.2f}x**",
        f"- one-time warm-up and capture: {warm_up_s:.2f} s",
        f"- graphed tokens = generate() tokens: "
        f"{same_tokens(tokens['graphed'], tokens['generate()'])}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
