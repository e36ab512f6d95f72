"""The static-cache decode step gives the eager forward pass's tokens (CPU, float32).

`GraphedLanguageModel` on CPU runs `decode_step` eagerly, which is what CUDA
captures as a graph; here it is compared with `NativeLanguageModel` (the eager
`NativeCausalLM.forward` over a growing `KVCache`) on the tiny random-weight
model: every step's logits agree to float32 rounding (the static step's attention
sums over the whole buffer, masked, so the last bits differ) and greedy tokens,
beam hypotheses and chat answers are identical.

"Float32 rounding" is measured, not guessed: the `tol` fixture runs the eager model
in float32 and in float64 on the same tokens, and the largest logit difference is
this CPU's float32 error for this computation (about 1.6e-5 on an AVX-512/AMX Xeon;
it depends on the kernels: AVX2, AVX-512 and oneDNN's AMX paths sum in different
orders). Two float32 runs that are each that close to the exact result differ by at
most twice as much; the tolerance is four times the measured error. A bug (a wrong
mask, position or cache row) moves logits by 1e-2 or more. Greedy tokens must be
equal except after a near-tie (a top-2 gap within the tolerance), where two correct
float32 runs may legitimately choose differently. The graph machinery itself is
exercised by replacing `capture_graph`: with a fake that "replays" the eager run
(static inputs, per-row-count capture, busy progress) and with one that raises
(one warning, eager fallback).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from chatcli.decoding.base import DecodeContext
from chatcli.decoding.beam_strategy import Beam, BeamParams
from chatcli.errors import ContextOverflowError
from chatcli.generation.prompt_cache import PromptCache
from chatcli.lm import graphs
from chatcli.lm.graphs import GraphedLanguageModel, StaticKVCache
from chatcli.lm.llama import NativeCausalLM
from chatcli.lm.native import NativeLanguageModel
from conftest import Tiny, printed, reference_generate, run_cli

TOL: dict[str, float] = {}  # set by the `tol` fixture: {"rtol": 0, "atol": measured}
MARGIN = 4  # two float32 runs, each within the measured error of the exact logits, x2


@pytest.fixture(scope="module")
def model(tiny_model: Tiny) -> NativeCausalLM:
    return NativeCausalLM.from_folder(tiny_model.folder, torch.float32)


def _teacher_forced(lm: Any, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    logits, cache = lm.prefill(prompt)
    seen = [logits]
    for token in tokens:
        logits, cache = lm.step(torch.tensor([token]), cache)
        seen.append(logits)
    return seen


def float32_error(tiny_model: Tiny, model: NativeCausalLM) -> float:
    """The largest |logit| difference between the eager float32 model and the same
    model in float64, over a greedy run through most of the context window."""
    exact = NativeLanguageModel(NativeCausalLM.from_folder(tiny_model.folder, torch.float64))
    error = 0.0
    for length, steps in ((1, 200), (150, 100)):
        prompt = _prompt(length, seed=length)
        tokens, seen = _greedy(NativeLanguageModel(model), prompt, steps)
        for ours, ref in zip(seen, _teacher_forced(exact, prompt, tokens), strict=True):
            error = max(error, float((ours.double() - ref).abs().max()))
    return error


@pytest.fixture(scope="module", autouse=True)
def tol(tiny_model: Tiny, model: NativeCausalLM) -> dict[str, float]:
    error = float32_error(tiny_model, model)
    assert 0 < error < 1e-3, error  # float32 rounding, not a broken float64 reference
    TOL.update(rtol=0.0, atol=MARGIN * error)
    return TOL


def _prompt(length: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (length,), generator=generator).tolist()


def _greedy(lm: Any, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    logits, cache = lm.prefill(prompt)
    tokens, seen = [], [logits]
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        logits, cache = lm.step(torch.tensor(tokens[-1:]), cache)
        seen.append(logits)
    return tokens, seen


def _assert_same(ours: tuple[list[int], list[torch.Tensor]], eager: Any) -> None:
    """Same tokens and logits within `TOL`; after a near-tie (the eager top-2 gap within
    the tolerance) the runs may part, and only the steps before it are compared."""
    steps = len(eager[1])
    for i, (a, b) in enumerate(zip(ours[0], eager[0], strict=True)):
        if a != b:
            top = eager[1][i].flatten().topk(2).values
            assert float(top[0] - top[1]) <= 2 * TOL["atol"], f"step {i}: {a} != {b}"
            steps = i + 1
            break
    for a, b in zip(ours[1][:steps], eager[1][:steps], strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize(("length", "steps"), [(1, 80), (5, 40), (17, 60), (64, 30), (150, 20)])
def test_greedy_matches_eager(model: NativeCausalLM, length: int, steps: int) -> None:
    prompt = _prompt(length, seed=length)
    graphed = GraphedLanguageModel(model, 256)
    eager = NativeLanguageModel(model)
    _assert_same(_greedy(graphed, prompt, steps), _greedy(eager, prompt, steps))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_fused_layers(tiny_model: Tiny, mode: str) -> None:
    """Quantized models fuse q/k/v and gate/up; the static step reads them the same way."""
    quantized = NativeCausalLM.from_folder(tiny_model.folder, torch.float32)
    quantized.quantize(mode)
    assert quantized.layers[0].qkv is not None
    prompt = _prompt(12, seed=9)
    graphed, eager = GraphedLanguageModel(quantized, 64), NativeLanguageModel(quantized)
    _assert_same(_greedy(graphed, prompt, 25), _greedy(eager, prompt, 25))


def test_static_cache_holds_the_eager_keys(model: NativeCausalLM) -> None:
    prompt = _prompt(20)
    graphed, eager = GraphedLanguageModel(model, 45), NativeLanguageModel(model)
    _, cache = graphed.prefill(prompt)
    _, eager_cache = eager.prefill(prompt)
    graphed.step(torch.tensor([7]), cache)
    eager.step(torch.tensor([7]), eager_cache)
    assert isinstance(cache, StaticKVCache) and len(cache) == len(eager_cache) == 21
    assert cache.keys[0].shape == (1, model.kv_heads, 48, model.head_dim)  # 45 rounded up to 16s
    for ours, theirs in zip(cache.keys + cache.values, eager_cache.keys + eager_cache.values,
                            strict=True):
        assert theirs is not None
        torch.testing.assert_close(ours[:, :, :21], theirs[:, :, :21], **TOL)


def test_crop_then_continue(model: NativeCausalLM) -> None:
    prompt = _prompt(30)
    runs = []
    for lm in (GraphedLanguageModel(model, 128), NativeLanguageModel(model)):
        logits, cache = lm.prefill(prompt)
        for token in (5, 9, 11, 13):
            logits, cache = lm.step(torch.tensor([token]), cache)
        lm.crop(cache, 25)
        logits, cache = lm.prefill([*prompt[25:], 40, 41], cache)  # re-feed after the crop
        tokens, seen = [], [logits]
        for _ in range(20):
            tokens.append(int(logits[0].argmax()))
            logits, cache = lm.step(torch.tensor(tokens[-1:]), cache)
            seen.append(logits)
        assert len(cache) == 52
        runs.append((tokens, seen))
    _assert_same(*runs)


def test_prompt_cache_across_turns(model: NativeCausalLM) -> None:
    first, follow_up = _prompt(24, seed=1), _prompt(9, seed=2)
    runs = []
    for lm in (GraphedLanguageModel(model, 160), NativeLanguageModel(model)):
        cached = PromptCache(lm)
        answer, seen = _greedy(cached, first, 12)
        second, seen2 = _greedy(cached, first + answer + follow_up, 12)
        assert cached.reused == len(first) + len(answer)  # _greedy feeds its last token too
        runs.append((answer + second, seen + seen2))
    _assert_same(*runs)


def _beam(lm: Any, prompt: list[int], beams: int, n: int = 12) -> list[tuple[list[int], float]]:
    ctx = DecodeContext(max_new_tokens=n, eos_ids=frozenset({2, 17}))
    params = BeamParams(num_beams=beams, num_return_sequences=beams)
    found = [s.hypotheses for s in Beam().decode(lm, prompt, params, ctx) if s.hypotheses]
    return [(h.token_ids, h.score) for h in found[0].ranked]


def _assert_same_beams(ours: list[tuple[list[int], float]], theirs: Any) -> None:
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    # A score is a mean log-probability (length_penalty 1): each log-softmax is off by at
    # most twice the logits' tolerance.
    assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], rel=0,
                                                 abs=2 * TOL["atol"])


def test_beam_search_matches_eager(model: NativeCausalLM) -> None:
    graphed, eager = GraphedLanguageModel(model, 128), NativeLanguageModel(model)
    # 2 then 4 beams: the second search needs room for more rows (new buffers, new steps);
    # then greedy again over the reallocated buffers.
    for beams, seed in ((2, 3), (4, 4), (3, 5)):
        prompt = _prompt(15, seed)
        _assert_same_beams(_beam(graphed, prompt, beams), _beam(eager, prompt, beams))
    assert graphed._cache is not None and graphed._cache.capacity_rows == 4
    prompt = _prompt(10, seed=6)
    _assert_same(_greedy(graphed, prompt, 15), _greedy(eager, prompt, 15))


def test_expand_and_reorder(model: NativeCausalLM) -> None:
    prompt = _prompt(12)
    runs = []
    for lm in (GraphedLanguageModel(model, 64), NativeLanguageModel(model)):
        _, cache = lm.prefill(prompt)
        lm.expand(cache, 3)
        a, cache = lm.step(torch.tensor([1, 2, 3]), cache)
        lm.reorder(cache, torch.tensor([2, 0, 0]))
        b, cache = lm.step(torch.tensor([4, 4, 4]), cache)
        lm.reorder(cache, torch.tensor([1, 2]))  # fewer rows
        c, cache = lm.step(torch.tensor([5, 6]), cache)
        runs.append(([], [a, b, c]))
    _assert_same(*runs)
    torch.testing.assert_close(runs[0][1][1][1], runs[0][1][1][2], **TOL)  # rows 0, 0 agree


def test_fills_up_to_max_len_then_refuses(model: NativeCausalLM) -> None:
    max_len, prompt = 45, _prompt(38)
    graphed = GraphedLanguageModel(model, max_len)
    ours = _greedy(graphed, prompt, max_len - len(prompt))  # the last step fills position 44
    _assert_same(ours, _greedy(NativeLanguageModel(model), prompt, max_len - len(prompt)))
    logits, cache = graphed.prefill(prompt)
    for _ in range(max_len - len(prompt)):
        logits, cache = graphed.step(torch.tensor([int(logits[0].argmax())]), cache)
    assert len(cache) == max_len
    with pytest.raises(ContextOverflowError, match="context window of 45"):
        graphed.step(torch.tensor([1]), cache)
    assert len(cache) == max_len
    with pytest.raises(ContextOverflowError):
        graphed.prefill(_prompt(46))
    _, cache = graphed.prefill(prompt)
    with pytest.raises(ContextOverflowError):
        graphed.prefill(_prompt(8), cache)
    assert len(cache) == len(prompt)


def test_stale_and_mismatched_caches_are_refused(model: NativeCausalLM) -> None:
    graphed = GraphedLanguageModel(model, 64)
    _, old = graphed.prefill(_prompt(5))
    _, new = graphed.prefill(_prompt(6))
    with pytest.raises(ValueError, match="superseded"):
        graphed.step(torch.tensor([1]), old)
    with pytest.raises(ValueError, match="1 rows, input has 2"):
        graphed.step(torch.tensor([1, 2]), new)
    with pytest.raises(ValueError):
        graphed.crop(new, 7)
    graphed.expand(new, 2)
    with pytest.raises(ValueError, match="only a 1-row cache"):
        graphed.expand(new, 3)


class _Reporter:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.busy_messages: list[str] = []

    def notify(self, message: str) -> None:
        self.notes.append(message)

    def warn(self, message: str) -> None:
        self.notes.append(message)

    @contextmanager
    def busy(self, message: str) -> Iterator[None]:
        self.busy_messages.append(message)
        yield


def test_captured_steps_replay_the_static_step(
    model: NativeCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What runs on CUDA, with the graph replaced by the eager run it would record."""
    captured: list[int] = []

    def fake_capture(run: Any, warmup_runs: int = 3) -> Any:
        for _ in range(warmup_runs):
            run()  # as on CUDA: the warm-up really runs, at the step's own position
        captured.append(1)
        return run

    monkeypatch.setattr(graphs, "capture_graph", fake_capture)
    reporter = _Reporter()
    graphed = GraphedLanguageModel(model, 128, reporter, graphs=True)
    graphed.warm_up()
    assert len(captured) == 1 and reporter.busy_messages == [
        "Capturing the decode step as a CUDA graph (one row, once)"
    ]
    eager = NativeLanguageModel(model)
    prompt = _prompt(20, seed=7)
    _assert_same(_greedy(graphed, prompt, 30), _greedy(eager, prompt, 30))
    assert len(captured) == 1  # the warm-up's graph serves every position
    _assert_same_beams(_beam(graphed, prompt, 3), _beam(eager, prompt, 3))
    assert len(captured) == 2 and "(3 rows, once)" in reporter.busy_messages[-1]
    _assert_same(_greedy(graphed, prompt, 10), _greedy(eager, prompt, 10))
    assert len(captured) == 3  # the 1-row step again, over the buffers grown for 3 rows
    assert reporter.notes == []


