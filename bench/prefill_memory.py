"""Peak memory (RSS high-water mark) of prefilling one long prompt, chunked and not.

Usage: python bench/prefill_memory.py [--tokens 16384] [--chunk 512] [--cached 0,64]
                                      [--dtype float32] [--shape tiny|wide[=VARIANTS] ...]
                                      [--variants native-whole,native-chunked,...]
                                      [--write docs/benchmarks.md] [--section prefill-memory]

Builds a random-weight Llama whose context window holds the prompt, then prefills a
`--tokens`-token prompt of random ids through chatcli's `LanguageModel.prefill`, once
per variant and per `--cached` count, each in a fresh Python process:

* native-whole / native-chunked: chatcli's own forward pass (`NativeLanguageModel`)
  with `NativeCausalLM.prefill_chunk` set to 0 (the whole prompt in one pass, which is
  what chatcli did before chunked prefill) or to `--chunk`;
* hf-whole / hf-chunked: transformers' model (`HFLanguageModel`), its `prefill_chunk`
  likewise.

`--cached N` first prefills N other tokens and then the prompt over that cache, which
is what the prompt cache does when a long text is pasted into a later turn of a chat:
there the one-pass prefill takes SDPA's explicit-mask path, whose boolean mask (and
the float mask torch makes of it) is prompt x prompt. With 0 the prompt starts a new
cache (SDPA's `is_causal` path, whose CPU kernel never materialises the scores).

Shapes: "tiny" is the tests' tiny model (hidden size 32, MLP 64, 2 layers, 4 query
heads over 2 key/value heads, 400-token vocabulary); "wide" has SmolLM2-135M's widths
(hidden 576, MLP 1536, 9 over 3 heads, 49,152 tokens) with 2 layers, where the
activations that grow with the prompt (MLP, q/k/v) show. `--shape` may be given more
than once, each as NAME or NAME=VARIANTS (comma-separated; default `--variants`): one
table per shape, in the order given, e.g. `--shape tiny --shape
wide=native-whole,native-chunked`.

Each process reports its RSS high-water mark (VmHWM of /proc/self/status; elsewhere
`resource.getrusage(RUSAGE_SELF).ru_maxrss`) after loading the model and prefilling
one token (which reads every weight in, as the mapped file is paged in lazily, and
warms torch up) plus the cached tokens, and again after the prefill; tracemalloc would
miss torch's allocations. The table gives both, what the prefill added, the greedy
token of the last position and the largest logit difference from the same
implementation's one-pass prefill. Memory only: nothing is timed. The report starts
with the command, the CPU and the load average (bench/harness.py's `Conditions`); with
`--write PATH` it replaces the "prefill-memory" section of PATH (e.g. docs/benchmarks.md,
or a scratch copy; `--section` names another).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import Conditions, add_write_options, write_report  # bench/ is on sys.path

VARIANTS = ("native-whole", "native-chunked", "hf-whole", "hf-chunked")
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "wide": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
             "num_attention_heads": 9, "num_key_value_heads": 3},
}


def peak_mib() -> float:
    """This process's RSS high-water mark in MiB: VmHWM (Linux), else ru_maxrss.

    VmHWM belongs to the process's own memory map, so it starts afresh at exec; ru_maxrss
    also keeps the forking parent's RSS, which is why the parent never imports torch.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if found:
        return int(found.group(1)) / 1024
    scale = 1 if sys.platform == "linux" else 1024  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / scale


