"""Fixed-shape decoding over a static KV cache, captured as a CUDA graph on CUDA.

Contract: `GraphedLanguageModel(model, max_len, reporter)` implements
`chatcli.lm.base.LanguageModel` over a `NativeCausalLM`. Its caches are
`StaticKVCache`s: per-layer K/V buffers of shape (rows, kv_heads, capacity, head_dim)
allocated once (capacity: `max_len`, the context window, rounded up to a multiple
of 16), whose addresses never change, so one captured graph serves every step.
`prefill` runs the model's own eager `forward` (any number of tokens, in chunks),
which writes straight into the static buffers. `step` runs `decode_step`: one token
per row through the model's own layers (`NativeCausalLM.hidden`, `logits`), with
the position passed as a 1-element *tensor*; only the cache write (`index_copy_` at
that position, `StaticKVCache.at`) and the attention kernel (the single query over
the whole buffer, with a mask that hides the positions after it, and for a sliding
layer those before its window) are this module's, and RoPE's cos/sin are gathered
from the tables the model's own `rope` built. Its buffers hold every position, also
for sliding layers (it is sized by the context window anyway). Logits
equal the eager forward's up to rounding (the attention sums over more, masked,
positions); greedy tokens are the same in the tests. Going past `max_len` raises
`ContextOverflowError`.

On CUDA the step is captured with `torch.cuda.CUDAGraph` the first time a row
count is used (`warm_up()` does it for one row at load time): a few eager runs on
a side stream, then the capture, reported through `reporter.busy`. Each step then
copies the tokens and the position into static input tensors, replays, and
returns a clone of the static logits. If the capture raises, one warning goes to
`reporter.notify` (or `warnings.warn` without a reporter) and every later step runs
`decode_step` eagerly. Elsewhere (CPU tests) `decode_step` always runs eagerly.

All caches of one model share its buffers: a `prefill` without a cache starts a
new one and makes the previous one stale (using it raises `ValueError`), which
suits chatcli's one-generation-at-a-time use. Beam search expands a cache to N
rows in place; buffers with room for more rows are allocated when first needed
(and the graphs captured so far, which point at the old buffers, are dropped).

The loader uses this class for the native implementation on CUDA unless
CHATCLI_NO_CUDA_GRAPHS=1 is set (see `wanted`); on CPU the eager
`NativeLanguageModel` is faster and stays. This module deliberately knows nothing
about tokenization, decoding strategies, text or the terminal (it never prints),
nor about checkpoints, quantization or the layers' ops: it calls the model's public
pass with its own cache write and attention.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from chatcli.errors import ContextOverflowError
from chatcli.lm.llama import KVCache, NativeCausalLM
from chatcli.progress import Reporter

DISABLE_ENV = "CHATCLI_NO_CUDA_GRAPHS"
WARMUP_RUNS = 3  # eager runs on a side stream before capturing, as PyTorch's docs advise
_ALIGN = 16  # buffer positions: a multiple of this keeps SDPA's mask aligned for CUDA kernels


def wanted(device: str | torch.device) -> bool:
    """Whether a native model on `device` should decode through `GraphedLanguageModel`."""
    return torch.device(device).type == "cuda" and os.environ.get(DISABLE_ENV, "") in ("", "0")


class StaticKVCache(KVCache):
    """K/V buffers (capacity_rows, kv_heads, capacity, head_dim) per layer; `rows` are live.

    Every edit happens in place, so tensors captured in a graph stay valid: `crop`
    sets the length, `expand` copies row 0 into the next rows, `reorder` gathers rows.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], max_len: int) -> None:
        super().__init__(len(keys))
        self.keys: list[torch.Tensor] = keys  # type: ignore[assignment]
        self.values: list[torch.Tensor] = values  # type: ignore[assignment]
        self.max_len = max_len
        self.rows = 1

    @classmethod
    def allocate(cls, model: NativeCausalLM, max_len: int) -> StaticKVCache:
        """An empty 1-row cache for `model` with room for `max_len` positions."""
        shape = (1, model.kv_heads, _capacity(max_len), model.head_dim)
        dtype = model.cache_dtype
        with torch.inference_mode():
            keys, values = (
                [torch.zeros(shape, dtype=dtype, device=model.device) for _ in model.layers]
                for _ in range(2)
            )
        return cls(keys, values, max_len)

    @property
    def capacity_rows(self) -> int:
        return self.keys[0].shape[0]

    def reallocate(self, rows: int) -> None:
        """Move into new buffers with room for `rows` rows (keeping the live rows)."""
        live, length = self.rows, self.length
        with torch.inference_mode():
            for store in (self.keys, self.values):
                for i, old in enumerate(store):
                    store[i] = old.new_zeros((rows, *old.shape[1:]))
                    store[i][:live, :, :length] = old[:live, :, :length]

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `key`/`value` after the cached positions; views over everything so far."""
        start, end = self.length, self.length + key.shape[2]
        if key.shape[0] != self.rows:
            raise ValueError(f"cache holds {self.rows} rows, input has {key.shape[0]}")
        if end > self.max_len:
            raise _overflow(end, self.max_len)
        keys, values = self.keys[layer][: self.rows], self.values[layer][: self.rows]
        keys[:, :, start:end] = key
        values[:, :, start:end] = value
        return keys[:, :, :end], values[:, :, :end]

    def at(self, pos: torch.Tensor) -> _StepWriter:
        """The cache as one decode step writes it: at position `pos` (a 1-element tensor,
        so no host synchronisation), returning whole buffers (the attention masks them)."""
        return _StepWriter(self, pos)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (in that order), e.g. the surviving beams; in place."""
        n = rows.numel()
        if n > self.capacity_rows:
            raise ValueError(f"cache has room for {self.capacity_rows} rows, not {n}")
        with torch.inference_mode():
            for buf in self.keys + self.values:
                live = buf[: self.rows, :, : self.length]
                buf[:n, :, : self.length] = live.index_select(0, rows.to(buf.device))
        self.rows = n

    def expand(self, rows: int) -> None:
        """Repeat a 1-row cache to `rows` rows, in place."""
        if self.rows != 1:
            raise ValueError("only a 1-row cache can be expanded")
        if rows > self.capacity_rows:
            raise ValueError(f"cache has room for {self.capacity_rows} rows, not {rows}")
        with torch.inference_mode():
            for buf in self.keys + self.values:
                buf[1:rows, :, : self.length] = buf[:1, :, : self.length]
        self.rows = rows


