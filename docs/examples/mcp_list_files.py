"""An MCP server over stdio with one tool, `list_files(folder)`: the names in a folder
under the directory it was started in. The smallest server chatcli's README uses
(`chatcli ask --mcp 'python docs/examples/mcp_list_files.py' ...`); the Model Context
Protocol's stdio transport is one JSON-RPC message per line."""

import json
import os
import sys

TOOL = {"name": "list_files", "description": "The files in a folder of the project.",
        "inputSchema": {"type": "object", "properties": {"folder": {"type": "string"}},
                        "required": ["folder"], "additionalProperties": False}}


def list_files(folder: str) -> str:
    root = os.path.realpath(os.getcwd())
    path = os.path.realpath(os.path.join(root, folder))
    if path != root and not path.startswith(root + os.sep):
        raise ValueError("only folders inside the project")
    return "\n".join(sorted(os.listdir(path)))


for line in sys.stdin:
    message = json.loads(line)
    ident, method = message.get("id"), message.get("method")
    if ident is None:
        continue  # a notification
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "list-files", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        try:
            text, failed = list_files(**message["params"]["arguments"]), False
        except (OSError, ValueError, TypeError) as exc:
            text, failed = str(exc), True
        result = {"content": [{"type": "text", "text": text}], "isError": failed}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": ident,
                          "error": {"code": -32601, "message": f"no method {method}"}}),
              flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}), flush=True)
