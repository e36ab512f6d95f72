"""Why the 5- to 8-bit GGUF types run as two 4-bit halves: a dequantize-and-reduce matvec
written in torch ops and compiled by inductor, against torch's int4 kernel over two
halves (`chatcli.lm.quant.SplitInt4Linear`), on the same shapes.

Usage: python bench/fused_dequant.py [--threads 2] [--runs 30]

For each (out, in) shape: a Q8_0-like weight (int8 codes, a bf16 scale per 32) and a
Q6_K-like one (4 low bits, 2 high bits, a scale per 16), each multiplied by a bf16 row
through `torch.compile` (inductor's C++ code: one fused reduction reading the stored
bytes), and the two-halves int4 kernel at 10 bits per weight; median milliseconds per
call and the bytes each reads per second. Random values: only speed is measured. The
inductor cache goes to a temporary folder, removed at the end; nothing else is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(151936, 1024), (4864, 896), (896, 4864)]


def timed(f: Callable[..., Any], *args: Any, runs: int) -> float:
    for _ in range(3):
        f(*args)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="chatcli-fused-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    try:
        import torch
        import torch._inductor.config as inductor

        from chatcli.lm import quant

        # precompiled headers go to the temp folder whatever the cache folder is: none
        inductor.cpp_cache_precompile_headers = False
        torch.set_num_threads(args.threads)
        for n, k in SHAPES:
            x = torch.randn(1, k, dtype=torch.bfloat16)
            q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
            d8 = (torch.rand(n, k // 32) * 0.01).to(torch.bfloat16)

            def q8_matvec(x: Any, q: Any, d: Any, n: int = n, k: int = k) -> Any:
                xb = x.view(k // 32, 32).float()
                return ((q.view(n, k // 32, 32).float() * xb).sum(-1) * d.float()).sum(-1)

            low = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
            high = torch.randint(0, 256, (n, k // 4), dtype=torch.uint8)
            d6 = (torch.randint(-20, 20, (n, k // 16)).float() * 0.001).to(torch.bfloat16)

            def q6_matvec(x: Any, low: Any, high: Any, d: Any, n: int = n, k: int = k) -> Any:
                lo = torch.stack((low & 15, low >> 4), -1).view(n, k)
                hi = torch.stack((high & 3, (high >> 2) & 3, (high >> 4) & 3, high >> 6),
                                 -1).view(n, k)
                q = (lo.to(torch.int32) + 16 * hi.to(torch.int32) - 32).float()
                xb = x.view(k // 16, 16).float()
                return ((q.view(n, k // 16, 16) * xb).sum(-1) * d.float()).sum(-1)

            codes = torch.randint(0, 16, (n, 2 * k), dtype=torch.int32)
            table = torch.rand(2 * k // 64, n, 2).to(torch.bfloat16)
            halves = quant.SplitInt4Linear(quant.pack_int4(codes), table, 64, n, None,
                                           block=32)
            rows = [
                ("Q8_0-like, inductor", timed(torch.compile(q8_matvec, dynamic=False),
                                              x, q8, d8, runs=args.runs),
                 q8.numel() + 2 * d8.numel()),
                ("Q6_K-like, inductor", timed(torch.compile(q6_matvec, dynamic=False),
                                              x, low, high, d6, runs=args.runs),
                 low.numel() + high.numel() + 2 * d6.numel()),
                ("two 4-bit halves, int4 kernel", timed(halves, x, runs=args.runs),
                 halves.packed.numel() + 2 * halves.scales_and_zeros.numel()),
            ]
            for name, seconds, nbytes in rows:
                print(f"{n} x {k}: {name}: {seconds * 1e3:.2f} ms, "
                      f"{nbytes / seconds / 1e9:.1f} GB/s", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
