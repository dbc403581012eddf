"""``D2_SERVER_SECRET`` against offline guessing (the seventh review): obviously weak
secrets are refused, the AES key is derived with scrypt and a per-key salt (format
``D2K2``), derived once per key per process, and keys sealed by earlier servers
(``D2K1``, HKDF) still open."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from d2.server import ControlPlane, ServerConfig, SQLStorage, keyseal
from d2.server.errors import ApiError
from d2.server.keyseal import (
    MIN_SECRET_DISTINCT,
    MIN_SECRET_LENGTH,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    SECRET_ENV,
    KeySealer,
    KeySecretError,
    check_secret,
    is_sealed,
)
from d2.server.signing import SigningKey
from d2.server.storage import Principal, SigningKeyRecord
from d2.server.testing import DeviceKey, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

SECRET = "Vb8-a-generated-looking-secret-0123456789abcdWXYZ"
OTHER = "Hn3-another-generated-looking-secret-9876543210zyx"
D2K1 = json.loads((Path(__file__).parent / "data" / "d2k1_sealed_keys.json").read_text())


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


# (a) obviously weak secrets


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (" " * 32, "different characters"),
        ("\t \n\r" * 10, "different characters"),
        ("a" * 32, "different characters"),
        ("a" * 200, "different characters"),
        ("passwordpasswordpasswordpassword", "different characters"),
        (" a b c d e f g " * 3, "different characters"),  # 7 besides the spaces
        ("abcdefgh" * 4, "repeats"),
        ("0123456789" * 4, "repeats"),
        ("correct horse staple! " * 2, "repeats"),
        ("Tr0ub4dor&3-Tr0ub4dor&3-Tr0ub4dor&3-Tr0u", "repeats"),  # cut short still repeats
    ],
)
def test_an_obviously_weak_secret_is_refused_saying_how_to_make_one(secret: str, why: str) -> None:
    with pytest.raises(KeySecretError) as refused:
        KeySealer(secret)
    message = str(refused.value)
    assert why in message and SECRET_ENV in message
    assert "secrets.token_urlsafe(32)" in message  # how to generate one
    assert "rotate-key --replace-secret --overlap 0" in message  # keys under the weak one
    assert not secret.strip() or secret.strip() not in message  # never echoed into logs


def test_generated_secrets_are_accepted() -> None:
    for _ in range(3000):
        check_secret(secrets.token_urlsafe(32))  # the documented command
        check_secret(secrets.token_hex(32))  # openssl rand -hex 32
        check_secret(base64.b64encode(secrets.token_bytes(32)).decode())  # openssl rand -base64 32


def _reference(secret: str) -> bool:
    """The documented rule, written naively: at least 32 characters, at least 8
    different ones besides whitespace, and not a string repeated (its shortest
    period is more than half its length)."""
    if len(secret) < MIN_SECRET_LENGTH:
        return False
    if len({c for c in secret if not c.isspace()}) < MIN_SECRET_DISTINCT:
        return False
    period = next(
        p
        for p in range(1, len(secret) + 1)
        if all(secret[i] == secret[i + p] for i in range(len(secret) - p))
    )
    return period > len(secret) // 2


def _accepted(secret: str) -> bool:
    try:
        check_secret(secret)
    except KeySecretError:
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(min_size=28, max_size=80),
        st.text(alphabet="ab \t", min_size=28, max_size=80),
        st.builds(
            lambda unit, times, cut: (unit * times)[: max(len(unit), len(unit) * times - cut)],
            st.text(min_size=1, max_size=20),
            st.integers(min_value=2, max_value=40),
            st.integers(min_value=0, max_value=5),
        ),
        st.builds(
            lambda a, b: a + b,
            st.text(alphabet="abcdefgh ", min_size=0, max_size=40),
            st.text(alphabet="ijklmnop\n", min_size=0, max_size=40),
        ),
    )
)
def test_the_secret_rule_is_exactly_the_documented_one(secret: str) -> None:
    assert _accepted(secret) == _reference(secret)


# (b) scrypt with a per-key salt (D2K2)


def test_a_new_key_is_sealed_with_scrypt_and_its_own_salt() -> None:
    sealer = KeySealer(SECRET)
    key = SigningKey.generate()
    first = sealer.seal(key.pem(), key.kid, "EdDSA")
    second = sealer.seal(key.pem(), key.kid, "EdDSA")
    assert first.startswith(b"D2K2") and is_sealed(first)
    salt, nonce, body = first[4:20], first[20:32], first[32:]
    assert salt != second[4:20]  # a salt per sealed key
    # the documented format, opened by hand: scrypt(secret, salt), then AES-256-GCM
    derived = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(SECRET.encode())
    aad = f"d2-signing-key:EdDSA:{key.kid}".encode()
    assert AESGCM(derived).decrypt(nonce, body, aad) == key.pem()
    assert (SCRYPT_N, SCRYPT_R, SCRYPT_P) == (2**15, 8, 1)


def test_each_offline_guess_costs_a_memory_hard_derivation() -> None:
    """The exploit: a copy of the database and a list of guesses. With HKDF a guess
    cost microseconds (127k/s on one core); now each one derives scrypt."""
    key = SigningKey.generate()
    stolen = KeySealer(SECRET).seal(key.pem(), key.kid, "EdDSA")
    guesses = [f"{OTHER}-{n}" for n in range(5)]
    start = time.perf_counter()
    for guess in guesses:
        with pytest.raises(KeySecretError):
            KeySealer(guess).open(stolen, key.kid, "EdDSA")
    per_guess = (time.perf_counter() - start) / len(guesses)
    assert per_guess > 0.01, f"{per_guess * 1000:.2f} ms per guess"
    assert KeySealer(SECRET).open(stolen, key.kid, "EdDSA") == key.pem()


class _Counting:
    """Counts the scrypt derivations of :mod:`d2.server.keyseal`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = keyseal.Scrypt

        def counted(*args: object, **kwargs: object) -> Scrypt:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(keyseal, "Scrypt", counted)


