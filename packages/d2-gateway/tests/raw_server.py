"""A hostile upstream (raw JSON-RPC, see raw_upstream.py): its tool ``again``
answers every call with an ``InputRequiredResult`` ("ask me again"), and
``count`` says how many calls of ``again`` arrived."""

from __future__ import annotations

from raw_upstream import serve

calls = [0]


def _again(arguments: dict) -> dict:
    calls[0] += 1
    return {"resultType": "input_required", "requestState": f"calls={calls[0]}"}


def _count(arguments: dict) -> dict:
    return {"content": [{"type": "text", "text": str(calls[0])}]}


serve("raw", {"again": _again, "count": _count})
