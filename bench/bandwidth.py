"""The machine's streaming-read memory bandwidth, as a decode step's ceiling.

Contract: `read_bandwidth(threads)` sums a 1 GiB float32 tensor (filled, so its pages
are resident, and summed once unmeasured) with `torch.set_num_threads(threads)`, five
times, and returns the best as GB/s (1e9 bytes per second): bytes read / the fastest
sum's time. A sum reads every byte once and writes nothing, as a decode step reads its
weights, so "bytes a token reads x tokens/s / this" is the fraction of the bandwidth a
decode reaches. The best of several, because other load only ever lowers a sample.
torch's thread count is restored afterwards.

It knows nothing about models or engines; torch is imported inside the function.
"""

from __future__ import annotations

import time


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of a torch sum over `gib` GiB of float32 with `threads` threads, best of
    `repeats` (see the module)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
        data.sum()  # warm-up: the kernel's first call, the threads started
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = min(best, time.perf_counter() - start)
        return data.numel() * data.element_size() / best / 1e9
    finally:
        torch.set_num_threads(previous)
