"""The request bodies as pydantic models: strict (no coercion), the same statuses
as the protocol gives (400 not JSON, 413 too many events, 422 wrong shape) and
errors that name each bad field and what it should be."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from d2.server.bodies import (
    MAX_ERRORS,
    DraftIn,
    Events,
    KeyIn,
    parse_body,
    valid_timestamp,
)
from d2.server.errors import ApiError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

_GOOD_KEY = base64.b64encode(b"k" * 32).decode()
_MODELS: list[tuple[type[BaseModel], str]] = [
    (KeyIn, "invalid_key"),
    (DraftIn, "invalid_draft"),
    (Events, "invalid_events"),
]


def _error(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, list[str]]:
    exc = excinfo.value
    return exc.status, exc.detail, exc.extra.get("errors", [])


def _events(body: Any, max_events: int = 10) -> list[tuple[str, str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    parsed = parse_body(Events, data, "invalid_events", context={"max_events": max_events})
    return [event.row() for event in parsed.events]


def test_a_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_body(KeyIn, b"garbage", "invalid_key")
    assert _error(excinfo)[:2] == (400, "invalid_json")


def test_key_registration_needs_an_id_ed25519_and_32_raw_bytes() -> None:
    body = {"key_id": "laptop", "algorithm": "Ed25519", "public_key": _GOOD_KEY}
    key = parse_body(KeyIn, json.dumps(body).encode(), "invalid_key")
    assert (key.key_id, key.raw_public_key) == ("laptop", b"k" * 32)
    urlsafe = base64.urlsafe_b64encode(b"\xff" * 32).decode().rstrip("=")  # accepted too
    body["public_key"] = urlsafe
    assert parse_body(KeyIn, json.dumps(body).encode(), "k").raw_public_key == b"\xff" * 32
    bad = {
        "key_id": "has space",
        "algorithm": "RS256",
        "public_key": base64.b64encode(b"k" * 31).decode(),
    }
    with pytest.raises(ApiError) as excinfo:
        parse_body(KeyIn, json.dumps(bad).encode(), "invalid_key")
    status, detail, errors = _error(excinfo)
    assert (status, detail) == (422, "invalid_key")
    assert [e.split(":")[0] for e in errors] == ["key_id", "algorithm", "public_key"]
    assert errors[0].startswith("key_id: expected 1-128 printable characters without spaces")
    assert errors[2].startswith("public_key: expected the base64 of a raw 32-byte Ed25519 key")


def test_a_draft_has_a_non_negative_integer_version_and_a_document() -> None:
    draft = parse_body(DraftIn, b'{"version": 2, "bundle": {"policies": []}}', "invalid_draft")
    assert (draft.version, draft.bundle.root) == (2, {"policies": []})
    for body in (
        b'{"version": true, "bundle": {}}',
        b'{"version": "1", "bundle": {}}',  # no coercion
        b'{"version": 1.0, "bundle": {}}',
        b'{"version": -1, "bundle": {}}',
        b'{"version": 9007199254740992, "bundle": {}}',
        b'{"version": 1, "bundle": []}',
        b"[]",
    ):
        with pytest.raises(ApiError) as excinfo:
            parse_body(DraftIn, body, "invalid_draft")
        assert _error(excinfo)[:2] == (422, "invalid_draft")


def test_an_error_says_what_the_field_should_be() -> None:
    with pytest.raises(ApiError) as excinfo:
        parse_body(DraftIn, b'{"version": "1"}', "invalid_draft")
    assert _error(excinfo)[2] == [
        "version: expected an integer >= 0 (input should be a valid integer)",
        "bundle: expected the policy document (an object) (field required)",
    ]
    with pytest.raises(ApiError) as excinfo:
        parse_body(DraftIn, b"[]", "invalid_draft")
    assert _error(excinfo)[2] == ["<root>: expected a JSON object"]


def test_fields_the_protocol_does_not_name_are_ignored() -> None:
    body = {"version": 1, "bundle": {}, "extra": [1, 2]}
    assert parse_body(DraftIn, json.dumps(body).encode(), "invalid_draft").version == 1


def _event(**changes: object) -> dict[str, object]:
    return {
        "event_type": "decision",
        "payload": {"ok": True},
        "occurred_at": "2025-01-01T00:00:00Z",
        **changes,
    }


def test_events_are_returned_with_canonical_payloads() -> None:
    body = {"events": [_event(payload={"b": 1, "a": 2})]}
    assert _events(body) == [("decision", '{"a":2,"b":1}', "2025-01-01T00:00:00Z")]
    assert _events({"events": []}) == []


def test_invalid_events_name_each_bad_field() -> None:
    body = {
        "events": [_event(event_type=""), _event(payload=[]), _event(occurred_at="yesterday"), 3]
    }
    with pytest.raises(ApiError) as excinfo:
        _events(body)
    status, detail, errors = _error(excinfo)
    assert (status, detail) == (422, "invalid_events")
    assert [e.split(":")[0] for e in errors] == [
        "events[0].event_type",
        "events[1].payload",
        "events[2].occurred_at",
        "events[3]",
    ]
    assert "expected an RFC 3339 time with an offset" in errors[2]
    assert errors[3] == "events[3]: expected a JSON object"


def test_a_body_full_of_mistakes_lists_at_most_twenty() -> None:
    with pytest.raises(ApiError) as excinfo:
        _events(b'{"events": [' + b",".join([b"1"] * 5000) + b"]}", 10_000)
    assert len(_error(excinfo)[2]) == MAX_ERRORS


def test_more_events_than_the_plan_batch_is_a_413_so_the_client_splits() -> None:
    with pytest.raises(ApiError) as excinfo:
        _events({"events": [_event()] * 3}, 2)
    assert _error(excinfo)[:2] == (413, "too_many_events")
    assert excinfo.value.extra["limit"] == 2
    with pytest.raises(ApiError) as excinfo:  # counted before the events are checked
        _events({"events": [1, 2, 3]}, 2)
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


# properties: outside input never crashes the parser, and nothing is coerced

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _refused_as_documented(excinfo: ApiError) -> None:
    assert excinfo.status in (400, 413, 422), excinfo
    for line in excinfo.extra.get("errors", []):
        path, _, problem = line.partition(": ")
        assert path and problem, line
    assert len(excinfo.extra.get("errors", [])) <= MAX_ERRORS


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(["events", "version", "bundle", "key_id"]), _JSON).map(
            lambda v: json.dumps(v).encode()
        ),
    ),
    st.sampled_from(_MODELS),
)
def test_any_body_validates_or_is_refused_with_400_413_or_422(
    data: bytes, model: tuple[type[BaseModel], str]
) -> None:
    cls, detail = model
    try:
        parsed = parse_body(cls, data, detail, context={"max_events": 3})
    except ApiError as exc:
        _refused_as_documented(exc)
    else:
        assert isinstance(parsed, cls)


def _event_ok(event: object) -> bool:
    """The protocol's rule for one event, written out (the oracle)."""
    if not isinstance(event, dict):
        return False
    kind = event.get("event_type")
    return (
        isinstance(kind, str)
        and 0 < len(kind) <= 200
        and "\x00" not in kind  # PostgreSQL text cannot hold a NUL
        and isinstance(event.get("payload"), dict)
        and valid_timestamp(event.get("occurred_at"))
    )


