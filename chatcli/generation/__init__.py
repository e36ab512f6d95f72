"""Generation's text layer: a strategy's token stream becomes `StepEvent`s with text
deltas and stats (`stream.py`: detokenizer, stop strings), with KV-cache reuse across
turns (`prompt_cache.py`). Token choice lives in `chatcli.decoding`, forward passes in
`chatcli.lm`."""
