"""A hostile upstream written as raw JSON-RPC lines on stdio (no MCP SDK, which
would refuse to send such answers): its tool ``again`` answers every call with an
``InputRequiredResult`` ("ask me again"), and ``count`` says how many calls of
``again`` arrived."""

from __future__ import annotations

import json
import sys

calls = 0


def answer(message: dict) -> dict | None:
    global calls
    method, ident = message.get("method"), message.get("id")
    if ident is None:
        return None  # a notification
    if method == "initialize":
        result: dict = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "raw", "version": "1"},
        }
    elif method == "tools/list":
        schema = {"type": "object"}
        result = {"tools": [{"name": n, "inputSchema": schema} for n in ("again", "count")]}
    elif method == "tools/call" and message["params"]["name"] == "again":
        calls += 1
        result = {"resultType": "input_required", "requestState": f"calls={calls}"}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": str(calls)}]}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": "no"}}
    return {"jsonrpc": "2.0", "id": ident, "result": result}


for line in sys.stdin:
    reply = answer(json.loads(line))
    if reply is not None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