def test_capture_failure_warns_once_and_decodes_eagerly(
    model: NativeCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def failing(run: Any, warmup_runs: int = 3) -> Any:
        calls.append(1)
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(graphs, "capture_graph", failing)
    eager = NativeLanguageModel(model)
    prompt = _prompt(16, seed=8)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed") as record:
        graphed = GraphedLanguageModel(model, 128, graphs=True)
        _assert_same(_greedy(graphed, prompt, 20), _greedy(eager, prompt, 20))
        _beam(graphed, prompt, 3)
    assert len(record) == 1 and len(calls) == 1 and not graphed.graphs
    assert "more detail" not in str(record[0].message)

    reporter = _Reporter()
    graphed = GraphedLanguageModel(model, 128, reporter, graphs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a reporter, nothing goes to `warnings`
        graphed.warm_up()
        _assert_same(_greedy(graphed, prompt, 20), _greedy(eager, prompt, 20))
    assert reporter.notes == [
        "CUDA graph capture failed (operation not permitted when stream is capturing); "
        "decoding without graphs"
    ]


def test_the_static_step_uses_only_the_models_public_pass() -> None:
    """graphs.py brings its cache write and attention kernel; the layers are the model's."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(graphs))
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and isinstance(node.value, ast.Name) and node.value.id == "model"
                      and node.attr.startswith("_")})
    assert private == []
    step = ast.parse(inspect.getsource(graphs.decode_step))
    assert not [node for node in ast.walk(step) if isinstance(node, ast.For)]  # no layer loop


def test_wanted_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(graphs.DISABLE_ENV, raising=False)
    assert graphs.wanted("cuda") and graphs.wanted(torch.device("cuda", 0))
    assert not graphs.wanted("cpu") and not graphs.wanted("mps")
    monkeypatch.setenv(graphs.DISABLE_ENV, "1")
    assert not graphs.wanted("cuda")


def test_loader_wraps_the_native_model_where_graphs_are_wanted(
    cli: Any, tiny_model: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA code path of the loader, on CPU: `chatcli ask` still prints generate()'s answer."""
    built: list[GraphedLanguageModel] = []
    original = graphs.GraphedLanguageModel

    def recording(*args: Any, **kwargs: Any) -> GraphedLanguageModel:
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(graphs, "wanted", lambda device: True)
    monkeypatch.setattr(graphs, "GraphedLanguageModel", recording)
    messages = [{"role": "user", "content": "Hello there"}]
    tok, out, _ = reference_generate(tiny_model, messages, max_new_tokens=24)
    new = out[0].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id) + 1]
    result = run_cli(["ask", "-n", "24", "Hello there"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(tok.decode(new, skip_special_tokens=True))
    assert len(built) == 1 and built[0].max_len == 256  # the model's context window
