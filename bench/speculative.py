"""Speculative decoding (--speculate) against plain decoding of the same mode.

Usage: python bench/speculative.py [--rounds 3] [--tokens 400] [--modes default,fp32]
           [--draft smollm2-135m] [--write PATH] [--section speculative]

Three workloads, each answered plainly and speculatively in interleaved rounds with
the default model (greedy, EOS ends an answer as it would for a user):

- repeat and edit (what prompt lookup is for, with `--speculate ngram`): a four-paragraph
  story in the message, then "Repeat the story above word for word.", or the story
  with a typo, then "Fix the typo and print the whole story.";
- open: an open-ended question (a short story) with `--speculate ngram` (prompt
  lookup finds little: the overhead when drafting finds nothing) and with a draft
  model (`--speculate DRAFT`: the default alias in its own mode, drafting for a target
  in another mode);
- sampled: the open question sampled (temperature 1, seed 1) with `--speculate ngram`:
  a text prompt lookup finds little in, so the adaptive schedule should cost nothing;
- per mode: `default` (the alias's own: GGUF blocks as stored, with the compiled step
  when it is built), `fp32` (--quantize none --dtype float32: the exact path, where
  greedy answers are identical) and `bf16` (--quantize none --dtype bfloat16).

Reported per mode and workload: decode tok/s (median over rounds; the answer's own
`decode_tokens_per_s`: its tokens after the first over the time between them), the
ratio to plain, the acceptance rate and mean accepted length, tokens produced, and
whether the speculative answer is the plain one token for token (else the first
position that differs). The CPU model and load average are stated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness import Conditions, add_write_options, format_ratio, interleave, median, write_report

STORY = """\
The lighthouse keeper woke before dawn, as he had every morning for thirty years. He \
climbed the spiral stairs, one hundred and twelve of them, and checked the great lamp. The \
glass was clean. The oil was full. Outside, the sea was grey and calm, and the gulls were \
already circling the rocks below.
He made his tea in the small kitchen and sat by the window. A fishing boat was heading out \
past the point, its engine loud in the still air. He knew the boat and he knew the man who \
steered it. They had been at school together, long ago, in the village across the bay.
After breakfast he walked down to the shore to look for anything the tide had brought in. \
Most days it was only seaweed and driftwood. Once it had been a glass float from a Japanese \
net, green and perfect, which now sat on the shelf above his bed.
In the afternoon the wind rose and the sky turned dark. He lit the lamp early and watched \
the beam sweep across the water. Somewhere out there the fishing boat was coming home, and \
the light would show it the way."""
REPEAT = f"{STORY}\n\nRepeat the story above word for word."
EDIT = f"{STORY.replace('perfect', 'perfcet')}\n\nFix the typo and print the whole story."
OPEN = "Write a short story about a robot who learns to paint."
MODES = {"default": None, "fp32": ("float32", "none"), "bf16": ("bfloat16", "none")}


def backend_for(mode: str) -> Any:
    from chatcli.backends.local import LocalBackend
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry
    from chatcli.runtime import Runtime, resolve_runtime

    registry = load_registry()
    spec = registry.resolve(None)
    if MODES[mode] is None:
        runtime = resolve_runtime("cpu", "auto", None, spec.dtype, None, spec.quantize)
    else:
        dtype, quantize = MODES[mode]
        runtime = Runtime("cpu", dtype, None, quantize)
    return LocalBackend.open(spec, registry, SilentReporter(), runtime)


def answer(backend: Any, text: str, tokens: int, speculate: str | None,
           sampled: bool = False) -> Any:
    from chatcli.backends.base import Views
    from chatcli.decoding.registry import strategy_registry
    from chatcli.decoding.settings import resolve_settings
    from chatcli.prompt import Message, render_ids

    flags: dict[str, Any] = {"speculate": speculate} if speculate else {}
    if sampled:  # a text prompt lookup finds little in: drafting costs, rarely pays
        flags.update(temperature=1.0, seed=1)
    settings = resolve_settings(strategy_registry(), strategy="sample" if sampled else "greedy",
                                flags=flags)
    ids = render_ids(backend.loaded.tokenizer, [Message("user", text)])

    packed = SimpleNamespace(ids=ids)
    backend.invalidate()  # every answer prefills afresh
    gen = backend.stream(packed, settings, tokens, Views())
    for _ in gen:
        pass
    return gen


def run_mode(mode: str, rounds: int, tokens: int, draft: str,
             workloads: list[str]) -> list[list[str]]:
    backend = backend_for(mode)
    variants: dict[str, tuple[str, str | None]] = {
        "repeat plain": (REPEAT, None), "repeat ngram": (REPEAT, "ngram"),
        "edit plain": (EDIT, None), "edit ngram": (EDIT, "ngram"),
        "open plain": (OPEN, None), "open ngram": (OPEN, "ngram"),
    }
    if mode != "default":
        variants[f"open {draft}"] = (OPEN, draft)
    variants["sampled plain"] = (OPEN, None)
    variants["sampled ngram"] = (OPEN, "ngram")
    variants = {k: v for k, v in variants.items() if k.split(" ")[0] in workloads}
    for name, (text, spec) in variants.items():  # warm-up: the draft model loads
        answer(backend, text, 8, spec, name.startswith("sampled"))
    runs = interleave({name: (lambda t=text, s=spec, n=name: answer(
        backend, t, tokens, s, n.startswith("sampled")))
        for name, (text, spec) in variants.items()}, rounds, alternate=True)
    rows = []
    for name, gens in runs.items():
        workload, how = name.split(" ", 1)
        plain = runs[f"{workload} plain"]
        speed = median(g.stats.decode_tokens_per_s for g in gens)
        base = median(g.stats.decode_tokens_per_s for g in plain)
        figures = [g.stats.speculation for g in gens if g.stats.speculation is not None]
        same = [g.token_ids == p.token_ids for g, p in zip(gens, plain, strict=True)]
        if all(same):
            agree = "identical"
        else:
            first = next(next((i for i, (a, b) in enumerate(
                zip(g.token_ids, p.token_ids, strict=False)) if a != b), None)
                for g, p in zip(gens, plain, strict=True) if g.token_ids != p.token_ids)
            agree = f"differs from token {first}"
        rate = median(f.acceptance or 0.0 for f in figures) if figures else float("nan")
        mean = median(f.mean_accepted or 0.0 for f in figures) if figures else float("nan")
        rows.append([mode, workload, how, backend.implementation,
                     f"{speed:.1f}", format_ratio(speed, base) if how != "plain" else "1.00x",
                     "-" if not figures else f"{rate:.2f}",
                     "-" if not figures else f"{mean:.2f}",
                     str(len(gens[0].token_ids)), "-" if how == "plain" else agree])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=400)
    parser.add_argument("--modes", default="default,fp32,bf16")
    parser.add_argument("--workloads", default="repeat,edit,open,sampled")
    parser.add_argument("--draft", default="smollm2-135m",
                        help="the draft model's alias (in its own mode)")
    add_write_options(parser, "speculative")
    args = parser.parse_args()
    conditions = Conditions.observe()
    header = ["mode", "workload", "decoding", "implementation", "decode tok/s", "vs plain",
              "acceptance", "mean accepted", "tokens", "tokens vs plain"]
    rows = []
    for mode in args.modes.split(","):
        rows += run_mode(mode, args.rounds, args.tokens, args.draft,
                         args.workloads.split(","))
    conditions.finish()
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    body = "\n".join([
        f"Measured on {conditions.describe()}; {args.rounds} interleaved rounds, medians; "
        f"greedy, at most {args.tokens} tokens (EOS ends an answer).",
        "",
        *table,
        "",
        "Workloads: repeat: the four-paragraph story of `bench/speculative.py` in the "
        "message, then \"Repeat the story above word for word.\"; edit: the story with a "
        "typo, then \"Fix the typo and print the whole story.\"; "
        f"open: \"{OPEN}\"; sampled: the same, `-S sample -t 1 --seed 1`. "
        f"Decoding: plain; `ngram` (prompt lookup, adaptive); `{args.draft}` (that alias in "
        "its own mode drafting for the mode of the row).",
    ])
    print(body)
    write_report(args, body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
