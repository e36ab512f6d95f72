"""What `ask --json` prints of one answer: `answer_record`.

Contract: the record's keys are the ones `ask --help` lists; optional ones appear only
with what produced them (attachments, an alternative taken with --alt, a constraint and,
for a JSON shape met, the parsed value, hypotheses, per-token candidates, pruned beams,
attention per turn). Token ids are given where the backend has the capability
`token_ids`, else null. Knows nothing about the terminal: the command prints the record.
"""

from __future__ import annotations

import json
from typing import Any


def answer_record(gen: Any, *, alias: str, backend: Any, settings: Any, raw: bool,
                  attachments: list[dict[str, Any]] | None = None,
                  alternative: tuple[Any, Any] | None = None, constraint: Any = None,
                  events: list[Any] | None = None, token_text: Any = None,
                  pruned: bool = False, spans: list[Any] | None = None,
                  tool_calls: list[dict[str, Any]] | None = None,
                  tool_decision: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of `gen` (a finished `chatcli.answer.Generation`). `alternative`: (the
    step taken another way, the original answer); `events` with `token_text`: the
    per-token candidates (--show-candidates); `pruned`: the beams the search left
    (--show-beams); `spans`: attention per turn (--explain-context)."""
    s = gen.stats
    ids = backend.capabilities.token_ids
    out: dict[str, Any] = {
        "text": gen.text,
        "model": alias,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "time_to_first_token_s": round(s.time_to_first_token_s, 4),
        "tokens_per_second": round(s.decode_tokens_per_s, 2),
        "finish_reason": s.finish_reason,
        "token_ids": gen.token_ids if ids else None,
        "decoding": settings.as_dict(),
        "implementation": {  # native | transformers (and why) | remote
            "name": backend.implementation_name,
            "reason": backend.implementation_note or None,
        },
        "raw": raw,  # a text completion, without the chat template
    }
    if gen.thinking_tokens:  # a reasoning model's thinking, apart from `text`
        out["thinking"] = gen.thinking
        out["thinking_tokens"] = gen.thinking_tokens
        out["thinking_budget_hit"] = gen.budget_hit
    if s.speculation is not None:  # --speculate: what was drafted and accepted
        out["speculation"] = s.speculation.as_dict()
    if tool_calls is not None:  # the calls the answer made first, in order (--tool)
        out["tool_calls"] = tool_calls
    if tool_decision is not None:  # --show-candidates: a call or words, which tool
        out["tool_decision"] = tool_decision
    if attachments:
        out["attachments"] = attachments
    if alternative is not None:
        taken, original = alternative
        out["alternative"] = {
            "step": taken.step, "rank": taken.rank, "token_id": taken.token_id,
            "probability": taken.prob, "original_token_id": taken.original_id,
            "original_rank": taken.original_rank, "original_text": original.text,
            "original_token_ids": original.token_ids}
    if constraint is not None:
        out["constraint"] = constraint.as_dict()
        out["constraint_satisfied"] = gen.constraint_satisfied
        if constraint.is_json and gen.constraint_satisfied:
            out["parsed"] = json.loads(gen.text)
    if gen.hypotheses:
        out["hypotheses"] = [h.as_dict() for h in gen.hypotheses]
    if events is not None:
        from chatcli.ui.candidates import token_records

        out["tokens"] = token_records(events, token_text, ids=ids)
    if pruned:
        out["pruned_beams"] = [b.as_dict() for b in gen.pruned]
    if spans is not None:
        out["context_attention"] = [
            {"span": sp.label, "message": sp.index, "tokens": sp.end - sp.start,
             "attention": sp.attention} for sp in spans
        ]
    return out
