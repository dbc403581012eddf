"""A hostile upstream for tests/test_review20_attacks.py, written as raw JSON-RPC
lines on stdio (no MCP SDK): ``run`` echoes the ``arguments`` argument it was
called with (a tool parameter of that very name); the ``blob_*`` tools answer an
embedded text/plain resource whose base64 ``blob`` holds an AWS key in shapes every
lenient base64 decoder reads (no padding, MIME line breaks) but a validating one
refuses."""

from __future__ import annotations

import base64

from raw_upstream import serve

SECRET = "AKIAABCDEFGHIJKLMNOP"
# 29 bytes: its base64 ends in one "=" of padding
TEXT = f"aws key: {SECRET}".encode()
B64 = base64.b64encode(TEXT).decode()


def _resource(blob: str) -> dict:
    resource = {"uri": "file:///creds.txt", "mimeType": "text/plain", "blob": blob}
    return {"content": [{"type": "resource", "resource": resource}]}


def _image(data: str) -> dict:
    return {"content": [{"type": "image", "mimeType": "text/plain", "data": data}]}


ANSWERS: dict[str, dict] = {
    # control: the padded base64 (refused since the nineteenth review)
    "blob_padded": _resource(B64),
    # the same bytes without the "=" padding (RFC 4648 3.2 lets it be left out)
    "blob_unpadded": _resource(B64.rstrip("=")),
    # MIME base64 (RFC 2045): a line break every few characters
    "blob_lines": _resource("\r\n".join(B64[i : i + 16] for i in range(0, len(B64), 16))),
    # URL-safe alphabet is the same here; an image block's data without padding
    "image_unpadded": _image(B64.rstrip("=")),
}

TOOLS = [
    {
        "name": "run",
        "inputSchema": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
    *({"name": n, "inputSchema": {"type": "object"}} for n in ANSWERS),
]


def _run(arguments: dict) -> dict:
    got = arguments.get("arguments")
    return {"content": [{"type": "text", "text": f"ran with arguments={got!r}"}]}


serve("review20", {"run": _run, **ANSWERS}, TOOLS)
