"""Strict JSON and the request-body shapes."""

from __future__ import annotations

import base64
import json

import pytest
from d2.server.bodies import (
    JSONError,
    loads_strict,
    parse_draft,
    parse_events,
    parse_key_registration,
    valid_timestamp,
)
from d2.server.errors import ApiError


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
        (b'"\xff"', "not UTF-8"),
        (b"{", "Expecting"),
        (b"[1e400]", "out of range"),
        (b'{"s": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b"[" + b"1" * 5000 + b"]", "digits"),
    ],
)
def test_strict_json_refuses_what_lenient_parsers_accept(data: bytes, reason: str) -> None:
    with pytest.raises(JSONError, match=reason):
        loads_strict(data)


def test_escaped_surrogate_pairs_are_fine() -> None:
    assert loads_strict(b'["\\ud83d\\ude00"]') == ["\U0001f600"]


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert loads_strict(json.dumps({"s": "[" * 500 + '\\"'}).encode()) == {"s": "[" * 500 + '\\"'}


def _error(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, list[str]]:
    exc = excinfo.value
    return exc.status, exc.detail, exc.extra.get("errors", [])


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_key_registration(b"garbage")
    assert _error(excinfo)[:2] == (400, "invalid_json")


def test_key_registration_needs_an_id_ed25519_and_32_raw_bytes() -> None:
    good = base64.b64encode(b"k" * 32).decode()
    body = {"key_id": "laptop", "algorithm": "Ed25519", "public_key": good}
    assert parse_key_registration(json.dumps(body).encode()) == ("laptop", b"k" * 32)
    bad = {
        "key_id": "has space",
        "algorithm": "RSA",
        "public_key": base64.b64encode(b"k" * 31).decode(),
    }
    with pytest.raises(ApiError) as excinfo:
        parse_key_registration(json.dumps(bad).encode())
    status, detail, errors = _error(excinfo)
    assert (status, detail) == (422, "invalid_key")
    assert [e.split(":")[0] for e in errors] == ["key_id", "algorithm", "public_key"]


def test_a_draft_has_a_non_negative_integer_version_and_a_document() -> None:
    assert parse_draft(b'{"version": 2, "bundle": {"policies": []}}') == (2, {"policies": []})
    for body in (b'{"version": true, "bundle": {}}', b'{"version": -1, "bundle": {}}', b"[]"):
        with pytest.raises(ApiError) as excinfo:
            parse_draft(body)
        assert _error(excinfo)[:2] == (422, "invalid_draft")


def _event(**changes: object) -> dict[str, object]:
    return {
        "event_type": "decision",
        "payload": {"ok": True},
        "occurred_at": "2025-01-01T00:00:00Z",
        **changes,
    }


def test_events_are_returned_with_canonical_payloads() -> None:
    body = json.dumps({"events": [_event(payload={"b": 1, "a": 2})]}).encode()
    assert parse_events(body, 10) == [("decision", '{"a":2,"b":1}', "2025-01-01T00:00:00Z")]
    assert parse_events(b'{"events": []}', 10) == []


def test_invalid_events_name_each_bad_field() -> None:
    body = json.dumps(
        {"events": [_event(event_type=""), _event(payload=[]), _event(occurred_at="yesterday"), 3]}
    ).encode()
    with pytest.raises(ApiError) as excinfo:
        parse_events(body, 10)
    status, detail, errors = _error(excinfo)
    assert (status, detail) == (422, "invalid_events")
    assert [e.split(":")[0] for e in errors] == [
        "events[0].event_type",
        "events[1].payload",
        "events[2].occurred_at",
        "events[3]",
    ]


def test_more_events_than_the_plan_batch_is_a_413_so_the_client_splits() -> None:
    body = json.dumps({"events": [_event()] * 3}).encode()
    with pytest.raises(ApiError) as excinfo:
        parse_events(body, 2)
    assert _error(excinfo)[:2] == (413, "too_many_events")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("2025-01-01T00:00:00Z", True),
        ("2025-01-01t00:00:00.123456789z", True),
        ("2025-06-30T23:59:60+02:00", True),
        ("2025-01-01T00:00:00", False),  # no offset
        ("2025-02-30T00:00:00Z", False),
        ("2025-01-01 00:00:00Z", False),
        ("2025-01-01T00:00:00+24:00", False),
    ],
)
def test_occurred_at_is_rfc_3339_with_an_offset(text: str, ok: bool) -> None:
    assert valid_timestamp(text) is ok
