"""Signing keys at rest: the private key of each server signing key is stored
encrypted with a key derived from ``D2_SERVER_SECRET``.

A sealed key is ``b"D2K2"`` + a 16-byte random salt + a 12-byte random nonce + the
AES-256-GCM encryption of the PKCS#8 PEM, authenticated together with the key's
``kid`` and algorithm (so a sealed blob copied onto another key's row does not
open). The AES key is derived from the secret and the key's own salt with scrypt
(:data:`SCRYPT_N`, :data:`SCRYPT_R`, :data:`SCRYPT_P`: 32 MiB and tens of
milliseconds per derivation), so whoever holds a copy of the database pays that for
every secret they guess; a :class:`KeySealer` derives once per salt (per key) and
remembers the result, success or not, so a process pays it once per key, at its
start, never per request.

Keys sealed by earlier servers, ``b"D2K1"`` + nonce + ciphertext with the AES key
derived by HKDF-SHA256 (fast: no work factor), still open; new keys are never
sealed that way. :func:`check_stored_keys` warns about each published D2K1 key:
``d2-server rotate-key`` seals a new key in D2K2, and the D2K1 one leaves the JWKS
at the end of the overlap (its row stays in the table, still a fast way to test
guesses of the secret: replace a secret that may be guessable, see
docs/self-hosting.md).

:func:`check_secret` refuses obviously weak secrets: shorter than
:data:`MIN_SECRET_LENGTH` characters, fewer than :data:`MIN_SECRET_DISTINCT`
different characters besides whitespace, or one string repeated (its shortest
period is at most half its length). Generated secrets pass
(``secrets.token_urlsafe(32)`` is refused with a probability below 10^-30, as are
64 hex digits below 10^-18); a passphrase that passes is still weaker than a
generated secret, and only scrypt's cost stands between a dump and it.

A PEM never starts with ``D2K``, so a key stored in clear (by a server that ran
without a secret) is told apart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .storage import SigningKeyRecord

__all__ = [
    "MIN_SECRET_DISTINCT",
    "MIN_SECRET_LENGTH",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "SECRET_ENV",
    "KeySealer",
    "KeySecretError",
    "check_rotation",
    "check_secret",
    "check_stored_keys",
    "is_sealed",
    "private_pem",
]

SECRET_ENV = "D2_SERVER_SECRET"
"""The environment variable holding the secret the signing keys are encrypted with."""

MIN_SECRET_LENGTH = 32
"""The shortest accepted secret, in characters."""

MIN_SECRET_DISTINCT = 8
"""The fewest different characters (whitespace aside) an accepted secret has."""

SCRYPT_N = 2**15
"""scrypt's cost parameter for new sealed keys (with :data:`SCRYPT_R`: 32 MiB)."""

SCRYPT_R = 8
"""scrypt's block size for new sealed keys."""

SCRYPT_P = 1
"""scrypt's parallelization for new sealed keys."""

_MAGIC = b"D2K2"  # scrypt with a salt per key
_MAGIC_V1 = b"D2K1"  # HKDF-SHA256, fixed salt: opened, never written
_SALT = 16
_NONCE = 12
_V1_SALT = b"d2-server signing keys at rest"
_V1_INFO = b"AES-256-GCM v1"
_DERIVED_MAX = 64  # derived keys a sealer remembers (one per salt seen)
_GENERATE = '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`'
_log = logging.getLogger("d2.server")


class KeySecretError(ValueError):
    """The signing keys cannot be used with the configured secret (missing, wrong,
    or too weak); the message says what to do."""


def _weak(why: str) -> KeySecretError:
    return KeySecretError(
        f"{SECRET_ENV} is too weak: {why}. Generate it, do not choose it: use the "
        f"output of {_GENERATE}. If keys are already stored under this secret, set the "
        "generated one and run `d2-server rotate-key --replace-secret --overlap 0`"
    )


def _shortest_period(text: str) -> int:
    """The smallest ``p`` with ``text[i] == text[i + p]`` for every ``i`` (the
    prefix function of Knuth, Morris and Pratt)."""
    border = [0] * len(text)
    for i in range(1, len(text)):
        k = border[i - 1]
        while k and text[i] != text[k]:
            k = border[k - 1]
        if text[i] == text[k]:
            k += 1
        border[i] = k
    return len(text) - (border[-1] if text else 0)


