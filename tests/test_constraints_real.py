"""Issue 14's "done when" on the real default model, offline: a JSON Schema answer that
validates, what the schema removed, beam and sampling under it (slow: CI runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

# Every value bounded, so that any answer the constraint allows ends well within the token
# limit, whatever a sampler draws on whichever CPU.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "born": {"type": "integer", "minimum": 0, "maximum": 2100},
        "occupation": {"type": "string", "maxLength": 40},
        "known_for": {"type": "array", "items": {"type": "string", "maxLength": 40},
                      "maxItems": 3},
    },
    "required": ["name", "born", "occupation", "known_for"], "additionalProperties": False,
}


@pytest.fixture
def person(tmp_path: Path) -> Path:
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON))
    return path


@pytest.mark.parametrize("flags", [[], ["-S", "sample", "--seed", "3"],
                                   ["-S", "beam", "--num-beams", "3"]],
                         ids=["greedy", "sample", "beam"])
def test_the_answer_validates(real: Path, person: Path, flags: list[str]) -> None:
    result = run_cli(["ask", "--schema", str(person), "--json", *flags,
                      "Describe Ada Lovelace"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["constraint_satisfied"] is True and out["finish_reason"] == "stop"
    jsonschema.validate(out["parsed"], PERSON)
    assert out["parsed"] == json.loads(out["text"])
    if not flags:  # greedy: the model names her as the prompt does
        assert out["parsed"]["name"] == "Ada Lovelace"


def test_show_candidates_shows_what_the_schema_removed(real: Path, person: Path) -> None:
    result = run_cli(["ask", "--schema", str(person), "--show-candidates", "5",
                      "Describe Ada Lovelace"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    jsonschema.validate(json.loads(lines[0]), PERSON)
    assert lines[1].split()[:7] == ["step", "token", "p", "(drawn)", "p", "(model)", "entropy"]
    assert "removed" in lines[1] and "(✗ removed)" in lines[1]
    first = lines[2].split()
    assert first[1] == "'{\"'" and float(first[5]) > 0.5  # the model wanted words, not JSON
    assert "✗" in lines[2]