@dataclass(frozen=True)
class _StepWriter:
    cache: StaticKVCache
    pos: torch.Tensor

    def append(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = key.shape[0]
        keys, values = self.cache.keys[layer][:rows], self.cache.values[layer][:rows]
        keys.index_copy_(2, self.pos, key)
        values.index_copy_(2, self.pos, value)
        return keys, values


def _capacity(max_len: int) -> int:
    return -(-max_len // _ALIGN) * _ALIGN


def _overflow(length: int, max_len: int) -> ContextOverflowError:
    return ContextOverflowError(
        f"{length} tokens do not fit the context window of {max_len}",
        "shorten the prompt or lower --max-new-tokens",
    )


@dataclass
class RopeTable:
    """cos/sin (capacity, head_dim) for every position, per RoPE table of the model, from
    the model's own `rope`."""

    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    positions: torch.Tensor  # arange(capacity), to build the attention mask on the device

    @classmethod
    def build(cls, model: NativeCausalLM, capacity: int) -> RopeTable:
        with torch.inference_mode():
            positions = torch.arange(capacity, device=model.device)
            return cls(model.rope(positions), positions)


def decode_step(
    model: NativeCausalLM,
    cache: StaticKVCache,
    ids: torch.Tensor,
    pos: torch.Tensor,
    rope: RopeTable,
) -> torch.Tensor:
    """Logits (rows, vocab) for tokens `ids` (rows, 1) at position `pos` (a 1-element tensor).

    Fixed shapes and no host synchronisation, so it can be captured as a CUDA graph.
    Writes this position's K/V into `cache` but leaves `cache.length` to the caller.
    """
    rows, hd = ids.shape[0], model.head_dim
    n_rep = model.heads // model.kv_heads
    pairs = tuple((cos.index_select(0, pos).view(1, 1, 1, hd),
                   sin.index_select(0, pos).view(1, 1, 1, hd)) for cos, sin in rope.pairs)
    causal = rope.positions <= pos
    visible = {window: (causal if window is None else causal & (rope.positions > pos - window)
                        ).view(1, 1, 1, -1) for window in set(model.windows)}

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               window: int | None) -> torch.Tensor:
        # The query heads sharing a K/V head become that head's queries (transformers'
        # `pack_gqa`): no repeated K/V, and one mask for all of them (a sliding layer's
        # hides the positions before its window too).
        q = q.reshape(rows, model.kv_heads, n_rep, hd)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[window],
                                             scale=model.scale)
        return out.reshape(rows, 1, -1)

    h = model.hidden(ids, cache.at(pos), pairs, attend)
    return model.logits(h, 1).view(rows, -1)


