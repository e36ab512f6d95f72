"""Tools: the user's Python functions that a model may call while it answers.

Layout: `functions` (a Python file's or module's functions as `Tool`s: name, description
and a JSON schema of the arguments, from the signature and docstring), `calls` (the call
format the model writes, the instructions that teach it, the constraint that makes every
call it writes name a real tool with arguments that validate, and reading a call back),
`runner` (running one call: consent, a timeout, a cap on what comes back, and any
failure turned into a result the model reads), `mcp` (MCP servers over stdio, their
tools), `loop` (call, result, the model again, until it answers in words). The
conversation and the terminal are the commands' and the UI layer's.
"""
