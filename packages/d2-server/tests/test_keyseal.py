"""Signing keys at rest: sealed with ``D2_SERVER_SECRET``, refused with a wrong or
missing secret, clear-text keys told apart; and ``/healthz`` asking the database."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from d2.server import ControlPlane, ServerConfig, SQLStorage, create_app
from d2.server.errors import ApiError
from d2.server.keyseal import MIN_SECRET_LENGTH, SECRET_ENV, KeySealer, KeySecretError, is_sealed
from d2.server.signing import SigningKey
from d2.server.storage import Principal
from d2.server.testing import DeviceKey, FakeClock, LiveServer
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

SECRET = "a-long-random-secret-for-these-tests-0123456789"
OTHER = "another-long-random-secret-for-these-tests-9876"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "d2.db"


def _plane(db: Path, secret: str | None, clock: FakeClock | None = None) -> ControlPlane:
    config = ServerConfig(clock=clock or FakeClock(1_700_000_000.0))
    return ControlPlane(SQLStorage(db, migrate=True), config, secret=secret)


def _publisher(plane: ControlPlane) -> tuple[Principal, DeviceKey]:
    _, app = plane.create_account("app")
    developer = plane.authenticate("Bearer " + plane.create_token(app, "developer"))
    key = DeviceKey()
    body = {"key_id": key.key_id, "algorithm": "Ed25519", "public_key": key.public_key_b64}
    plane.register_key(developer, json.dumps(body).encode())
    return developer, key


def _publish(plane: ControlPlane, developer: Principal, key: DeviceKey) -> str:
    doc = {"metadata": {"name": "app"}, "policies": [{"role": "u", "permissions": ["t"]}]}
    body = json.dumps(doc).encode()
    state = plane.storage.bundle_state(developer.app.id)
    etag = state.bundle.etag if state.bundle and not state.revoked else None
    new = plane.publish(
        developer,
        body,
        key_id=key.key_id,
        signature=key.sign(body),
        if_match=frozenset({etag}) if etag else None,
        if_none_match=None if etag else "*",
    )
    return new.bundle.jws


def _close(*planes: ControlPlane) -> None:
    for plane in planes:
        plane.storage.close()


def test_with_a_secret_the_private_key_is_never_stored_in_clear(db: Path) -> None:
    plane = _plane(db, SECRET)
    record = plane.ensure_signing_key()
    assert is_sealed(record.pem) and b"PRIVATE KEY" not in record.pem
    developer, key = _publisher(plane)
    jws = _publish(plane, developer, key)
    (jwk,) = plane.jwks().model_dump()["keys"]
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        jws,
        public,
        algorithms=["EdDSA"],
        audience=f"d2-policy:{developer.account.id}:app",
        options={"verify_exp": False},  # signed on the fake clock
    )
    assert claims["version"] == 1
    plane.check_signing_keys()
    _close(plane)
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith("d2.db"))
    assert b"PRIVATE KEY" not in raw


def test_a_second_replica_with_the_same_secret_signs(db: Path) -> None:
    a = _plane(db, SECRET)
    a.rotate_key("ES256", overlap=0)
    developer, key = _publisher(a)
    b = _plane(db, SECRET)
    b.check_signing_keys()
    jws = _publish(b, developer, key)
    assert jwt.get_unverified_header(jws)["kid"] == a.storage.active_signing_key().kid  # type: ignore[union-attr]
    _close(a, b)


def test_a_wrong_secret_refuses_to_start_and_to_sign(db: Path) -> None:
    a = _plane(db, SECRET)
    a.ensure_signing_key()
    developer, key = _publisher(a)
    wrong = _plane(db, OTHER)
    with pytest.raises(KeySecretError, match=SECRET_ENV):
        wrong.check_signing_keys()
    with pytest.raises(ApiError) as refused:  # and nothing is stored
        _publish(wrong, developer, key)
    assert (refused.value.status, refused.value.detail) == (503, "signing_key_unavailable")
    assert wrong.storage.bundle_state(developer.app.id).current_version == 0
    # the server does not start: the lifespan runs the check before serving
    with pytest.raises(KeySecretError, match=SECRET_ENV), TestClient(create_app(wrong)):
        pass
    _close(a, wrong)


def test_sealed_keys_without_a_secret_are_refused(db: Path) -> None:
    a = _plane(db, SECRET)
    a.ensure_signing_key()
    developer, key = _publisher(a)
    none = _plane(db, None)
    with pytest.raises(KeySecretError, match=f"{SECRET_ENV} is not set"):
        none.check_signing_keys()
    with pytest.raises(ApiError) as refused:
        _publish(none, developer, key)
    assert refused.value.status == 503
    with pytest.raises(KeySecretError, match=SECRET_ENV):  # no clear key next to sealed ones
        none.rotate_key()
    assert len(none.storage.published_signing_keys(none.now())) == 1
    _close(a, none)


def test_without_a_secret_keys_are_clear_and_the_start_warns(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plane = _plane(db, None)
    record = plane.ensure_signing_key()
    assert not is_sealed(record.pem) and record.pem.startswith(b"-----BEGIN PRIVATE KEY")
    developer, key = _publisher(plane)
    _publish(plane, developer, key)
    with caplog.at_level(logging.WARNING, logger="d2.server"):
        plane.check_signing_keys()
    assert f"{SECRET_ENV} is not set" in caplog.text and "UNENCRYPTED" in caplog.text
    _close(plane)


def test_the_secret_is_read_from_the_environment(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    plane = ControlPlane(SQLStorage(db, migrate=True))
    assert is_sealed(plane.ensure_signing_key().pem)
    _close(plane)
    again = _plane(db, SECRET)
    again.check_signing_keys()  # the env's secret sealed it: this one opens it
    with pytest.raises(KeySecretError):
        _plane(db, OTHER).check_signing_keys()
    _close(again)


@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_LENGTH - 1)])
def test_a_weak_or_empty_secret_is_refused(
    db: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv(SECRET_ENV, secret)
    storage = SQLStorage(db, migrate=True)
    with pytest.raises(KeySecretError, match=SECRET_ENV):
        ControlPlane(storage)
    storage.close()


def test_a_clear_active_key_with_a_secret_is_refused_until_rotated(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = _plane(db, None)
    clear = old.ensure_signing_key()
    developer, key = _publisher(old)
    v1 = _publish(old, developer, key)
    _close(old)
    plane = _plane(db, SECRET)
    with pytest.raises(KeySecretError, match="rotate-key"):
        plane.check_signing_keys()
    new = plane.rotate_key(overlap=600)  # what the message says to do
    assert is_sealed(new.pem)
    with caplog.at_level(logging.WARNING, logger="d2.server"):
        plane.check_signing_keys()
    assert f"retired signing key {clear.kid} is stored unencrypted" in caplog.text
    # the current version is re-signed with the sealed key; the old bundle verifies
    principal = plane.authenticate("Bearer " + plane.create_token(developer.app, "runtime"))
    bundle = plane.bundle(principal)
    assert bundle.kid == new.kid
    assert {k["kid"] for k in plane.jwks().model_dump()["keys"]} == {new.kid, clear.kid}
    assert jwt.get_unverified_header(v1)["kid"] == clear.kid
    _close(plane)


def test_a_sealed_key_opens_only_for_its_own_kid_and_alg() -> None:
    sealer = KeySealer(SECRET)
    key = SigningKey.generate()
    sealed = sealer.seal(key.pem(), key.kid, "EdDSA")
    assert sealer.open(sealed, key.kid, "EdDSA") == key.pem()
    with pytest.raises(KeySecretError):  # copied onto another key's row
        sealer.open(sealed, "another-kid", "EdDSA")
    with pytest.raises(KeySecretError):
        sealer.open(sealed, key.kid, "ES256")
    with pytest.raises(KeySecretError, match=SECRET_ENV):
        KeySealer(OTHER).open(sealed, key.kid, "EdDSA")


@settings(max_examples=50, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_altered_byte_of_a_sealed_key_is_refused(position: int, bit: int) -> None:
    sealer = KeySealer(SECRET)
    sealed = sealer.seal(b"-----BEGIN PRIVATE KEY-----\nabc\n", "kid", "EdDSA")
    index = 4 + position % (len(sealed) - 4)  # past the marker: it must stay sealed
    altered = bytearray(sealed)
    altered[index] ^= 1 << bit
    with pytest.raises(KeySecretError):
        sealer.open(bytes(altered), "kid", "EdDSA")


# /healthz
@pytest.fixture
def live(db: Path) -> Iterator[tuple[ControlPlane, str]]:
    plane = _plane(db, SECRET)
    plane.ensure_signing_key()
    server = LiveServer(create_app(plane))
    server.start()
    try:
        yield plane, server.base_url
    finally:
        server.stop()
        plane.storage.close()


def test_healthz_answers_when_the_database_does(live: tuple[ControlPlane, str]) -> None:
    _, base = live
    r = httpx.get(f"{base}/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_healthz_is_503_when_the_database_cannot_answer(live: tuple[ControlPlane, str]) -> None:
    plane, base = live
    plane.storage.close()
    r = httpx.get(f"{base}/healthz")
    assert (r.status_code, r.json()) == (503, {"detail": "database_unavailable"})


def test_a_lost_secret_is_recovered_by_a_rotation_without_overlap(db: Path) -> None:
    lost = _plane(db, SECRET)
    old = lost.ensure_signing_key()
    developer, key = _publisher(lost)
    _close(lost)
    plane = _plane(db, OTHER)  # the documented recovery: a new secret, overlap 0
    with pytest.raises(KeySecretError):
        plane.check_signing_keys()
    with pytest.raises(KeySecretError, match="--replace-secret --overlap 0"):
        plane.rotate_key(overlap=0)  # not by accident: the flag says it is on purpose
    new = plane.rotate_key(overlap=0, replace_secret=True)
    plane.check_signing_keys()
    assert [k["kid"] for k in plane.jwks().model_dump()["keys"]] == [new.kid] != [old.kid]
    assert jwt.get_unverified_header(_publish(plane, developer, key))["kid"] == new.kid
    _close(plane)