def check_secret(secret: str) -> None:
    """Refuse an obviously weak secret (:class:`KeySecretError`, never quoting
    it): shorter than :data:`MIN_SECRET_LENGTH` characters, fewer than
    :data:`MIN_SECRET_DISTINCT` different characters besides whitespace (a repeated
    character, whitespace only, a short word), or one string repeated, possibly cut
    short (its shortest period is at most half its length)."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise KeySecretError(
            f"{SECRET_ENV} is too short ({len(secret)} characters): use at least "
            f"{MIN_SECRET_LENGTH} random characters, e.g. the output of {_GENERATE}"
        )
    distinct = len({c for c in secret if not c.isspace()})
    if distinct < MIN_SECRET_DISTINCT:
        raise _weak(
            f"it has {distinct} different characters besides whitespace (at least "
            f"{MIN_SECRET_DISTINCT})"
        )
    period = _shortest_period(secret)
    if period <= len(secret) // 2:
        raise _weak(f"it repeats a string of {period} characters")


def is_sealed(stored: bytes) -> bool:
    """Whether a stored private key is encrypted (else it is a clear PEM)."""
    return stored.startswith((_MAGIC, _MAGIC_V1))


def _aad(kid: str, alg: str) -> bytes:
    return f"d2-signing-key:{alg}:{kid}".encode()


class KeySealer:
    """Encrypts and decrypts stored private keys with a secret
    (:class:`KeySecretError` for a weak one, :func:`check_secret`). Each AES key it
    derives (one per salt, so per sealed key) is remembered: a process pays scrypt
    once per key, also for a key its secret does not open."""

    __slots__ = ("_derived", "_lock", "_secret")

    def __init__(self, secret: str) -> None:
        check_secret(secret)
        self._secret = secret.encode("utf-8")
        self._derived: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()

    def _aead(self, salt: bytes | None) -> AESGCM:
        """The AES key for ``salt`` (scrypt), or for the D2K1 format (``None``)."""
        slot = _MAGIC_V1 if salt is None else salt  # 4 bytes: never a 16-byte salt
        with self._lock:  # derivations are rare: one at a time, each exactly once
            aead = self._derived.get(slot)
            if aead is None:
                if salt is None:
                    kdf: HKDF | Scrypt = HKDF(
                        algorithm=hashes.SHA256(), length=32, salt=_V1_SALT, info=_V1_INFO
                    )
                else:
                    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
                if len(self._derived) >= _DERIVED_MAX:
                    self._derived.clear()
                aead = AESGCM(kdf.derive(self._secret))
                self._derived[slot] = aead
        return aead

    def seal(self, pem: bytes, kid: str, alg: str) -> bytes:
        """The stored form (D2K2) of the private key ``pem`` of key ``kid``."""
        salt = os.urandom(_SALT)
        nonce = os.urandom(_NONCE)
        return _MAGIC + salt + nonce + self._aead(salt).encrypt(nonce, pem, _aad(kid, alg))

    def open(self, stored: bytes, kid: str, alg: str) -> bytes:
        """The PEM of a sealed key (D2K2, or D2K1 from an earlier server);
        :class:`KeySecretError` when this secret did not seal it (or the stored
        bytes were altered)."""
        if stored.startswith(_MAGIC):
            body = stored[len(_MAGIC) :]
            salt, body = body[:_SALT], body[_SALT:]
            aead = self._aead(salt) if len(salt) == _SALT else None
        elif stored.startswith(_MAGIC_V1):
            body = stored[len(_MAGIC_V1) :]
            aead = self._aead(None)
        else:
            raise KeySecretError(f"signing key {kid} is not encrypted")
        try:
            if aead is None or len(body) < _NONCE:
                raise InvalidTag
            return aead.decrypt(body[:_NONCE], body[_NONCE:], _aad(kid, alg))
        except InvalidTag:
            raise KeySecretError(
                f"{SECRET_ENV} does not decrypt signing key {kid}: it is not the secret "
                "the key was stored with (or the stored key was altered). Set "
                f"{SECRET_ENV} to the secret every replica of this database uses."
            ) from None


def private_pem(record: SigningKeyRecord, sealer: KeySealer | None) -> bytes:
    """The clear PEM of a stored key: decrypted with ``sealer`` when sealed
    (:class:`KeySecretError` without one, or when it does not open the key)."""
    if not is_sealed(record.pem):
        return record.pem
    if sealer is None:
        raise KeySecretError(
            f"signing key {record.kid} is encrypted and {SECRET_ENV} is not set: set it "
            "to the secret the keys were stored with"
        )
    return sealer.open(record.pem, record.kid, record.alg)


def check_stored_keys(
    keys: Sequence[SigningKeyRecord],
    active_kid: str | None,
    sealer: KeySealer | None,
    load: Callable[[SigningKeyRecord], object],
) -> None:
    """Whether a server may start with the published ``keys``; raises
    :class:`KeySecretError` when a key is encrypted and no secret is set, when
    ``load`` (which decrypts and parses a key) fails for an encrypted key, or when
    a secret is set but the active key is stored in clear (the message says to
    rotate it with the secret set). Logs a warning on the ``d2.server`` logger when
    no secret is set, for each retired key still stored in clear, and for each key
    sealed in the old D2K1 format (the message says to rotate)."""
    if sealer is None:
        if any(is_sealed(k.pem) for k in keys):
            raise KeySecretError(
                f"the signing keys of this database are encrypted and {SECRET_ENV} is "
                "not set: set it to the secret they were stored with"
            )
        _log.warning(
            "%s is not set: the private signing keys are stored UNENCRYPTED in the "
            "database; anyone who reads it (a dump, a backup, a replica's disk) can "
            "sign policy bundles your agents trust. Set %s (see docs/security.md).",
            SECRET_ENV,
            SECRET_ENV,
        )
        return
    for key in keys:
        if is_sealed(key.pem):
            load(key)  # raises when the secret does not open it
            if key.pem.startswith(_MAGIC_V1):
                _log.warning(
                    "signing key %s is sealed in the old D2K1 format (HKDF: a copy of "
                    "the database tests guesses of %s quickly); run `d2-server "
                    "rotate-key`: new keys are sealed with scrypt (D2K2). See "
                    "docs/self-hosting.md, signing keys at rest",
                    key.kid,
                    SECRET_ENV,
                )
        elif key.kid == active_kid:
            raise KeySecretError(
                f"{SECRET_ENV} is set but the active signing key {key.kid} is stored "
                "unencrypted (it was created without a secret). Run `d2-server "
                f"rotate-key` once with {SECRET_ENV} set: the new key is stored "
                "encrypted and the old one is never used to sign again"
            )
        else:
            _log.warning(
                "retired signing key %s is stored unencrypted; it leaves the JWKS at "
                "the end of its overlap and is never used to sign",
                key.kid,
            )


def check_rotation(
    keys: Sequence[SigningKeyRecord],
    sealer: KeySealer | None,
    load: Callable[[SigningKeyRecord], object],
    *,
    replace_secret: bool = False,
) -> None:
    """Whether ``rotate-key`` may store a new key next to the published ``keys``;
    raises :class:`KeySecretError` (the rotation then changes nothing) when a key is
    encrypted and no secret is set, or when ``load`` (which decrypts and parses a
    key) fails for an encrypted key: a new key sealed under another secret than the
    published ones would leave no replica able to sign (the running ones cannot open
    it) or to start (no secret opens every published key) until they leave the JWKS.

    ``replace_secret`` (``rotate-key --replace-secret``, with no overlap) skips the
    second check: the published keys leave the JWKS with the rotation, and the
    replicas must be restarted with the new secret. It needs a secret, always."""
    if sealer is None:
        if replace_secret:
            raise KeySecretError(
                f"--replace-secret needs the new secret: set {SECRET_ENV} (a new key "
                "must not be stored in clear in place of encrypted ones)"
            )
        if any(is_sealed(k.pem) for k in keys):
            raise KeySecretError(
                f"the signing keys of this database are encrypted: set {SECRET_ENV} to "
                "their secret (a new key must not be stored in clear next to them)"
            )
        return
    if replace_secret:
        return
    for key in keys:
        if not is_sealed(key.pem):
            continue
        try:
            load(key)
        except KeySecretError:
            raise KeySecretError(
                f"rotate-key refused, nothing was changed: {SECRET_ENV} does not decrypt "
                f"the published signing key {key.kid}, so it is not the secret the "
                "serving replicas use. A new key stored under it would leave no replica "
                "able to sign or to start until the old keys leave the JWKS. Run "
                f"rotate-key with {SECRET_ENV} set to the secret the keys were stored "
                "with. To replace a lost or leaked secret on purpose, run `d2-server "
                f"rotate-key --replace-secret --overlap 0` with the new secret in "
                f"{SECRET_ENV}, then restart every replica with it."
            ) from None
