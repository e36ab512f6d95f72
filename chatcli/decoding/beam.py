"""Beam search over a `LanguageModel`, identical to transformers' `generate(num_beams=N)`.

Contract: `beam_search(lm, prompt_ids, num_beams=N, ...)` returns the same hypotheses, in the
same order and with the same scores, as transformers 5.x `generate(do_sample=False,
num_beams=N, length_penalty=..., early_stopping=..., num_return_sequences=...)` on a
decoder-only model (`sequences_scores` is our `Hypothesis.score`). Each step: the processors
run on the float32 log-softmax of the logits (as in transformers: *after* the softmax), the
running beam scores are added, the top `max(2, 1 + len(eos_ids)) * N` candidates are taken
with `torch.topk`; candidates ending in an EOS id (or at the token limit) among the first N
go to the finished set with score `logprob / generated_length ** length_penalty` (the length
counts the EOS token), the best N others keep running. The search stops when the finished set
cannot improve (transformers' heuristic, see `early_stopping`), when `early_stopping is True`
and N hypotheses are finished, or at the token limit. The prompt is prefilled once with one
row; no forward pass is run once the search is decided. Candidates scored at or below
half of transformers' "impossible" -1e9 (filler rows; tokens a constraint masked to -inf)
never become hypotheses, so fewer than `num_return_sequences` can come back.

It deliberately knows nothing about tokenization, text, streaming or the CLI: it maps token
ids to token ids. `pad_id` exists for parity with `generate()`, where it only fills the
fixed-size output tensor; hypotheses here are variable-length lists, so it is never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatcli.decoding.base import Hypothesis, Processor, PrunedBeam
from chatcli.lm.base import LanguageModel

_NEG = -1.0e9  # transformers' "impossible" score


@dataclass
class BeamResult:
    hypotheses: list[Hypothesis]  # best first, num_return_sequences of them
    pruned: list[PrunedBeam]  # only recorded when trace=True
    steps: int  # tokens chosen per beam (forward passes: 1 prefill + steps - 1)


def beam_search(
    lm: LanguageModel,
    prompt_ids: list[int],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_ids: frozenset[int],
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    processors: Sequence[Processor] = (),
    trace: bool = False,
    pad_id: int | None = None,
) -> BeamResult:
    import torch

    n = num_beams
    if n < 1 or max_new_tokens < 1 or not prompt_ids:
        raise ValueError("beam_search needs num_beams >= 1, max_new_tokens >= 1 and a prompt")
    if not 1 <= num_return_sequences <= n:
        raise ValueError(f"num_return_sequences must be in 1..{n} (got {num_return_sequences})")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never' (got {early_stopping!r})")
    dev, plen = lm.device, len(prompt_ids)
    k = max(2, 1 + len(eos_ids)) * n  # candidates kept per step, so n of them never end
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=dev)
    top_n = torch.arange(k, device=dev) < n  # only the first n candidates may finish
    # Running beams: token rows (prompt included, for processors) and summed log-probs; only
    # row 0 is live at first, so that the n identical rows do not yield n identical beams.
    seqs = torch.tensor([prompt_ids], dtype=torch.long, device=dev).repeat(n, 1)
    running = torch.full((n,), _NEG, dtype=torch.float32, device=dev)
    running[0] = 0.0
    # Finished set: n slots, sorted best first; empty slots hold _NEG and None.
    fin_scores = torch.full((n,), _NEG, dtype=torch.float32, device=dev)
    fin_done = torch.zeros(n, dtype=torch.bool, device=dev)
    fin: list[Hypothesis | None] = [None] * n
    pruned: list[PrunedBeam] = []

    logits, cache = lm.prefill(prompt_ids)
    lm.expand(cache, n)
    logits = logits.expand(n, -1)
    step = 0
    for step in range(1, max_new_tokens + 1):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for proc in processors:
            logprobs = proc(seqs, logprobs)
        vocab = logprobs.shape[-1]
        cand, idx = torch.topk((logprobs + running[:, None]).view(-1), k)
        src, tok = idx // vocab, idx % vocab
        hits = torch.isin(tok, eos) | (step >= max_new_tokens)

        # The n best candidates that do not end keep running (topk of the masked scores).
        masked = cand + hits.to(torch.float32) * _NEG
        keep = torch.topk(masked, n).indices
        beam_idx, next_tok = src[keep], tok[keep]

        # Ended candidates among the first n join the finished set if they rank in its top n;
        # never an impossible one (a filler row's, or one a constraint's -inf mask left in
        # the top k when it allows fewer continuations than k): it is no hypothesis.
        just = hits & top_n & (cand > _NEG / 2)
        normed = cand / (step**length_penalty) + (~just) * _NEG
        merged = torch.cat((fin_scores, normed))
        order = torch.topk(merged, n).indices
        order_l, cand_l, normed_l = order.tolist(), cand.tolist(), normed.tolist()
        just_l, tok_l, src_l = just.tolist(), tok.tolist(), src.tolist()
        old_fin, new_parents = fin, set()
        fin = []
        for j in order_l:
            if j < n:
                fin.append(old_fin[j])
                continue
            c = j - n
            if not just_l[c]:
                fin.append(None)  # a masked filler, never returned
                continue
            new_parents.add(src_l[c])
            tokens = [*seqs[src_l[c], plen:].tolist(), tok_l[c]]
            fin.append(Hypothesis(tokens, normed_l[c], cand_l[c], tok_l[c] in eos_ids))
        fin_scores = merged[order]
        fin_done = torch.cat((fin_done, just))[order]

        if trace:
            survivors = set(beam_idx.tolist()) | new_parents
            live = range(n) if step > 1 else range(1)
            scores_l = running.tolist()
            for b in live:
                if b not in survivors:
                    pruned.append(PrunedBeam(seqs[b, plen:].tolist(), scores_l[b], step))

        running = masked[keep]
        seqs = torch.cat((seqs[beam_idx], next_tok[:, None]), dim=1)
        # Stop when no running beam can beat the worst finished one (transformers' heuristic:
        # the best running score, normalised by the current length, or by the maximum length
        # for early_stopping="never" with a positive penalty), when early_stopping is True and
        # the finished set is full, or when every candidate ended (the token limit).
        hyp_len = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step
        best = running[:1] / (hyp_len**length_penalty)
        worst = torch.where(fin_done, fin_scores.min(), _NEG)
        improvable = bool((best > worst).any())
        full = early_stopping is True and bool(fin_done.all())
        if not improvable or full or bool(hits.all()):
            break
        lm.reorder(cache, beam_idx)
        logits, cache = lm.step(next_tok, cache)

    hyps = [h for h in fin[:num_return_sequences] if h is not None]
    return BeamResult(hypotheses=hyps, pruned=pruned, steps=step)
