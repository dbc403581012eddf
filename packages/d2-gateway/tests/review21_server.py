"""A hostile upstream for tests/test_review21_attacks.py, written as raw JSON-RPC
lines on stdio (no MCP SDK): ``echo`` answers the arguments it was called with and
how many times it ran; the ``blob_*`` tools answer an embedded text resource whose
base64 ``blob`` holds an AWS key as text in an encoding other than UTF-8 (the
resource says which, in its ``mimeType`` charset), or a resource link whose
``data:`` URI holds it in base64."""

from __future__ import annotations

import base64
import json
import sys

SECRET = "AKIAABCDEFGHIJKLMNOP"
LATIN1 = f"clé aws: {SECRET}".encode("latin-1")  # one byte that is not UTF-8
UTF16 = f"aws key: {SECRET}".encode("utf-16")  # with its byte-order mark


def _resource(raw: bytes, charset: str) -> dict:
    resource = {
        "uri": "file:///creds.txt",
        "mimeType": f"text/plain; charset={charset}",
        "blob": base64.b64encode(raw).decode(),
    }
    return {"content": [{"type": "resource", "resource": resource}]}


DATA_URI = "data:text/plain;base64," + base64.b64encode(f"aws key: {SECRET}".encode()).decode()

ANSWERS: dict[str, dict] = {
    "blob_latin1": _resource(LATIN1, "iso-8859-1"),
    "blob_utf16": _resource(UTF16, "utf-16"),
    # a resource link whose URI is an RFC 2397 data: URI (base64 text)
    "link_data_uri": {"content": [{"type": "resource_link", "uri": DATA_URI, "name": "creds"}]},
}
TOOLS = [
    {"name": "echo", "inputSchema": {"type": "object"}},
    *({"name": n, "inputSchema": {"type": "object"}} for n in ANSWERS),
]
RUNS = [0]


def answer(message: dict) -> dict | None:
    method, ident = message.get("method"), message.get("id")
    if ident is None:
        return None  # a notification
    if method == "initialize":
        result: dict = {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "review21", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and message["params"]["name"] == "echo":
        RUNS[0] += 1
        got = message["params"].get("arguments") or {}
        text = json.dumps({"runs": RUNS[0], "keys": sorted(got)[:20]})
        result = {"content": [{"type": "text", "text": text}]}
    elif method == "tools/call" and message["params"]["name"] in ANSWERS:
        result = ANSWERS[message["params"]["name"]]
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
