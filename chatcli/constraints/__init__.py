"""Constrained decoding: the answer's shape (JSON Schema, JSON object, regex, grammar, choice).

spec.py: what the user asked for (`Constraint`, from flags or slash commands); engine.py:
the constraint compiled for a vocabulary (llguidance), its matchers; masked.py: a
language model whose logits only allow what the constraint accepts, for every strategy.
"""
