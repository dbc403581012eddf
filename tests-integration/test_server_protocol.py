"""d2-server over HTTP: every endpoint of PROTOCOL.md and every status it lists."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import jwt
import pytest
from d2.server import Quotas
from d2.server.testing import D2Server, DeviceKey


def _detail(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    return detail


# identity and keys


def test_accounts_me_reports_exactly_the_protocol_fields(d2_server: D2Server) -> None:
    r = d2_server.client(d2_server.runtime_token).get("/v1/accounts/me")
    assert r.status_code == 200
    me = r.json()
    assert set(me) == {"account_id", "app_name", "plan", "poll_seconds", "quotas", "scopes"}
    assert (me["account_id"], me["app_name"]) == (d2_server.account_id, "test-app")
    assert set(me["quotas"]) == {"max_tools", "bundle_size_bytes", "event_batch", "ingest_interval"}
    assert me["scopes"] == ["policy:read", "events:write"] and me["poll_seconds"] == 5
    dev = d2_server.client().get("/v1/accounts/me").json()
    assert "policy:write" in dev["scopes"]


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "missing_token"),
        ("Bearer d2_not-a-real-token", "invalid_token"),
        ("Bearer garbage", "invalid_token"),
        ("Basic dXNlcjpwYXNz", "invalid_token"),
    ],
)
def test_a_missing_or_unknown_token_is_a_401(
    d2_server: D2Server, authorization: str | None, detail: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    client = d2_server.client("")
    for method, path in (
        ("GET", "/v1/accounts/me"),
        ("GET", "/v1/policy/bundle"),
        ("POST", "/v1/policy/publish"),
        ("POST", "/v1/events/ingest"),
        ("POST", "/v1/keys"),
    ):
        r = client.request(method, path, headers=headers)
        assert r.status_code == 401 and _detail(r) == detail, (method, path)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_the_jwks_is_public_and_lists_signing_keys(d2_server: D2Server) -> None:
    r = d2_server.client("").get("/.well-known/jwks.json")
    assert r.status_code == 200
    (key,) = r.json()["keys"]
    assert {"kid", "kty", "alg", "use"} <= set(key)
    assert (key["kty"], key["alg"], key["use"]) == ("OKP", "EdDSA", "sig")


# bundles


def test_no_policy_yet_is_a_404(d2_server: D2Server) -> None:
    r = d2_server.fetch_bundle()
    assert r.status_code == 404 and _detail(r) == "no_policy"


def test_a_published_bundle_is_a_signed_jws_for_this_app(d2_server: D2Server) -> None:
    doc = d2_server.policy({"role": "r", "permissions": ["t"]}, description="x")
    published = d2_server.publish(doc)
    assert published.status_code == 201
    assert published.json()["version"] == 1
    r = d2_server.fetch_bundle()
    assert r.status_code == 200
    assert r.headers["etag"] == published.json()["etag"] == published.headers["etag"]
    assert r.headers["x-d2-poll-seconds"] == "5"
    body = r.json()
    assert set(body) == {"jws", "version"} and body["version"] == 1
    header = jwt.get_unverified_header(body["jws"])
    assert header["typ"] == "d2-policy+jwt" and header["alg"] == "EdDSA"
    assert header["kid"] == d2_server.jwks()["keys"][0]["kid"] and "jwks_refresh" not in header
    claims = d2_server.verify(body["jws"])
    assert claims["aud"] == f"d2-policy:{d2_server.account_id}:test-app"
    assert claims["version"] == 1
    assert claims["iat"] == int(d2_server.clock()) and claims["exp"] == claims["iat"] + 86400
    assert claims["metadata"] == doc["metadata"] and claims["policies"] == doc["policies"]


def test_if_none_match_with_the_current_etag_is_a_304(d2_server: D2Server) -> None:
    d2_server.publish(d2_server.policy())
    etag = d2_server.current_etag()
    assert etag is not None
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = d2_server.fetch_bundle(header)
        assert r.status_code == 304, header
        assert r.content == b"" and r.headers["x-d2-poll-seconds"] == "5"
    assert d2_server.fetch_bundle('"stale"').status_code == 200


def test_versions_strictly_increase_and_etags_change(d2_server: D2Server) -> None:
    etags = set()
    for i in range(1, 4):
        r = d2_server.publish(d2_server.policy({"role": "r", "permissions": [f"t{i}"]}))
        assert r.status_code == 201 and r.json()["version"] == i
        etags.add(r.json()["etag"])
        assert d2_server.fetch_bundle().json()["version"] == i
    assert len(etags) == 3


def test_revoke_serves_410_until_the_next_publish_with_a_higher_version(
    d2_server: D2Server,
) -> None:
    d2_server.publish(d2_server.policy())
    d2_server.publish(d2_server.policy({"role": "r", "permissions": ["t"]}))
    r = d2_server.revoke()
    assert r.status_code == 200 and r.json() == {"revoked_version": 2}
    gone = d2_server.fetch_bundle()
    assert gone.status_code == 410 and _detail(gone) == "revoked"
    assert d2_server.revoke().json() == {"revoked_version": 2}  # idempotent
    again = d2_server.publish(d2_server.policy(), if_none_match="*")
    assert again.status_code == 201 and again.json()["version"] == 3
    r = d2_server.fetch_bundle()
    assert r.status_code == 200 and d2_server.verify(r.json()["jws"])["version"] == 3


def test_after_revoke_the_revoked_etag_also_satisfies_if_match(d2_server: D2Server) -> None:
    d2_server.publish(d2_server.policy())
    etag = d2_server.current_etag()
    d2_server.revoke()
    assert d2_server.publish(d2_server.policy(), if_match=etag).status_code == 201


def test_revoking_before_any_publish_is_a_404(d2_server: D2Server) -> None:
    r = d2_server.revoke()
    assert r.status_code == 404 and _detail(r) == "no_policy"


def test_apps_are_isolated(d2_server: D2Server) -> None:
    other = d2_server.add_app("other-app")
    d2_server.publish(d2_server.policy())
    r = d2_server.fetch_bundle(token=other.runtime_token)
    assert r.status_code == 404
    doc = {"metadata": {"name": "other-app"}, "policies": []}
    key = d2_server.register_key(DeviceKey("other-dev"), token=other.developer_token)
    assert d2_server.publish(doc, key=key, token=other.developer_token).status_code == 201
    jws = d2_server.fetch_bundle(token=other.runtime_token).json()["jws"]
    with pytest.raises(jwt.InvalidAudienceError):
        d2_server.verify(jws)  # audience of test-app


# publish


def test_publish_needs_the_signature_of_a_registered_key_over_the_exact_bytes(
    d2_server: D2Server,
) -> None:
    key = d2_server.register_key()
    body = b'{ "metadata": {"name": "test-app"},\n  "policies": [] }'
    assert (
        d2_server.publish(body, if_none_match="*", signature=key.sign(body + b" ")).status_code
        == 401
    )
    reformatted = json.dumps(json.loads(body)).encode()
    r = d2_server.publish(reformatted, if_none_match="*", signature=key.sign(body))
    assert r.status_code == 401 and _detail(r) == "bad_signature"
    assert d2_server.publish(body, if_none_match="*").status_code == 201
    with d2_server.storage.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT body FROM versions").scalar()
    assert bytes(stored) == body


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"X-D2-Signature": "AAAA"}, "missing_key_id"),
        ({"X-D2-Key-Id": "test-device"}, "missing_signature"),
        ({"X-D2-Key-Id": "test-device", "X-D2-Signature": "not base64!"}, "bad_signature"),
        ({"X-D2-Key-Id": "test-device", "X-D2-Signature": "AAAA"}, "bad_signature"),
        ({"X-D2-Key-Id": "unknown", "X-D2-Signature": "A" * 86 + "=="}, "unknown_key"),
        ({"X-D2-Key-Id": "bad id with spaces", "X-D2-Signature": "A" * 88}, "unknown_key"),
    ],
)
def test_publish_without_a_valid_signature_is_a_401(
    d2_server: D2Server, headers: dict[str, str], detail: str
) -> None:
    d2_server.register_key()
    r = d2_server.client().post(
        "/v1/policy/publish",
        content=json.dumps(d2_server.policy()),
        headers={"If-None-Match": "*", **headers},
    )
    assert r.status_code == 401 and _detail(r) == detail


def test_a_key_of_another_account_is_unknown(d2_server_factory: Callable[..., D2Server]) -> None:
    first, second = d2_server_factory(), d2_server_factory()
    key = first.register_key(DeviceKey("shared-id"))
    r = second.publish(second.policy(), key=key, if_none_match="*")
    assert r.status_code == 401 and _detail(r) == "unknown_key"


def test_a_key_of_another_app_of_the_account_is_unknown_and_its_id_not_taken(
    d2_server: D2Server,
) -> None:
    other = d2_server.add_app("other-app")
    doc = {"metadata": {"name": "other-app"}, "policies": []}
    mine = d2_server.register_key(DeviceKey("laptop"))
    # the other app's developer token cannot publish with this app's key ...
    r = d2_server.publish(doc, key=mine, token=other.developer_token, if_none_match="*")
    assert r.status_code == 401 and _detail(r) == "unknown_key"
    # ... and registering "laptop" for the other app is its own key, not a conflict
    theirs = d2_server.register_key(DeviceKey("laptop"), token=other.developer_token)
    r = d2_server.publish(doc, key=mine, token=other.developer_token, if_none_match="*")
    assert r.status_code == 401 and _detail(r) == "bad_signature"
    r = d2_server.publish(doc, key=theirs, token=other.developer_token, if_none_match="*")
    assert r.status_code == 201
    # this app accepts its own key only
    r = d2_server.publish(d2_server.policy(), key=theirs, if_none_match="*")
    assert r.status_code == 401 and _detail(r) == "bad_signature"
    assert d2_server.publish(d2_server.policy(), key=mine).status_code == 201
    # a second key under the same id in the same app is still a conflict
    r = d2_server.client().post(
        "/v1/keys",
        json={
            "key_id": "laptop",
            "algorithm": "Ed25519",
            "public_key": DeviceKey().public_key_b64,
        },
    )
    assert r.status_code == 409 and _detail(r) == "key_id_conflict"


@pytest.mark.parametrize(
    "headers",
    [
        {"If-None-Match": '"x"'},  # If-None-Match other than * never holds on publish
        {"If-None-Match": ""},
        {"If-None-Match": "W/*"},
        {"If-None-Match": "{etag}"},
        {"If-Match": "*"},  # not a precondition on the state being replaced
        {"If-Match": ""},
        {"If-Match": "W/{etag}"},  # strong comparison: weak tags never match
        {"If-Match": "{etag}", "If-None-Match": '"x"'},  # one header or the other
        {"If-Match": "{etag}", "If-None-Match": "*"},
    ],
)
def test_publish_accepts_only_if_none_match_star_or_if_match_etag(
    d2_server: D2Server, headers: dict[str, str]
) -> None:
    first = {k: v.replace("{etag}", '"x"') for k, v in headers.items()}
    r = d2_server.publish(d2_server.policy(), **_pre(first))
    assert r.status_code == 412 and _detail(r) == "precondition_failed"
    assert d2_server.publish(d2_server.policy(), if_none_match="*").status_code == 201
    etag = d2_server.current_etag()
    assert etag is not None
    live = {k: v.replace("{etag}", etag) for k, v in headers.items()}
    r = d2_server.publish(d2_server.policy(), **_pre(live))
    assert r.status_code == 412 and _detail(r) == "precondition_failed"
    assert r.json()["current_version"] == 1
    assert d2_server.fetch_bundle().json()["version"] == 1
    assert d2_server.publish(d2_server.policy(), if_match=etag).status_code == 201


def _pre(headers: dict[str, str]) -> dict[str, str | None]:
    """``publish`` keyword arguments sending exactly ``headers`` as preconditions."""
    names = {"If-Match": "if_match", "If-None-Match": "if_none_match"}
    return {"if_match": None, "if_none_match": None} | {names[k]: v for k, v in headers.items()}


def test_publish_with_a_stale_precondition_is_a_412(d2_server: D2Server) -> None:
    d2_server.publish(d2_server.policy())
    stale = d2_server.current_etag()
    d2_server.publish(d2_server.policy({"role": "r", "permissions": ["t"]}))
    r = d2_server.publish(d2_server.policy(), if_match=stale)
    assert r.status_code == 412 and _detail(r) == "precondition_failed"
    assert r.json()["current_version"] == 2
    first_again = d2_server.publish(d2_server.policy(), if_none_match="*")
    assert first_again.status_code == 412


def test_publish_without_a_precondition_is_a_428(d2_server: D2Server) -> None:
    r = d2_server.publish(d2_server.policy(), if_match=None, if_none_match=None)
    assert r.status_code == 428 and _detail(r) == "precondition_required"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (b"not json", "<root>"),
        (b'{"a": 1, "a": 2}', "<root>"),
        (b"[1, 2]", "<root>"),
        ({"metadata": {"name": "test-app"}, "policies": [{"role": "r", "permissions": ["@nope"]}]},
         "policies[0].permissions[0]"),
        ({"metadata": {"name": "test-app"}, "policies": [{"role": "r", "permissions": [
            {"tool": "t", "conditions": {"input": {"x": {"typo": 1}}}}]}]},
         "policies[0].permissions[0].conditions.input.x"),
        ({"metadata": {"name": "another-app"}, "policies": []}, "metadata.name"),
        ({"policies": []}, "metadata.name"),
        ({"metadata": {"name": "test-app", "expires": "2001-01-01T00:00:00Z"}, "policies": []},
         "metadata.expires"),
    ],
)  # fmt: skip
def test_an_invalid_policy_is_a_422_with_error_paths(
    d2_server: D2Server, document: object, path: str
) -> None:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    r = d2_server.publish(body, if_none_match="*")
    assert r.status_code == 422 and _detail(r) == "invalid_policy"
    errors = r.json()["errors"]
    assert errors and all(isinstance(e, str) for e in errors)
    assert errors[0].startswith(path), errors


def test_plan_limits_are_402(d2_server_factory: Callable[..., D2Server]) -> None:
    server = d2_server_factory(quotas=Quotas(max_tools=2, bundle_size_bytes=300))
    too_many = server.policy({"role": "r", "permissions": ["a", "b", "c"]})
    r = server.publish(too_many, if_none_match="*")
    assert r.status_code == 402 and _detail(r) == "plan_limit_max_tools"
    assert (r.json()["limit"], r.json()["value"]) == (2, 3)
    big = server.policy({"role": "r", "permissions": ["a"]}, description="x" * 300)
    r = server.publish(big, if_none_match="*")
    assert r.status_code == 402 and _detail(r) == "plan_limit_bundle_size"
    assert server.client().get("/v1/accounts/me").json()["quotas"]["max_tools"] == 2


def test_the_app_quota_is_a_403_quota_apps_exceeded(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(quotas=Quotas(max_apps=1))
    assert server.publish(server.policy()).status_code == 201
    other = server.add_app("second")
    doc = {"metadata": {"name": "second"}, "policies": []}
    key = server.register_key(DeviceKey("second-dev"), token=other.developer_token)
    r = server.publish(doc, key=key, token=other.developer_token, if_none_match="*")
    assert r.status_code == 403 and _detail(r) == "quota_apps_exceeded"
    assert server.publish(server.policy()).status_code == 201  # the live app may still publish


def test_authoring_needs_policy_write(d2_server: D2Server) -> None:
    runtime = d2_server.client(d2_server.runtime_token)
    for method, path in (
        ("POST", "/v1/policy/publish"),
        ("POST", "/v1/policy/revoke"),
        ("GET", "/v1/policy/draft"),
        ("PUT", "/v1/policy/draft"),
        ("POST", "/v1/keys"),
    ):
        r = runtime.request(method, path, content=b"{}")
        assert r.status_code == 403 and _detail(r) == "missing_scope", (method, path)
        assert r.json()["scope"] == "policy:write"


def test_tokens_without_a_scope_are_refused_that_scope(d2_server: D2Server) -> None:
    writer = d2_server.client(d2_server.token("events:write"))
    r = writer.get("/v1/policy/bundle")
    assert r.status_code == 403 and r.json()["scope"] == "policy:read"
    reader = d2_server.client(d2_server.token("policy:read"))
    r = reader.post("/v1/events/ingest", json={"events": []})
    assert r.status_code == 403 and r.json()["scope"] == "events:write"


def test_a_body_over_the_server_limit_is_a_413_without_being_read(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(max_body_bytes=4096)
    r = server.publish(b"{" + b" " * 5000 + b"}", if_none_match="*")
    assert r.status_code == 413 and _detail(r) == "payload_too_large"

    def chunks() -> object:
        yield b"{" + b" " * 4096
        yield b"}"

    r = server.client().put("/v1/policy/draft", content=chunks())  # type: ignore[arg-type]
    assert r.status_code == 413


# drafts


def test_drafts_round_trip(d2_server: D2Server) -> None:
    client = d2_server.client()
    r = client.get("/v1/policy/draft")
    assert r.status_code == 404 and _detail(r) == "no_draft"
    doc = d2_server.policy({"role": "r", "permissions": ["t"]})
    r = client.put("/v1/policy/draft", json={"version": 4, "bundle": doc})
    assert r.status_code == 200 and r.json() == {"draft_version": 4}
    assert client.get("/v1/policy/draft").json() == {"version": 4, "bundle": doc}
    assert d2_server.fetch_bundle().status_code == 404  # a draft is not published


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"garbage", 400),
        (b'{"version": "1", "bundle": {}}', 422),
        (b'{"version": 1}', 422),
        (b'{"version": 1, "bundle": {"metadata": {"name": "test-app"}, "policies": 3}}', 422),
        (b'{"version": 1, "bundle": {"x": 1e999}}', 400),
        (b'{"version": 1, "bundle": {"\\ud800": 1}}', 400),
    ],
)
def test_bad_drafts_are_refused(d2_server: D2Server, body: bytes, status: int) -> None:
    r = d2_server.client().put("/v1/policy/draft", content=body)
    assert r.status_code == status and _detail(r)


# device keys


def test_key_registration_is_idempotent_and_conflicts_are_409(d2_server: D2Server) -> None:
    key = DeviceKey("laptop")
    body = {"key_id": "laptop", "algorithm": "Ed25519", "public_key": key.public_key_b64}
    client = d2_server.client()
    first = client.post("/v1/keys", json=body)
    assert first.status_code == 201 and first.json() == {"key_id": "laptop", "algorithm": "Ed25519"}
    assert client.post("/v1/keys", json=body).status_code == 201
    other = {**body, "public_key": DeviceKey().public_key_b64}
    r = client.post("/v1/keys", json=other)
    assert r.status_code == 409 and _detail(r) == "key_id_conflict"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",
        b"{}",
        b'{"key_id": "k", "algorithm": "Ed25519", "public_key": "short"}',
        b'{"key_id": "k", "algorithm": "RS256", "public_key": "'
        + base64.b64encode(b"k" * 32)
        + b'"}',
        b'{"key_id": 5, "algorithm": "Ed25519", "public_key": "'
        + base64.b64encode(b"k" * 32)
        + b'"}',
        b"[" * 10000,
    ],
)
def test_bad_key_registrations_are_4xx(d2_server: D2Server, body: bytes) -> None:
    r = d2_server.client().post("/v1/keys", content=body)
    assert r.status_code in (400, 422) and _detail(r)


# events


def _events(n: int, payload: dict[str, object] | None = None) -> dict[str, object]:
    event = {"event_type": "decision", "payload": payload or {"tool": "t"}}
    return {"events": [{**event, "occurred_at": "2025-01-01T00:00:00Z"} for _ in range(n)]}


def test_events_are_stored_and_acknowledged_with_202(d2_server: D2Server) -> None:
    r = d2_server.client(d2_server.runtime_token).post("/v1/events/ingest", json=_events(3))
    assert r.status_code == 202 and r.json() == {"accepted": 3}
    stored = d2_server.events()
    assert len(stored) == 3 and json.loads(stored[0].payload) == {"tool": "t"}


def test_an_events_body_over_32_kib_is_a_413(d2_server: D2Server) -> None:
    client = d2_server.client(d2_server.runtime_token)
    fits = json.dumps(_events(1, {"x": "y" * 32000})).encode()
    assert len(fits) <= 32 * 1024
    assert client.post("/v1/events/ingest", content=fits).status_code == 202
    big = json.dumps(_events(1, {"x": "y" * 33000})).encode()
    r = client.post("/v1/events/ingest", content=big)
    assert r.status_code == 413 and _detail(r) == "payload_too_large"
    assert len(d2_server.events()) == 1


def test_a_batch_over_the_plan_event_batch_is_a_413(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(quotas=Quotas(event_batch=2))
    client = server.client(server.runtime_token)
    r = client.post("/v1/events/ingest", json=_events(3))
    assert r.status_code == 413 and _detail(r) == "too_many_events"
    assert client.post("/v1/events/ingest", json=_events(2)).status_code == 202


def test_the_ingest_rate_limit_is_per_token_with_retry_after(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(ingest_burst=2, ingest_window=60.0)
    client = server.client(server.runtime_token)
    assert [client.post("/v1/events/ingest", json=_events(1)).status_code for _ in range(2)] == [
        202,
        202,
    ]
    r = client.post("/v1/events/ingest", json=_events(1))
    assert r.status_code == 429 and _detail(r) == "rate_limited"
    assert r.headers["retry-after"] == "30"
    other = server.client(server.token("runtime"))
    assert other.post("/v1/events/ingest", json=_events(1)).status_code == 202
    server.clock.advance(30)
    assert client.post("/v1/events/ingest", json=_events(1)).status_code == 202
    assert len(server.events()) == 4  # the refused chunk was not stored


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"{}",
        b'{"events": {}}',
        b'{"events": [{"event_type": "x"}]}',
        b'{"events": [1]}',
        b'{"events": [{"event_type": "\\udc00", "payload": {}, "occurred_at": "x"}]}',
    ],
)
def test_bad_event_bodies_are_4xx(d2_server: D2Server, body: bytes) -> None:
    r = d2_server.client(d2_server.runtime_token).post("/v1/events/ingest", content=body)
    assert r.status_code in (400, 422) and _detail(r)


# the rest of HTTP


def test_unknown_routes_and_methods_are_json_errors(d2_server: D2Server) -> None:
    client = d2_server.client()
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and _detail(r) == "not_found"
    r = client.delete("/v1/policy/bundle")
    assert r.status_code == 405 and _detail(r) == "method_not_allowed"
    assert "GET" in r.headers["allow"]
    r = client.post("/v1/policy/draft")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "PUT"}


def test_a_bad_content_length_is_a_400(d2_server: D2Server) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", int(d2_server.base_url.rsplit(":", 1)[1]))) as s:
        s.sendall(
            b"POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + d2_server.developer_token.encode()
            + b"\r\nContent-Length: -5\r\n\r\n"
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