_FIELD_VALUES = st.one_of(
    _JSON,
    st.sampled_from(["", "x" * 200, "x" * 201, "2025-01-01T00:00:00Z", "1", "true", "a\x00b"]),
    st.sampled_from([0, 1, -1, 2**53, 2**53 - 1, 1.0, True, False]),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["event_type", "payload", "occurred_at"]), _FIELD_VALUES)
def test_an_event_field_is_accepted_exactly_when_the_protocol_allows_it(
    name: str, value: object
) -> None:
    event = _event(**{name: value})
    body = json.dumps({"events": [event]}).encode()
    try:
        rows = _events(body)
    except ApiError as exc:
        assert (exc.status, exc.detail) == (422, "invalid_events")
        assert not _event_ok(event)
        assert exc.extra["errors"][0].startswith(f"events[0].{name}: expected ")
    else:
        assert _event_ok(event)
        assert rows == [(event["event_type"], rows[0][1], event["occurred_at"])]
        assert json.loads(rows[0][1]) == event["payload"]


@settings(max_examples=200, deadline=None)
@given(_FIELD_VALUES)
def test_a_draft_version_is_accepted_exactly_when_it_is_a_whole_number_in_range(
    value: object,
) -> None:
    body = json.dumps({"version": value, "bundle": {}}).encode()
    ok = type(value) is int and 0 <= value < 2**53
    try:
        assert parse_body(DraftIn, body, "invalid_draft").version == value and ok
    except ApiError as exc:
        assert exc.status == 422 and not ok


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["key_id", "algorithm", "public_key"]), _FIELD_VALUES)
def test_a_key_field_is_accepted_exactly_when_the_protocol_allows_it(
    name: str, value: object
) -> None:
    from d2.server.devicekeys import decode_base64, valid_key_id

    body = {"key_id": "laptop", "algorithm": "Ed25519", "public_key": _GOOD_KEY, name: value}
    raw = decode_base64(body["public_key"]) if isinstance(body["public_key"], str) else None
    ok = (
        valid_key_id(body["key_id"])
        and body["algorithm"] == "Ed25519"
        and raw is not None
        and len(raw) == 32
    )
    try:
        key = parse_body(KeyIn, json.dumps(body).encode(), "invalid_key")
    except ApiError as exc:
        assert exc.status == 422 and not ok
    else:
        assert ok and key.raw_public_key == raw


