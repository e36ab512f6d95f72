"""Generation, layered: model forward steps → token stream → text stream with
metadata (`StepEvent`s and `Stats`) → the `complete()` convenience wrapper."""
