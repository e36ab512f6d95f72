"""Every GGUF format chatcli reads as stored, on files llama.cpp's own quantizer wrote.

Usage: python bench/gguf_formats.py [--hidden 512] [--layers 8] [--ffn 1536]
           [--types Q4_K_M,Q5_K_M,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0] [--rounds 3] [--tokens 32]
           [--threads 2] [--cache-dir ~/.cache/chatcli-bench/gguf-formats]
           [--write docs/benchmarks.md] [--section gguf_formats]

A random-weight llama model of the given shape (the tiny test tokenizer, 400 tokens) is
written as an F32 GGUF (tests/gguf_export.py) and quantized by `llama_model_quantize`
to each type (once, cached). For each file:
- exactness: each layer's output, gate/up and down projections as chatcli builds them
  (`chatcli.lm.gguf_weights.load_model`; q/k/v and the head are checked by the tests),
  read back through torch's int4 kernel with a float32 table, against `gguf`'s float32
  dequantization of the same tensors: the fraction of weights bit-equal; and with a bf16
  table (bf16 activations) the largest difference relative to the tensor's largest weight;
- what the file holds (tensor types) and what chatcli runs them as;
- with `--speed`, decode tokens/s, chatcli (bf16, eager) vs llama.cpp on the same file,
  interleaved (at this small default shape Python's per-token overhead dominates
  chatcli's step: it says little about a real model; bench/gguf_stored.py does that).
K-quants need rows of a multiple of 256 weights (llama.cpp falls back to other types
otherwise): the default shape has them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine_llamacpp import LlamaCppEngine, import_llama_cpp, quantize_gguf
from harness import (
    Conditions,
    add_write_options,
    format_ratio,
    greedy,
    interleave,
    median,
    write_report,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def build_f32(root: Path, hidden: int, layers: int, ffn: int) -> tuple[Path, Path]:
    """The random model as a transformers folder and an F32 GGUF, once."""
    folder, gguf_path = root / "model", root / "F32.gguf"
    if gguf_path.is_file():
        return folder, gguf_path
    import torch
    from gguf_export import write_gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_tiny_model  # the tiny tokenizer and chat template

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny")
        config = LlamaConfig.from_pretrained(tiny)
        config.update({"hidden_size": hidden, "intermediate_size": ffn,
                       "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
                       "num_key_value_heads": max(1, hidden // 192), "head_dim": 64,
                       "max_position_embeddings": 2048, "tie_word_embeddings": True})
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0, 0.05)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tiny / name).is_file():
                (folder / name).write_bytes((tiny / name).read_bytes())
    write_gguf(folder, gguf_path, lambda name: "F32")
    return folder, gguf_path


def exactness(path: Path, config: dict) -> dict[str, Any]:
    import gguf
    import numpy as np
    import torch

    from chatcli import paths
    from chatcli.lm import block_kernels, gguf_weights
    from chatcli.lm.gguf_file import read_header, runs_as

    block_kernels.use_folder(paths.cache_dir() / "kernels")  # as the loader does

    blocks = block_kernels.unavailable(build=False) is None

    header = read_header(path)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    equal = total = 0
    worst_bf16 = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        model = gguf_weights.load_model(path, config, dtype)
        for i, layer in enumerate(model.layers):
            for mine, names in (("o", ["attn_output"]), ("down", ["ffn_down"]),
                                ("gate_up", ["ffn_gate", "ffn_up"])):
                want = torch.cat([torch.from_numpy(np.ascontiguousarray(
                    gguf.quants.dequantize(tensors[f"blk.{i}.{n}.weight"].data,
                                           tensors[f"blk.{i}.{n}.weight"].tensor_type)))
                    for n in names]).float()
                got = getattr(layer, mine).dequantized().float()
                if dtype == torch.float32:
                    equal += int((got == want).sum())
                    total += want.numel()
                else:
                    rel = float((got - want).abs().max() / want.abs().max())
                    worst_bf16 = max(worst_bf16, rel)
    return {"runs_as": runs_as(header, blocks=blocks), "equal": equal / total, "bf16": worst_bf16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--types", default="Q4_K_M,Q5_K_M,Q4_0,Q4_1,Q5_0,Q5_1,Q8_0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--cache-dir", default="~/.cache/chatcli-bench/gguf-formats")
    add_write_options(parser, "gguf_formats")
    args = parser.parse_args()
    import_llama_cpp()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import torch

    from chatcli import paths
    from chatcli.lm import block_kernels, gguf_weights
    from chatcli.lm.native import NativeLanguageModel

    block_kernels.use_folder(paths.cache_dir() / "kernels")  # as the loader does

    torch.set_num_threads(args.threads)
    root = Path(args.cache_dir).expanduser() / f"h{args.hidden}-l{args.layers}-f{args.ffn}"
    root.mkdir(parents=True, exist_ok=True)
    folder, f32 = build_f32(root, args.hidden, args.layers, args.ffn)
    config = json.loads((folder / "config.json").read_text())
    types = [t for t in args.types.split(",") if t]
    files = {}
    for kind in types:
        files[kind] = root / f"{kind}.gguf"
        quantize_gguf(f32, kind, files[kind], args.threads, log)
    conditions = Conditions.observe()
    prompt = list(range(3, 35))
    rows = []
    for kind in types:
        log(f"{kind}: exactness")
        exact = exactness(files[kind], config)

        row = (f"| {kind} | {files[kind].stat().st_size / 2**20:.1f} | "
               f"{'; '.join(exact['runs_as'])} | {100 * exact['equal']:.4f} % | "
               f"{exact['bf16']:.1e} |")
        log(f"{kind}: {exact['equal']:.6f} equal")
        if args.speed:
            class Chatcli:
                feed = None
                lm = NativeLanguageModel(gguf_weights.load_model(files[kind], config,
                                                                 torch.bfloat16))

            engines = {"chatcli": Chatcli(),
                       "llama.cpp": LlamaCppEngine(files[kind], kind, args.threads, 256)}
            for engine in engines.values():
                greedy(engine.lm, prompt, 4, feed=engine.feed)
            samples = interleave({n: (lambda e=e: greedy(e.lm, prompt, args.tokens,
                                                         feed=e.feed).decode_tokens_per_s)
                                  for n, e in engines.items()}, args.rounds, alternate=True)
            engines["llama.cpp"].close()
            speed = {n: median(samples[n]) for n in engines}
            row += (f" {speed['chatcli']:.1f} | {speed['llama.cpp']:.1f} | "
                    f"{format_ratio(speed['chatcli'], speed['llama.cpp'])} |")
        rows.append(row)
    conditions.finish()
    cmd = "python bench/gguf_formats.py " + " ".join(sys.argv[1:])
    speed = (f"; {args.threads} threads on both sides, {args.rounds} interleaved rounds "
             f"(medians), decode {args.tokens} tokens") if args.speed else ""
    head = ("| file | MiB | chatcli runs its tensors as | weights bit-equal to gguf's "
            "dequantization (float32) | bf16 table: max diff / max weight |")
    rule = "|---|---|---|---|---|"
    if args.speed:
        head, rule = head + " chatcli tok/s | llama.cpp tok/s | ratio |", rule + "---|---|---|"
    lines = [
        f"`{cmd.strip()}` — a random-weight llama (hidden {args.hidden}, {args.layers} layers, "
        f"ffn {args.ffn}, 400-token vocabulary) quantized by llama.cpp's "
        f"`llama_model_quantize`{speed}; {conditions.describe()}.", "", head, rule, *rows]
    body = "\n".join(lines)
    print(body)
    write_report(args, body)
    log(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
