"""Strict JSON decoding and the shapes of the request bodies.

Decoding refuses what a lenient parser would let through silently: invalid UTF-8,
duplicate keys, ``NaN``/``Infinity`` and nesting deep enough to exhaust the stack.
Each ``parse_*`` function returns plain values or raises :class:`ApiError` (400 for
bytes that are not JSON, 422 with ``errors`` for JSON of the wrong shape).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from typing import Any

from .devicekeys import DEVICE_KEY_ALGORITHM, decode_base64, valid_key_id
from .errors import ApiError

__all__ = [
    "MAX_EVENT_TYPE",
    "JSONError",
    "canonical_json",
    "decode_json",
    "loads_strict",
    "parse_draft",
    "parse_events",
    "parse_key_registration",
    "valid_timestamp",
]

MAX_EVENT_TYPE = 200
_MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:)(\d{2})(?:\.(\d{1,32}))?([Zz]|[+-]\d{2}:\d{2})"
)


class JSONError(ValueError):
    """Bytes that are not acceptable JSON."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONError(f"number {text[:40]} is out of range")
    return value


def _depth_ok(data: bytes) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > _MAX_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def loads_strict(data: bytes) -> Any:
    """Decode JSON bytes strictly; raises :class:`JSONError` with the reason."""
    if not _depth_ok(data):
        raise JSONError(f"nested deeper than {_MAX_DEPTH} levels")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason}") from None
    try:
        value = json.loads(
            text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite
        )
    except JSONError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JSONError(str(exc)[:200]) from None
    if _SURROGATE_ESCAPE.search(text):  # an escaped lone surrogate cannot be stored
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONError("a string holds a lone UTF-16 surrogate") from None
    return value


def decode_json(data: bytes) -> Any:
    """Decode a request body; 400 ``invalid_json`` when it is not JSON."""
    try:
        return loads_strict(data)
    except JSONError as exc:
        raise ApiError(400, "invalid_json", errors=[f"<root>: {exc}"]) from None


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _invalid(detail: str, errors: list[str]) -> ApiError:
    return ApiError(422, detail, errors=errors)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_key_registration(data: bytes) -> tuple[str, bytes]:
    """``POST /v1/keys`` body -> (key id, raw 32-byte Ed25519 public key)."""
    body = decode_json(data)
    if not isinstance(body, dict):
        raise _invalid("invalid_key", ["<root>: expected an object"])
    errors: list[str] = []
    key_id = body.get("key_id")
    if not valid_key_id(key_id):
        errors.append("key_id: expected 1-128 printable characters without spaces")
    if body.get("algorithm") != DEVICE_KEY_ALGORITHM:
        errors.append(f"algorithm: expected {DEVICE_KEY_ALGORITHM!r}")
    raw = body.get("public_key")
    public = decode_base64(raw) if isinstance(raw, str) else None
    if public is None or len(public) != 32:
        errors.append("public_key: expected the base64 of a raw 32-byte Ed25519 key")
    if errors:
        raise _invalid("invalid_key", errors)
    assert isinstance(key_id, str) and public is not None
    return key_id, public


def parse_draft(data: bytes) -> tuple[int, Any]:
    """``PUT /v1/policy/draft`` body -> (version, policy document)."""
    body = decode_json(data)
    if not isinstance(body, dict):
        raise _invalid("invalid_draft", ["<root>: expected an object"])
    errors: list[str] = []
    version = body.get("version")
    if not (isinstance(version, int) and _is_int(version) and 0 <= version < 2**53):
        errors.append("version: expected an integer >= 0")
    if not isinstance(body.get("bundle"), dict):
        errors.append("bundle: expected the policy document (an object)")
    if errors:
        raise _invalid("invalid_draft", errors)
    assert isinstance(version, int)
    return version, body["bundle"]


def valid_timestamp(value: object) -> bool:
    """An RFC 3339 date-time with a UTC offset (``Z`` or ``+hh:mm``), a real moment
    (a leap second ``:60`` is read as ``:59``)."""
    if not isinstance(value, str):
        return False
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    head, seconds, fraction, zone = m.groups()
    seconds = "59" if seconds == "60" else seconds
    zone = "+00:00" if zone in ("Z", "z") else zone
    text = f"{head.upper()}{seconds}.{((fraction or '') + '000000')[:6]}{zone}"
    try:
        _dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def parse_events(data: bytes, max_events: int) -> list[tuple[str, str, str]]:
    """``POST /v1/events/ingest`` body -> ``(event_type, payload JSON, occurred_at)``.

    More than ``max_events`` events: 413 ``too_many_events`` (the client splits)."""
    body = decode_json(data)
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise _invalid("invalid_events", ["events: expected a list of events"])
    items: list[Any] = body["events"]
    if len(items) > max_events:
        raise ApiError(413, "too_many_events", limit=max_events)
    errors: list[str] = []
    out: list[tuple[str, str, str]] = []
    for i, event in enumerate(items):
        if not isinstance(event, dict):
            errors.append(f"events[{i}]: expected an object")
            continue
        kind, payload, when = (
            event.get("event_type"),
            event.get("payload"),
            event.get("occurred_at"),
        )
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_EVENT_TYPE or "\x00" in kind:
            # NUL: PostgreSQL text cannot hold it (the payload is stored escaped)
            errors.append(
                f"events[{i}].event_type: expected a string of 1-{MAX_EVENT_TYPE} chars, no NUL"
            )
        if not isinstance(payload, dict):
            errors.append(f"events[{i}].payload: expected an object")
        if not valid_timestamp(when):
            errors.append(f"events[{i}].occurred_at: expected an RFC 3339 time with offset")
        if len(errors) >= 20:
            break
        if not errors:
            out.append((str(kind), canonical_json(payload), str(when)))
    if errors:
        raise _invalid("invalid_events", errors)
    return out
