"""A hostile upstream MCP server written as raw JSON-RPC lines on stdio, with no
MCP SDK (which would refuse to send such answers), for the review attack tests:
``serve(name, answers)`` answers ``initialize``, ``tools/list``, ``tools/call``
and ``ping`` until stdin closes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

Answer = Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]]
"""A tool's result: a fixed JSON object, or a function of the call's arguments."""


def serve(
    name: str, answers: Mapping[str, Answer], tools: list[dict[str, Any]] | None = None
) -> None:
    """Serve ``answers`` (tool name -> result) as upstream ``name``; ``tools`` is
    the listing (default: every answer, taking any object)."""
    listing = tools or [{"name": n, "inputSchema": {"type": "object"}} for n in answers]

    def answer(message: dict[str, Any]) -> dict[str, Any] | None:
        method, ident = message.get("method"), message.get("id")
        if ident is None:
            return None  # a notification
        params = message.get("params") or {}
        result: Any
        if method == "initialize":
            result = {
                "protocolVersion": params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": name, "version": "1"},
            }
        elif method == "tools/list":
            result = {"tools": listing}
        elif method == "tools/call" and params.get("name") in answers:
            found = answers[params["name"]]
            result = found(params.get("arguments") or {}) if callable(found) else found
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
