"""``rotate-key`` and ``D2_SERVER_SECRET`` on both databases: a rotation with a
secret that does not open the published keys is refused and changes nothing (a key
sealed under another secret would leave no replica able to sign or start for the
whole overlap: the seventh review); replacing the secret on purpose takes
``--replace-secret --overlap 0``."""

from __future__ import annotations

import json

import pytest
from d2.server import ControlPlane, ServerConfig, SQLStorage
from d2.server.cli import main
from d2.server.errors import ApiError
from d2.server.keyseal import SECRET_ENV, KeySecretError
from d2.server.storage import Principal
from d2.server.testing import DeviceKey, FakeClock

SECRET = "Zr7-serving-replicas-secret-0123456789abcdefXY"
OTHER = "Qm4-another-environments-secret-9876543210zyxw"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def _plane(db: str, secret: str | None, clock: FakeClock) -> ControlPlane:
    return ControlPlane(SQLStorage(db), ServerConfig(clock=clock), secret=secret)


def _published(db: str, clock: FakeClock) -> tuple[ControlPlane, Principal]:
    """A serving replica (``SECRET``) with one app whose version 1 is published,
    and that app's runtime principal."""
    serving = _plane(db, SECRET, clock)
    serving.check_signing_keys()
    _, app = serving.create_account("app")
    developer = serving.authenticate("Bearer " + serving.create_token(app, "developer"))
    key = DeviceKey()
    registration = {"key_id": key.key_id, "algorithm": "Ed25519", "public_key": key.public_key_b64}
    serving.register_key(developer, json.dumps(registration).encode())
    doc = {"metadata": {"name": "app"}, "policies": [{"role": "u", "permissions": ["t"]}]}
    body = json.dumps(doc).encode()
    serving.publish(
        developer,
        body,
        key_id=key.key_id,
        signature=key.sign(body),
        if_match=None,
        if_none_match="*",
    )
    runtime = serving.authenticate("Bearer " + serving.create_token(app, "runtime"))
    return serving, runtime


def _kids(plane: ControlPlane) -> list[str]:
    return [k["kid"] for k in plane.jwks().model_dump()["keys"]]


def test_rotate_key_with_another_secret_is_refused_and_changes_nothing(db: str) -> None:
    SQLStorage(db, migrate=True).close()
    clock = FakeClock(1_700_000_000.0)
    serving, runtime = _published(db, clock)
    before = _kids(serving)
    mistyped = _plane(db, OTHER, clock)  # `d2-server rotate-key` with the wrong secret
    with pytest.raises(KeySecretError) as refused:
        mistyped.rotate_key()
    message = str(refused.value)
    assert "nothing was changed" in message and SECRET_ENV in message
    assert "--replace-secret --overlap 0" in message  # what to do when it is lost
    assert _kids(serving) == before
    # the running replica still signs (a re-signing after the rotation's overlap)
    clock.advance(serving.config.refresh_after)
    assert serving.bundle(runtime).version == 1
    # and a restart with the serving secret starts
    restarted = _plane(db, SECRET, clock)
    restarted.check_signing_keys()
    for plane in (serving, mistyped, restarted):
        plane.storage.close()


def test_rotate_key_with_the_same_secret_keeps_every_replica_signing(db: str) -> None:
    SQLStorage(db, migrate=True).close()
    clock = FakeClock(1_700_000_000.0)
    serving, runtime = _published(db, clock)
    old = _kids(serving)
    cli = _plane(db, SECRET, clock)
    new = cli.rotate_key(overlap=600)
    assert _kids(serving) == [new.kid, *old]
    assert serving.bundle(runtime).kid == new.kid  # re-signed with the new key
    restarted = _plane(db, SECRET, clock)
    restarted.check_signing_keys()
    for plane in (serving, cli, restarted):
        plane.storage.close()


def test_replace_secret_needs_overlap_0_and_then_starts_only_with_the_new_secret(
    db: str,
) -> None:
    SQLStorage(db, migrate=True).close()
    clock = FakeClock(1_700_000_000.0)
    serving, runtime = _published(db, clock)
    before = _kids(serving)
    replacing = _plane(db, OTHER, clock)
    with pytest.raises(ValueError, match="--overlap 0"):  # keys under two secrets
        replacing.rotate_key(overlap=600, replace_secret=True)
    assert _kids(serving) == before
    new = replacing.rotate_key(overlap=0, replace_secret=True)
    assert _kids(serving) == [new.kid]  # the old keys left the JWKS at once
    restarted, old_secret, none = (_plane(db, s, clock) for s in (OTHER, SECRET, None))
    restarted.check_signing_keys()  # restarts with the new secret
    with pytest.raises(KeySecretError, match=SECRET_ENV):
        old_secret.check_signing_keys()
    with pytest.raises(ApiError) as stale:  # a replica not restarted yet signs nothing
        serving.bundle(runtime)
    assert (stale.value.status, stale.value.detail) == (503, "signing_key_unavailable")
    with pytest.raises(KeySecretError, match=f"needs the new secret: set {SECRET_ENV}"):
        none.rotate_key(overlap=0, replace_secret=True)  # never a clear key instead
    assert _kids(serving) == [new.kid]
    for plane in (serving, replacing, restarted, old_secret, none):
        plane.storage.close()


def test_the_rotate_key_command_refuses_another_secret(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert main(["init", "--db", db, "--json"]) == 0
    capsys.readouterr()
    storage = SQLStorage(db)
    before = storage.published_signing_keys(2e9)
    storage.close()
    monkeypatch.setenv(SECRET_ENV, OTHER)
    assert main(["rotate-key", "--db", db]) == 1
    err = capsys.readouterr().err
    assert "nothing was changed" in err and "--replace-secret --overlap 0" in err
    storage = SQLStorage(db)
    assert storage.published_signing_keys(2e9) == before
    storage.close()
    assert main(["rotate-key", "--db", db, "--replace-secret"]) == 2  # needs --overlap 0
    assert "--overlap 0" in capsys.readouterr().err
    assert main(["rotate-key", "--db", db, "--replace-secret", "--overlap", "0"]) == 0
    assert "new signing key" in capsys.readouterr().out
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert main(["rotate-key", "--db", db]) == 1  # the old secret no longer opens them
