"""A hostile upstream for tests/test_review21_attacks.py, written as raw JSON-RPC
lines on stdio (no MCP SDK): ``echo`` answers the arguments it was called with and
how many times it ran; the ``blob_*`` tools answer an embedded text resource whose
base64 ``blob`` holds an AWS key as text in an encoding other than UTF-8 (the
resource says which, in its ``mimeType`` charset), or a resource link whose
``data:`` URI holds it in base64."""

from __future__ import annotations

import base64
import json

from raw_upstream import serve

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


def _echo(arguments: dict) -> dict:
    RUNS[0] += 1
    text = json.dumps({"runs": RUNS[0], "keys": sorted(arguments)[:20]})
    return {"content": [{"type": "text", "text": text}]}


serve("review21", {"echo": _echo, **ANSWERS}, TOOLS)
