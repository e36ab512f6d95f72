"""Eager native decode vs the AOTInductor-compiled decode step (chatcli.lm.compiled).

Usage: python bench/compiled_decode.py [--folder PATH] [--modes bf16,int8,int4]
           [--tokens 64] [--rounds 3] [--threads N] [--no-autotune]
           [--packages DIR] [--rebuild] [--write PATH] [--section compiled-decode]

The default model's converted folder comes from `chatcli pull smollm2-135m` unless
--folder names one. For each mode (bf16: the exact bf16 model; int8/int4: weight-only
quantized with `NativeCausalLM.quantize`) it builds the package once (max-autotune
unless --no-autotune; an existing package whose key still matches is reused unless
--rebuild) and reports the build time and package size, then greedy-decodes --tokens
tokens after a fixed prompt with the eager `NativeLanguageModel` and the
`CompiledLanguageModel`, interleaved over --rounds rounds, and reports median decode
tokens/s, their ratio, and how many positions the compiled tokens agree with eager
(and the first that differs). EOS is not looked at. The machine's CPU and load
average are stated: on a shared machine the numbers are provisional.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import (  # bench/ is on sys.path when run as a script
    Conditions,
    Decoded,
    add_write_options,
    first_difference,
    format_ratio,
    greedy,
    interleave,
    median,
    write_report,
)

PROMPT = "Write a short story about a robot who learns to paint."
MODES = {"bf16": "none", "int8": "int8", "int4": "int4"}


def default_folder() -> Path:
    """The default model's converted folder, as `chatcli pull smollm2-135m` prints it."""
    out = subprocess.run([sys.executable, "-m", "chatcli", "pull", "smollm2-135m"],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"at (\S+)", out)
    if found is None:
        raise SystemExit(f"cannot find the model folder in: {out!r}")
    return Path(found.group(1))


def prompt_ids(folder: Path) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--modes", default="bf16,int8,int4")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-autotune", action="store_true")
    parser.add_argument("--packages", type=Path, default=Path("/tmp/chatcli-compiled"))
    parser.add_argument("--rebuild", action="store_true")
    add_write_options(parser, "compiled-decode")
    args = parser.parse_args()

    import torch

    from chatcli.lm import compiled
    from chatcli.lm.llama import NativeCausalLM
    from chatcli.lm.native import NativeLanguageModel

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.folder or default_folder()
    ids = prompt_ids(folder)
    model_id = compiled.folder_fingerprint(folder)
    options = compiled.TEST_OPTIONS if args.no_autotune else compiled.AUTOTUNE_OPTIONS
    conditions = Conditions.observe()
    rows = []
    for name in args.modes.split(","):
        model = NativeCausalLM.from_folder(folder, torch.bfloat16)
        model.quantize(MODES[name])
        tag = "noautotune" if args.no_autotune else "autotune"
        path = args.packages / f"{name}-{tag}.pt2"
        build_s = float("nan")
        if args.rebuild or isinstance(compiled.load_step(model, path, model_id), str):
            print(f"{name}: building {path} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            compiled.build(model, path, model_id=model_id, options=options)
            build_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        fast = compiled.CompiledLanguageModel.open(model, path, model_id)
        if not fast.compiled:
            raise SystemExit(f"{name}: {fast.reason}")
        eager = NativeLanguageModel(model)
        for lm in (eager, fast):  # warm-up: first calls allocate and load
            greedy(lm, ids, 4)
        samples: dict[str, list[Decoded]] = interleave(
            {"eager": lambda lm=eager: greedy(lm, ids, args.tokens),
             "compiled": lambda lm=fast: greedy(lm, ids, args.tokens)},
            args.rounds, alternate=True)
        eager_tps = median(d.decode_tokens_per_s for d in samples["eager"])
        fast_tps = median(d.decode_tokens_per_s for d in samples["compiled"])
        a, b = samples["eager"][0].tokens, samples["compiled"][0].tokens
        agree = sum(x == y for x, y in zip(a, b, strict=True))
        first = first_difference(a, b)
        rows.append(f"| {name} | {eager_tps:.1f} | {fast_tps:.1f} | "
                    f"{format_ratio(fast_tps, eager_tps)} | "
                    f"{'-' if build_s != build_s else f'{build_s:.0f} s'} | {size_mb:.0f} MB | "
                    f"{agree}/{len(a)} (first difference: "
                    f"{'none' if first is None else first}) |")
        print(rows[-1], file=sys.stderr, flush=True)
    conditions.finish()
    body = "\n".join([
        f"`python bench/compiled_decode.py --modes {args.modes} "
        f"--tokens {args.tokens} --rounds {args.rounds}"
        f"{' --no-autotune' if args.no_autotune else ''}`: {folder.name}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{conditions.describe()}. Median decode tokens/s of interleaved rounds; "
        "agreement: greedy tokens equal to eager's, position by position.",
        "",
        "| mode | eager tok/s | compiled tok/s | compiled / eager | build | package | "
        "agreement |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    main()
