"""The JSONSchemaBench sample under every strategy: no complete answer is ever invalid.

tests/data/jsonschemabench-sample/ holds 240 real-world schemas (its README says where they
come from and under which licences). Each one is compiled for the tiny random-weight test
model's tokenizer and decoded through `chatcli.generation.stream.stream(...,
constraint=...)` with at most MAX_NEW_TOKENS tokens. Random weights are the hardest case:
the model knows nothing of JSON, so every token that makes the answer JSON is the
constraint's doing. Every complete answer (`constraint_satisfied`, and for beam search
every returned hypothesis that finished) must parse and validate with `jsonschema`: the
validator the schema's `$schema` names, Draft 2020-12 when it names none, with format
checking on for the formats llguidance enforces (date-time, time, date, duration,
email, hostname, ipv4, ipv6, uuid) that `jsonschema` can check without optional packages.
An answer that ended with EOS must be complete (EOS is allowed only where the constraint
accepts). The schemas llguidance rejects are exactly REJECTED, each a `ConstraintError`
whose one line names the unsupported feature, raised by `stream()` before anything is
generated.

Default part (greedy): all 240 compiles plus greedy on the 233 that compile; 20-34 s
measured on 2 shared cores (load average 1.5-3), torch on 1 thread, plus the session's
tiny model (about 5 s, shared with other modules). Slow part (`-m slow`): sampling
(temperature 1, no filters) with seeds 0, 1, 2 and beam search with 3 beams (all 3
hypotheses returned), same schemas, prompt and limit; 20-48 s each, 92-152 s in all.
Measured coverage and completion (64 tokens):
- 233 / 240 compile (REJECTED: 4 unknown formats, 2 oneOf, 1 dependencies);
- complete answers: greedy 35 / 233, sampling 38, 23, 31 / 233, beam 174 of 692
  hypotheses (4 schemas leave room for fewer than 3: a const, true/false). The rest are
  cut short inside a long string (a random model rarely picks the closing quote). 117
  schemas have at least one complete answer over the five runs; complete answers under a
  `format` checked here: date, email, uuid (date-time, hostname and uri occur too, but
  `jsonschema` checks them only with optional packages not installed here).
Each test prints its counts (`pytest -rP` or `-s` shows them).

Knows nothing of how the constraint is compiled or applied: only `stream`'s contract.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chatcli.constraints.engine import HINTS, ConstraintError
from chatcli.constraints.spec import schema_constraint
from chatcli.decoding.registry import strategy_registry
from chatcli.decoding.settings import DecodingSettings, resolve_settings
from chatcli.generation.stream import stream
from chatcli.loader import LoadedModel
from conftest import Tiny, one_thread, tiny_loaded

DATA = Path(__file__).parent / "data" / "jsonschemabench-sample"
SCHEMAS = sorted(DATA.glob("*/*.json"))
MAX_NEW_TOKENS = 64
PROMPT = "Give an example JSON value for this schema:"
SEEDS = (0, 1, 2)
NUM_BEAMS = 3

# The formats llguidance enforces (its JSON schema converter; any other format is refused).
ENFORCED_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname",
                              "ipv4", "ipv6", "uuid"})

# What llguidance refuses in the sample, by file: the message names the feature.
ONE_OF = ("the JSON schema: oneOf constraints are not supported. Enable 'coerce_one_of' "
          "option to approximate oneOf with anyOf")
REJECTED = {
    "Github_easy/o85087.json": "the JSON schema: Unknown format: html-selector",
    "Github_easy/o89614.json": "the JSON schema: Unknown format: topic",
    "Github_medium/o67670.json": "the JSON schema: Unknown format: path",
    "Kubernetes/kb_933_Normalized.json": "the JSON schema: Unknown format: byte",
    "Github_medium/o79018.json": ONE_OF,
    "Github_trivial/o60129.json": ONE_OF,
    "Glaiveai2K/calculate_area_518cb15d.json":
        'the JSON schema: Unimplemented keys: ["dependencies"]',
}


@dataclass(frozen=True)
class Answer:
    """One answer (or one beam hypothesis) to a schema."""

    text: str
    complete: bool  # constraint_satisfied, or a beam hypothesis that finished
    ended_with_eos: bool
    score: float = 0.0  # a beam hypothesis's score


@dataclass
class Sweep:
    """One strategy over every schema."""

    label: str
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # compiled schemas
    rejected: dict[str, ConstraintError] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        answers = [a for found in self.answers.values() for a in found]
        complete = sum(a.complete for a in answers)
        return (f"{self.label}: {len(self.answers)} / {len(SCHEMAS)} schemas compiled; "
                f"{complete} of {len(answers)} answers complete within {MAX_NEW_TOKENS} "
                f"tokens; {self.seconds:.1f} s")


def name_of(path: Path) -> str:
    return path.relative_to(DATA).as_posix()


@pytest.fixture(scope="module")
def loaded(tiny_model: Tiny) -> Iterator[LoadedModel]:
    with one_thread():
        yield tiny_loaded(tiny_model)


def sweep(loaded: LoadedModel, settings: DecodingSettings, label: str) -> Sweep:
    """Every schema under `settings`: its answers, or why it was refused."""
    prompt = loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    out = Sweep(label)
    start = time.perf_counter()
    for path in SCHEMAS:
        constraint = schema_constraint(str(path))
        try:
            gen = stream(loaded, prompt, settings, MAX_NEW_TOKENS, constraint=constraint)
        except ConstraintError as exc:
            out.rejected[name_of(path)] = exc
            continue
        for _ in gen:
            pass
        eos = loaded.eos_ids
        if gen.hypotheses:
            found = [Answer(h.text, h.finished, bool(h.token_ids) and h.token_ids[-1] in eos,
                            h.score) for h in gen.hypotheses]
            assert found[0].complete <= bool(gen.constraint_satisfied), name_of(path)
        else:
            found = [Answer(gen.text, bool(gen.constraint_satisfied),
                            gen.stats.finish_reason == "stop")]
        out.answers[name_of(path)] = found
    out.seconds = time.perf_counter() - start
    print(out.summary())
    return out


def why_invalid(schema: Any, text: str) -> str | None:
    """Why `text` is not a valid instance of `schema` (None: it is)."""
    import jsonschema
    from jsonschema.validators import validator_for

    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers = {k: v for k, v in cls.FORMAT_CHECKER.checkers.items()
                        if k in ENFORCED_FORMATS}
    error = jsonschema.exceptions.best_match(
        cls(schema, format_checker=checker).iter_errors(value))
    return None if error is None else f"{error.message[:200]} at {list(error.absolute_path)}"


def check(result: Sweep) -> None:
    """Zero invalid complete answers; every answer that ended with EOS is complete; the
    refusals are exactly REJECTED, each with the schema hint."""
    invalid: list[str] = []
    for name, answers in result.answers.items():
        schema = json.loads((DATA / name).read_text())
        for i, answer in enumerate(answers):
            if answer.ended_with_eos and not answer.complete:
                invalid.append(f"{name} #{i}: ended with EOS but incomplete: {answer.text!r}")
            if answer.complete and (why := why_invalid(schema, answer.text)) is not None:
                invalid.append(f"{name} #{i}: {why}: {answer.text[:300]!r}")
    assert invalid == [], f"{result.label}: {len(invalid)} invalid:\n" + "\n".join(invalid)
    assert {k: (e.message, e.hint) for k, e in result.rejected.items()} == {
        k: (m, HINTS["json_schema"]) for k, m in REJECTED.items()}
    assert len(result.answers) == len(SCHEMAS) - len(REJECTED)


def settings_for(strategy: str, **flags: Any) -> DecodingSettings:
    options = {"num_return_sequences": str(NUM_BEAMS)} if strategy == "beam" else None
    return resolve_settings(strategy_registry(), strategy=strategy, flags=flags,
                            options=options)


# ------------------------------------------------------------------------------ default


def test_the_sample_is_in_the_repository() -> None:
    assert len(SCHEMAS) == 240
    assert {p.parent.name for p in SCHEMAS} == {"Github_easy", "Github_medium",
                                                "Github_trivial", "Glaiveai2K", "Kubernetes"}


def test_greedy_on_every_schema(loaded: LoadedModel) -> None:
    """All 240 compiled, greedy on the 233 that compile (42 complete within 64 tokens)."""
    result = sweep(loaded, settings_for("greedy"), "greedy")
    check(result)
    # Not vacuous: a good share of the answers must be complete (42 measured).
    assert sum(a.complete for found in result.answers.values() for a in found) >= 15


# --------------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_sampling_on_every_schema(loaded: LoadedModel, seed: int) -> None:
    """Sampling (temperature 1, no filters) with a fixed seed, every schema."""
    result = sweep(loaded, settings_for("sample", seed=seed), f"sample, seed {seed}")
    check(result)
    assert sum(a.complete for found in result.answers.values() for a in found) >= 10


@pytest.mark.slow
def test_beam_on_every_schema(loaded: LoadedModel) -> None:
    """Beam search, 3 beams, all 3 hypotheses returned: each one that finished validates."""
    result = sweep(loaded, settings_for("beam", num_beams=NUM_BEAMS), f"beam-{NUM_BEAMS}")
    check(result)
    # Fewer than 3 come back where the schema allows fewer texts (a const, true/false),
    # never an impossible one.
    assert all(1 <= len(found) <= NUM_BEAMS for found in result.answers.values())
    assert all(math.isfinite(a.score) for found in result.answers.values() for a in found)
    assert sum(a.complete for found in result.answers.values() for a in found) >= 60