def capture_graph(run: Callable[[], None], warmup_runs: int = WARMUP_RUNS) -> Callable[[], None]:
    """Warm `run` up on a side stream, capture it as a CUDA graph, and return its replay.

    `run` must read and write only tensors that outlive the graph (static inputs,
    buffers, outputs). The warm-up runs really execute it.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup_runs):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


@dataclass
class _Step:
    """The static inputs and output of the step for one row count, and how to run it."""

    ids: torch.Tensor  # (rows, 1)
    pos: torch.Tensor  # (1,)
    logits: torch.Tensor  # (rows, vocab)
    run: Callable[[], None]
    captured: bool = False  # graph captured, or capture given up


class GraphedLanguageModel:
    def __init__(
        self,
        model: NativeCausalLM,
        max_len: int,
        reporter: Reporter | None = None,
        graphs: bool | None = None,
    ) -> None:
        """`graphs`: capture CUDA graphs (default: on CUDA only)."""
        if max_len < 1:
            raise ValueError(f"max_len must be positive (got {max_len})")
        self.model = model
        self.device = model.device
        self.vocab_size = model.vocab_size
        self.max_len = max_len
        self.reporter = reporter
        self.graphs = model.device.type == "cuda" if graphs is None else graphs
        self.rope = RopeTable.build(model, _capacity(max_len))
        self._cache: StaticKVCache | None = None  # the newest cache; older ones are stale
        self._steps: dict[int, _Step] = {}  # by row count, over the current buffers

    # -- LanguageModel ---------------------------------------------------------
    def prefill(self, ids: list[int], cache: StaticKVCache | None = None) -> tuple[Any, Any]:
        cache = self._new_cache() if cache is None else self._live(cache)
        if cache.rows != 1:
            raise ValueError("prefill feeds one row")
        if len(cache) + len(ids) > self.max_len:
            raise _overflow(len(cache) + len(ids), self.max_len)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, _ = self.model.forward(input_ids, cache, logits_to_keep=1)
        return logits[:, -1, :], cache

    def step(self, tokens: Any, cache: StaticKVCache) -> tuple[Any, Any]:
        self._live(cache)
        rows = tokens.numel()
        if rows != cache.rows:
            raise ValueError(f"cache holds {cache.rows} rows, input has {rows}")
        if len(cache) >= self.max_len:
            raise _overflow(len(cache) + 1, self.max_len)
        step = self._step(rows)
        with torch.inference_mode():
            step.ids.copy_(tokens.reshape(rows, 1))
            step.pos.fill_(len(cache))
            if self.graphs and not step.captured:
                self._capture(step, rows)
            step.run()
            logits = step.logits.clone()
        cache.length += 1
        return logits, cache

    def expand(self, cache: StaticKVCache, rows: int) -> None:
        self._live(cache)
        if rows > cache.capacity_rows:
            cache.reallocate(rows)
            self._steps.clear()  # their graphs point at the old buffers
        cache.expand(rows)

    def reorder(self, cache: StaticKVCache, rows: Any) -> None:
        self._live(cache).reorder(rows)

    def crop(self, cache: StaticKVCache, length: int) -> None:
        self._live(cache).crop(length)

    def can_crop(self, cache: StaticKVCache, length: int) -> bool:
        return cache is self._cache and cache.croppable and 0 <= length <= len(cache)

    # -- graphs ----------------------------------------------------------------
    def warm_up(self) -> None:
        """Capture the one-row step now (on CUDA), so that the first answer does not wait.

        Starts a new cache: any cache handed out before becomes stale.
        """
        self._new_cache()
        if self.graphs:
            step = self._step(1)
            with torch.inference_mode():
                step.ids.zero_()
                step.pos.zero_()  # position 0 of an empty cache: overwritten by any prefill
                self._capture(step, 1)

    def _capture(self, step: _Step, rows: int) -> None:
        """Replace `step.run` by a graph replay; on failure warn once and stay eager."""
        step.captured = True
        what = "one row" if rows == 1 else f"{rows} rows"
        try:
            with self._busy(f"Capturing the decode step as a CUDA graph ({what}, once)"):
                step.run = capture_graph(step.run)
        except Exception as exc:  # any failure: eager decoding still gives the same tokens
            self.graphs = False
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._warn(f"CUDA graph capture failed ({reason}); decoding without graphs")

    def _step(self, rows: int) -> _Step:
        step = self._steps.get(rows)
        if step is None:
            with torch.inference_mode():
                ids = torch.zeros((rows, 1), dtype=torch.long, device=self.device)
                pos = torch.zeros(1, dtype=torch.long, device=self.device)
                logits = torch.zeros(
                    (rows, self.vocab_size), dtype=self.model.dtype, device=self.device
                )

            def run() -> None:  # the buffers are the same for every cache until reallocated
                cache = self._cache
                assert cache is not None
                logits.copy_(decode_step(self.model, cache, ids, pos, self.rope))

            step = self._steps[rows] = _Step(ids, pos, logits, run)
        return step

    # -- caches ----------------------------------------------------------------
    def _new_cache(self) -> StaticKVCache:
        old = self._cache
        if old is None:
            self._cache = StaticKVCache.allocate(self.model, self.max_len)
        else:  # same buffers, so the captured steps stay valid
            self._cache = StaticKVCache(old.keys, old.values, self.max_len)
        return self._cache

    def _live(self, cache: StaticKVCache) -> StaticKVCache:
        if cache is not self._cache:
            raise ValueError("this cache was superseded by a later prefill of the same model")
        return cache

    def _busy(self, message: str) -> AbstractContextManager[None]:
        return self.reporter.busy(message) if self.reporter is not None else nullcontext()

    def _warn(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.notify(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
