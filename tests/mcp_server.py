"""A small MCP server over stdio for the tests (JSON-RPC 2.0, one message per line).

Tools: `shout(text)` (the text in capitals) and `fail_now(why)` (a result marked
isError). Its first argument chooses a fault: `die` (exits at initialize, saying why on
stderr), `garbage` (answers initialize with a line that is not JSON), `silent` (never
answers), `die-on-call` (exits when a tool is called); anything else: well behaved.
"""

import json
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "ok"
TOOLS = [
    {"name": "shout", "description": "The text in capital letters.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string",
                                                                "enum": ["hi", "bye"]}},
                     "required": ["text"], "additionalProperties": False}},
    {"name": "fail_now", "description": "Always fails.",
     "inputSchema": {"type": "object", "properties": {"why": {"type": "boolean"}},
                     "required": ["why"], "additionalProperties": False}},
]


def reply(ident, result):
    print(json.dumps({"jsonrpc": "2.0", "id": ident, "result": result}), flush=True)


for line in sys.stdin:
    message = json.loads(line)
    method, ident = message.get("method"), message.get("id")
    if method == "initialize":
        if MODE == "die":
            print("cannot open the database", file=sys.stderr, flush=True)
            sys.exit(3)
        if MODE == "garbage":
            print("Welcome to my server!", flush=True)
            continue
        if MODE == "silent":
            time.sleep(60)
        print(json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                          "params": {"level": "info", "data": "starting"}}), flush=True)
        reply(ident, {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "test", "version": "1"}})
    elif method == "tools/list":
        if message.get("params", {}).get("cursor") == "2":
            reply(ident, {"tools": TOOLS[1:]})
        else:
            reply(ident, {"tools": TOOLS[:1], "nextCursor": "2"})
    elif method == "tools/call":
        if MODE == "die-on-call":
            sys.exit(1)
        name, args = message["params"]["name"], message["params"]["arguments"]
        if name == "shout":
            reply(ident, {"content": [{"type": "text", "text": args["text"].upper()}]})
        else:
            reply(ident, {"content": [{"type": "text", "text": "it failed"}], "isError": True})
