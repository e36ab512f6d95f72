"""Speculative decoding: draft several tokens cheaply, verify them in one forward pass.

`spelling` reads `--speculate` (ngram[:N] or ALIAS[:N]); `drafters` proposes tokens
(prompt lookup, or a draft model); `schedule` decides how many to draft each round;
`loop` verifies the drafts with the target model and emits exactly what the strategy
would have chosen; `figures` holds what it did (`SpeculationStats`).
"""
