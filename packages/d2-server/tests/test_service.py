"""ControlPlane without HTTP: bundles re-signed on the injected clock, key
rotation, and the order of publish checks."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from d2.server import ControlPlane, Quotas
from d2.server.errors import ApiError
from d2.server.preconditions import ANY, parse_etags
from d2.server.storage import NewVersion, Principal
from d2.server.testing import FakeClock


def _register(
    plane: ControlPlane, dev: Principal, key: ed25519.Ed25519PrivateKey, key_id: str = "dev"
) -> None:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = {"key_id": key_id, "algorithm": "Ed25519", "public_key": base64.b64encode(raw).decode()}
    plane.register_key(dev, json.dumps(body).encode())


class Publisher:
    """A developer token and a registered device key."""

    def __init__(self, plane: ControlPlane, quotas: Quotas | None = None) -> None:
        self.plane = plane
        _, app = plane.create_account("shop", quotas)
        self.dev = plane.authenticate("Bearer " + plane.create_token(app, "developer"))
        self.runtime = plane.authenticate("Bearer " + plane.create_token(app, "runtime"))
        self.key = ed25519.Ed25519PrivateKey.generate()
        _register(plane, self.dev, self.key)

    def publish(self, doc: object, **headers: str | None) -> NewVersion:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        headers.setdefault("signature", base64.b64encode(self.key.sign(body)).decode())
        return self.plane.publish(
            self.dev,
            body,
            key_id=headers.get("key_id", "dev"),
            signature=headers["signature"],
            if_match=parse_etags(headers.get("if_match")),
            if_none_match=parse_etags(headers.get("if_none_match")),
        )


def _doc(*tools: str) -> dict[str, object]:
    return {
        "metadata": {"name": "shop"},
        "policies": [{"role": "r", "permissions": list(tools) or ["t"]}],
    }


def _status(call: object) -> tuple[int, str]:
    assert callable(call)
    try:
        call()
    except ApiError as exc:
        return exc.status, exc.detail
    return 0, ""


def test_a_bundle_is_re_signed_with_fresh_times_once_half_its_lifetime_passed(
    plane: ControlPlane, clock: FakeClock
) -> None:
    pub = Publisher(plane)
    first = pub.publish(_doc(), if_none_match="*").bundle
    clock.advance(1799)
    assert plane.bundle(pub.runtime) == first
    clock.advance(1)
    fresh = plane.bundle(pub.runtime)
    assert fresh.version == first.version and fresh.etag != first.etag
    assert (fresh.iat, fresh.exp) == (int(clock()), int(clock()) + 3600)
    assert plane.bundle(pub.runtime) == fresh  # stored, not re-signed at each fetch
    # the older ETag still names the current version for a publisher
    assert pub.publish(_doc("u"), if_match=first.etag).version == 2


def test_after_rotation_the_current_version_is_re_signed_with_the_same_claims(
    plane: ControlPlane, clock: FakeClock
) -> None:
    pub = Publisher(plane)
    old = pub.publish(_doc(), if_none_match="*").bundle
    new_key = plane.rotate_key("ES256", overlap=600)
    resigned = plane.bundle(pub.runtime)
    assert resigned.kid == new_key.kid != old.kid
    assert jwt.get_unverified_header(resigned.jws)["jwks_refresh"] is True
    assert resigned.jws.split(".")[1] == old.jws.split(".")[1]  # the same payload
    assert {k.kid for k in plane.jwks().keys} == {old.kid, new_key.kid}
    clock.advance(599)
    assert plane.bundle(pub.runtime) == resigned  # flagged while the old key is published
    clock.advance(1)
    assert [k.kid for k in plane.jwks().keys] == [new_key.kid]
    # the old key left the JWKS: the cached bundle is re-signed without the flag,
    # claims unchanged, once
    unflagged = plane.bundle(pub.runtime)
    assert unflagged.etag != resigned.etag and unflagged.kid == new_key.kid
    assert "jwks_refresh" not in jwt.get_unverified_header(unflagged.jws)
    assert unflagged.jws.split(".")[1] == old.jws.split(".")[1]
    assert plane.bundle(pub.runtime) == unflagged
    v2 = pub.publish(_doc("u"), if_match=resigned.etag).bundle
    assert "jwks_refresh" not in jwt.get_unverified_header(v2.jws)


def test_publish_checks_run_signature_first_then_limits_then_state(
    plane: ControlPlane,
) -> None:
    pub = Publisher(plane, Quotas(max_tools=2, bundle_size_bytes=400))
    ok = _doc()

    def status(doc: object, **headers: str) -> tuple[int, str]:
        return _status(lambda: pub.publish(doc, **headers))

    # a bad signature wins over an invalid policy and a stale precondition
    assert status(b"junk", signature="A" * 86, if_match='"x"') == (401, "bad_signature")
    assert status(ok, key_id="nobody", if_none_match="*") == (401, "unknown_key")
    assert status(b"x" * 401, if_none_match="*") == (402, "plan_limit_bundle_size")
    assert status(b"junk", if_match='"x"') == (422, "invalid_policy")
    assert status(_doc("a", "b", "c"), if_match='"x"') == (402, "plan_limit_max_tools")
    assert status(ok, if_match='"x"') == (412, "precondition_failed")
    assert status(ok) == (428, "precondition_required")
    assert status(ok, if_none_match="*") == (0, "")


def test_the_app_quota_counts_apps_with_a_policy_in_force(plane: ControlPlane) -> None:
    pub = Publisher(plane, Quotas(max_apps=1))
    pub.publish(_doc(), if_none_match="*")
    other = plane.app(pub.dev.account.id, "other")
    dev2 = plane.authenticate("Bearer " + plane.create_token(other, "developer"))
    _register(plane, dev2, pub.key)  # device keys are per app
    body = json.dumps({"metadata": {"name": "other"}, "policies": []}).encode()
    sig = base64.b64encode(pub.key.sign(body)).decode()

    def publish_other() -> None:
        plane.publish(
            dev2, body, key_id="dev", signature=sig, if_match=None, if_none_match=parse_etags("*")
        )

    assert _status(publish_other) == (403, "quota_apps_exceeded")
    plane.revoke(pub.dev)
    assert _status(publish_other) == (0, "")


def test_scopes_are_enforced(plane: ControlPlane) -> None:
    pub = Publisher(plane)
    read_only: Principal = pub.runtime
    assert _status(lambda: plane.revoke(read_only)) == (403, "missing_scope")
    assert _status(lambda: plane.get_draft(read_only)) == (403, "missing_scope")
    assert _status(lambda: plane.bundle(read_only)) == (404, "no_policy")


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "missing_token"),
        ("Basic abc", "invalid_token"),
        ("Bearer d2_unknown", "invalid_token"),
        ("Bearer", "invalid_token"),
    ],
)
def test_bad_authorization_is_a_401(plane: ControlPlane, header: str | None, detail: str) -> None:
    assert _status(lambda: plane.authenticate(header)) == (401, detail)


def test_app_names_must_fit_in_the_audience(plane: ControlPlane) -> None:
    account, _ = plane.create_account("ok")
    with pytest.raises(ValueError, match="invalid app name"):
        plane.app(account.id, "a:b")


def test_an_invalid_app_name_creates_no_account_and_no_key(plane: ControlPlane) -> None:
    with pytest.raises(ValueError, match="invalid app name"):
        plane.create_account("bad:name")
    assert plane.storage.accounts() == []
    assert plane.storage.active_signing_key() is None


def test_device_keys_belong_to_the_app_that_registered_them(plane: ControlPlane) -> None:
    pub = Publisher(plane)  # app "shop", key id "dev"
    other = plane.app(pub.dev.account.id, "other")
    dev2 = plane.authenticate("Bearer " + plane.create_token(other, "developer"))
    body = json.dumps({"metadata": {"name": "other"}, "policies": []}).encode()

    def publish_other(key: ed25519.Ed25519PrivateKey) -> tuple[int, str]:
        sig = base64.b64encode(key.sign(body)).decode()
        return _status(
            lambda: plane.publish(
                dev2, body, key_id="dev", signature=sig, if_match=None, if_none_match=ANY
            )
        )

    # another app's token cannot publish with shop's key
    assert publish_other(pub.key) == (401, "unknown_key")
    # nor is shop's key id taken for it: it registers its own "dev"
    own = ed25519.Ed25519PrivateKey.generate()
    _register(plane, dev2, own)
    assert publish_other(pub.key) == (401, "bad_signature")
    assert publish_other(own) == (0, "")
    # and shop still publishes with its own key only
    assert _status(lambda: pub.publish(_doc(), if_none_match="*")) == (0, "")
    sig = base64.b64encode(own.sign(json.dumps(_doc()).encode())).decode()
    assert _status(
        lambda: pub.publish(_doc(), signature=sig, if_match=pub.plane.bundle(pub.runtime).etag)
    ) == (401, "bad_signature")


def test_a_nul_in_an_event_type_is_refused_and_one_in_a_payload_is_stored_escaped(
    plane: ControlPlane,
) -> None:
    # PostgreSQL text cannot hold U+0000: an event_type with one was a 500 there
    # (and stored on SQLite); it is a 422 on both. A payload is canonical JSON, which
    # escapes it.
    pub = Publisher(plane)
    event = {"event_type": "a\u0000b", "payload": {}, "occurred_at": "2025-01-01T00:00:00Z"}
    body = json.dumps({"events": [event]}).encode()
    assert _status(lambda: plane.ingest(pub.runtime, body)) == (422, "invalid_events")
    event = {"event_type": "a", "payload": {"k": "x\u0000y"}, "occurred_at": event["occurred_at"]}
    assert plane.ingest(pub.runtime, json.dumps({"events": [event]}).encode()) == 1
    (stored,) = plane.storage.events(pub.runtime.app.id)
    assert stored.payload == '{"k":"x\\u0000y"}'