def build(folder: Path, tokens: int, shape: str) -> None:
    """A random Llama of `shape` (no tokenizer: the prompt is token ids)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPES[shape], num_hidden_layers=2, max_position_embeddings=tokens + 1024,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # as the tests' tiny model: outputs that vary
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.3)
    model.save_pretrained(folder)


def child(variant: str, folder: Path, args: argparse.Namespace, cached: int) -> None:
    """Load, note the high-water mark, prefill, note it again; print one JSON line."""
    import torch

    dtype = getattr(torch, args.dtype)
    chunk = args.chunk if variant.endswith("chunked") else 0
    if variant.startswith("native"):
        from chatcli.lm.llama import NativeCausalLM
        from chatcli.lm.native import NativeLanguageModel

        model = NativeCausalLM.from_folder(folder, dtype)
        model.prefill_chunk = chunk
        lm: Any = NativeLanguageModel(model)
    else:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        from chatcli.lm.hf import HFLanguageModel

        logging.set_verbosity_error()
        lm = HFLanguageModel(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval())
        lm.prefill_chunk = chunk
    vocab = SHAPES[args.shape]["vocab_size"]
    ids = torch.randint(0, vocab, (cached + args.tokens,),
                        generator=torch.Generator().manual_seed(1)).tolist()
    lm.prefill(ids[:1])  # touches every weight (mapped from the file) and warms torch up
    cache = lm.prefill(ids[:cached])[1] if cached else None
    loaded = peak_mib()
    logits, _ = lm.prefill(ids[cached:], cache)
    peak = peak_mib()
    print(json.dumps({"variant": variant, "cached": cached, "chunk": chunk, "loaded": loaded,
                      "peak": peak, "logits": logits.float().reshape(-1).tolist()}))


def parse_shape(spec: str, default: list[str]) -> tuple[str, list[str]]:
    """`--shape NAME[=VARIANTS]` -> (NAME, its variants; `default` when none are given)."""
    name, _, variants = spec.partition("=")
    return name, [v for v in variants.split(",") if v] if variants else default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--cached", default="0,64", help="tokens cached before the prompt, each")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--shape", action="append", default=None, metavar="NAME[=VARIANTS]",
                    help=f"one of {', '.join(SHAPES)}, optionally with its own variants; "
                         "repeat for one table per shape (default tiny)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    add_write_options(ap, "prefill-memory")
    args = ap.parse_args()
    cached_counts = [int(n) for n in args.cached.split(",") if n]
    if args.child:  # a child is given exactly one plain shape
        args.shape = args.shape[0]
        if args.child == "build":
            build(args.folder, args.tokens + max(cached_counts), args.shape)
        else:
            child(args.child, args.folder, args, cached_counts[0])
        return
    default = [v for v in args.variants.split(",") if v]
    shapes = [parse_shape(spec, default) for spec in args.shape or ["tiny"]]
    for shape, variants in shapes:
        if shape not in SHAPES:
            ap.error(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    conditions = Conditions.observe()
    tables = [table(args, shape, variants, cached_counts) for shape, variants in shapes]
    conditions.finish()
    header = f"`{command(args)}` — {conditions.describe()}. Memory only: nothing is timed."
    print(header + "\n")
    for text in tables:
        print(text + "\n")
    write_report(args, "\n\n".join([header, *tables]))


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces this report (the default --write left out)."""
    words = ["python bench/prefill_memory.py", f"--tokens {args.tokens}",
             f"--chunk {args.chunk}", f"--cached {args.cached}", f"--dtype {args.dtype}"]
    words += [f"--shape {spec}" for spec in args.shape or ["tiny"]]
    if args.variants != ",".join(VARIANTS):
        words.append(f"--variants {args.variants}")
    if args.write is not None:
        words.append(f"--write {args.write}")
    if args.section != "prefill-memory":
        words.append(f"--section {args.section}")
    return " ".join(words)


def table(args: argparse.Namespace, shape: str, variants: list[str],
          cached_counts: list[int]) -> str:
    """Measure every variant of one shape (each in a fresh process); its markdown table."""
    rows: list[dict[str, Any]] = []
    common = ["--tokens", str(args.tokens), "--chunk", str(args.chunk), "--dtype", args.dtype,
              "--shape", shape]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryDirectory(prefix="chatcli-prefill-memory-") as tmp:
        # Every import of torch happens in a child: see peak_mib.
        runs = [("build", args.cached)] + [(v, str(n)) for n in cached_counts for v in variants]
        for variant, cached in runs:
            cmd = [sys.executable, __file__, "--child", variant, "--folder", tmp,
                   "--cached", cached, *common]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            if variant != "build":
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one_pass = {(r["variant"].split("-")[0], r["cached"]): r["logits"]
                for r in rows if r["chunk"] == 0}
    lines = [
        f"Prefill of {args.tokens} tokens, {shape} random Llama (2 layers), "
        f"{args.dtype}, torch {_version('torch')}, transformers {_version('transformers')}",
        "",
        "| variant | cached before | chunk | RSS before (MiB) | peak RSS (MiB) "
        "| added by prefill (MiB) | greedy token | max abs logit diff vs one pass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        logits = r["logits"]
        ref = one_pass.get((r["variant"].split("-")[0], r["cached"]))
        diff = "" if ref is None else \
            f"{max(abs(a - b) for a, b in zip(logits, ref, strict=True)):.3g}"
        token = max(range(len(logits)), key=logits.__getitem__)
        lines.append(f"| {r['variant']} | {r['cached']} | {r['chunk'] or 'none'} | "
                     f"{r['loaded']:.0f} | {r['peak']:.0f} | {r['peak'] - r['loaded']:.0f} | "
                     f"{token} | {diff} |")
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