def _plane(db: Path | str, secret: str | None, clock: FakeClock) -> ControlPlane:
    return ControlPlane(SQLStorage(db, migrate=True), ServerConfig(clock=clock), secret=secret)


def _published(plane: ControlPlane) -> Principal:
    """An app with version 1 published through ``plane``; its runtime principal."""
    _, app = plane.create_account("app")
    developer = plane.authenticate("Bearer " + plane.create_token(app, "developer"))
    key = DeviceKey()
    registration = {"key_id": key.key_id, "algorithm": "Ed25519", "public_key": key.public_key_b64}
    plane.register_key(developer, json.dumps(registration).encode())
    doc = {"metadata": {"name": "app"}, "policies": [{"role": "u", "permissions": ["t"]}]}
    body = json.dumps(doc).encode()
    plane.publish(
        developer,
        body,
        key_id=key.key_id,
        signature=key.sign(body),
        if_match=None,
        if_none_match="*",
    )
    return plane.authenticate("Bearer " + plane.create_token(app, "runtime"))


def test_the_derivation_runs_once_per_key_per_process_never_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(1_700_000_000.0)
    db = tmp_path / "d2.db"
    writer = _plane(db, SECRET, clock)
    runtime = _published(writer)
    writer.rotate_key(overlap=3600)  # two sealed keys in the JWKS
    counting = _Counting(monkeypatch)
    reader = _plane(db, SECRET, clock)  # a replica starting: no derivation yet
    assert counting.calls == 0
    reader.check_signing_keys()
    assert counting.calls == 2  # one per published key
    reader.check_signing_keys()
    for _ in range(3):  # every fetch re-signs (the bundle is due), none derives
        clock.advance(reader.config.refresh_after)
        assert reader.bundle(runtime).kid == reader.storage.active_signing_key().kid  # type: ignore[union-attr]
    assert counting.calls == 2
    wrong = _plane(db, OTHER, clock)  # a replica that cannot open the keys
    for _ in range(5):
        with pytest.raises(KeySecretError):
            wrong.check_signing_keys()
    assert counting.calls == 2 + 1  # one failed derivation (the first key), remembered
    for plane in (writer, reader, wrong):
        plane.storage.close()


def test_a_refused_signing_does_not_derive_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica whose secret does not open the active key answers 503 to every
    request that needs a signature: each must cost an AES-GCM check, not scrypt."""
    clock = FakeClock(1_700_000_000.0)
    db = tmp_path / "d2.db"
    serving = _plane(db, SECRET, clock)
    runtime = _published(serving)
    wrong = _plane(db, OTHER, clock)
    clock.advance(serving.config.refresh_after)  # every poll now re-signs
    counting = _Counting(monkeypatch)
    for _ in range(5):
        with pytest.raises(ApiError) as refused:
            wrong.bundle(runtime)
        assert refused.value.status == 503
    assert counting.calls == 1
    for plane in (serving, wrong):
        plane.storage.close()


# D2K1: keys sealed by earlier servers


def test_keys_sealed_by_earlier_servers_still_open_and_sign(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_700_000_000.0)
    plane = _plane(tmp_path / "d2.db", D2K1["secret"], clock)
    for old in D2K1["keys"]:
        sealed = base64.b64decode(old["sealed_b64"])
        assert sealed.startswith(b"D2K1") and is_sealed(sealed)
        record = SigningKeyRecord(old["kid"], old["alg"], sealed, old["jwk"], clock())
        plane.storage.add_signing_key(record, overlap=3600, now=clock())
    with caplog.at_level(logging.WARNING, logger="d2.server"):
        plane.check_signing_keys()  # both open, and their private keys match their kid
    for old in D2K1["keys"]:
        assert f"signing key {old['kid']} is sealed in the old D2K1 format" in caplog.text
    assert "rotate-key" in caplog.text
    runtime = _published(plane)  # signed with the active D2K1 key
    bundle = plane.bundle(runtime)
    active = D2K1["keys"][-1]
    assert bundle.kid == active["kid"]
    jwt.decode(
        bundle.jws,
        jwt.PyJWK(active["jwk"]).key,
        algorithms=[active["alg"]],
        audience=f"d2-policy:{runtime.account.id}:app",
        options={"verify_exp": False},  # signed on the fake clock
    )
    new = plane.rotate_key(overlap=3600)  # the same secret: the rotation is allowed
    assert new.pem.startswith(b"D2K2")
    with pytest.raises(KeySecretError):  # and another secret does not open them
        _plane(tmp_path / "d2.db", OTHER, clock).check_signing_keys()
    plane.storage.close()
