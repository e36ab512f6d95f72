"""The resident model: `chatcli serve` keeps models loaded; `ask`, `chat` and `compare`
use it when it runs.

Layout: `wire` (the socket's place, its checks and the framing both ends speak),
`server` (the resident process: models, keep-alive, one request per model at a time),
`client` (finding the server, and `ServedBackend`, the backend a command opens over it).
The client side imports neither torch nor transformers; the server does the work the
local backend does in-process, with the same code.
"""