# the same over HTTP: the real application, in process


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    from d2.server import ControlPlane, ServerConfig, SQLStorage, create_app
    from starlette.testclient import TestClient

    storage = SQLStorage(tmp_path_factory.mktemp("bodies") / "d2.db", migrate=True)
    plane = ControlPlane(storage, ServerConfig(ingest_burst=10**6))
    _, app = plane.create_account("shop")
    developer = {"Authorization": "Bearer " + plane.create_token(app, "developer")}
    client = TestClient(create_app(plane), raise_server_exceptions=False)  # no lifespan
    try:
        yield client, developer
    finally:
        client.close()
        storage.close()


def _field(good: object) -> st.SearchStrategy[object]:
    """A valid value half the time, else any JSON value or a near miss."""
    return st.one_of(st.just(good), _FIELD_VALUES)


_POLICY = {"metadata": {"name": "shop"}, "policies": [{"role": "r", "permissions": ["t"]}]}
_EVENT = st.fixed_dictionaries(
    {
        "event_type": _field("decision"),
        "payload": _field({"tool": "t"}),
        "occurred_at": _field("2025-01-01T00:00:00Z"),
    }
)
_SHAPED: dict[tuple[str, str], st.SearchStrategy[object]] = {
    ("POST", "/v1/keys"): st.fixed_dictionaries(
        {
            "key_id": _field("laptop"),
            "algorithm": _field("Ed25519"),
            "public_key": _field(_GOOD_KEY),
        }
    ),
    ("PUT", "/v1/policy/draft"): st.fixed_dictionaries(
        {"version": st.one_of(st.integers(0, 10), _FIELD_VALUES), "bundle": _field(_POLICY)}
    ),
    ("POST", "/v1/events/ingest"): st.fixed_dictionaries(
        {"events": st.lists(_EVENT | _JSON, max_size=3) | _JSON}
    ),
}
_ROUTES = {
    ("POST", "/v1/keys"): {201, 400, 409, 422},
    ("PUT", "/v1/policy/draft"): {200, 400, 402, 422},
    ("POST", "/v1/events/ingest"): {202, 400, 413, 422},
}


def _request(route: tuple[str, str]) -> st.SearchStrategy[tuple[tuple[str, str], bytes]]:
    body = st.one_of(
        _SHAPED[route].map(lambda v: json.dumps(v).encode()),
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )
    return st.tuples(st.just(route), body)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(_ROUTES)).flatmap(_request))
def test_any_body_over_http_is_answered_as_documented_never_a_500(
    http: tuple[Any, dict[str, str]], request: tuple[tuple[str, str], bytes]
) -> None:
    client, developer = http
    route, body = request
    method, path = route
    r = client.request(method, path, content=body, headers=developer)
    assert r.status_code in _ROUTES[route], (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    if r.status_code >= 400:
        assert isinstance(r.json()["detail"], str)
