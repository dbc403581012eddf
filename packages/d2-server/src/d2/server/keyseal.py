"""Signing keys at rest: the private key of each server signing key is stored
encrypted with a key derived from ``D2_SERVER_SECRET``.

A sealed key is ``b"D2K1"`` + a 12-byte random nonce + the AES-256-GCM encryption
of the PKCS#8 PEM, authenticated together with the key's ``kid`` and algorithm
(so a sealed blob copied onto another key's row does not open). The AES key is
derived from the secret with HKDF-SHA256. A PEM never starts with ``D2K1``, so a
key stored in clear (by a server that ran without a secret) is told apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .storage import SigningKeyRecord

__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_ENV",
    "KeySealer",
    "KeySecretError",
    "check_rotation",
    "check_stored_keys",
    "is_sealed",
    "private_pem",
]

SECRET_ENV = "D2_SERVER_SECRET"
"""The environment variable holding the secret the signing keys are encrypted with."""

MIN_SECRET_LENGTH = 32
"""The shortest accepted secret, in characters."""

_MAGIC = b"D2K1"
_NONCE = 12
_SALT = b"d2-server signing keys at rest"
_INFO = b"AES-256-GCM v1"
_log = logging.getLogger("d2.server")


class KeySecretError(ValueError):
    """The signing keys cannot be used with the configured secret (missing, wrong,
    or too weak); the message says what to do."""


def is_sealed(stored: bytes) -> bool:
    """Whether a stored private key is encrypted (else it is a clear PEM)."""
    return stored.startswith(_MAGIC)


def _aad(kid: str, alg: str) -> bytes:
    return f"d2-signing-key:{alg}:{kid}".encode()


class KeySealer:
    """Encrypts and decrypts stored private keys with a secret."""

    __slots__ = ("_aead",)

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise KeySecretError(
                f"{SECRET_ENV} is too short ({len(secret)} characters): use at least "
                f"{MIN_SECRET_LENGTH} random characters, e.g. the output of "
                '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`'
            )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
            secret.encode("utf-8")
        )
        self._aead = AESGCM(derived)

    def seal(self, pem: bytes, kid: str, alg: str) -> bytes:
        """The stored form of the private key ``pem`` of key ``kid``."""
        nonce = os.urandom(_NONCE)
        return _MAGIC + nonce + self._aead.encrypt(nonce, pem, _aad(kid, alg))

    def open(self, stored: bytes, kid: str, alg: str) -> bytes:
        """The PEM of a sealed key; :class:`KeySecretError` when this secret did
        not seal it (or the stored bytes were altered)."""
        if not is_sealed(stored):
            raise KeySecretError(f"signing key {kid} is not encrypted")
        body = stored[len(_MAGIC) :]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], _aad(kid, alg))
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
    no secret is set, and for each retired key still stored in clear."""
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
    replicas must be restarted with the new secret. It still needs a secret."""
    if sealer is None:
        if any(is_sealed(k.pem) for k in keys):
            raise KeySecretError(
                f"the signing keys of this database are encrypted: set {SECRET_ENV} to "
                "their secret (a new key must not be stored in clear next to them)"
                if not replace_secret
                else f"--replace-secret needs the new secret: set {SECRET_ENV} (a new key "
                "must not be stored in clear in place of encrypted ones)"
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
