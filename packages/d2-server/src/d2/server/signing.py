"""The server's signing keys, its JWKS and the signed policy bundles.

Bundles are compact JWS (RFC 7515) with the protected header ``alg``, ``kid``,
``typ: "d2-policy+jwt"`` and, for a key still inside its rotation window,
``jwks_refresh: true``. Algorithms: ``EdDSA`` (Ed25519, the default), ``ES256``
(P-256) and ``RS256`` (RSA 3072). A key's ``kid`` is its RFC 7638 JWK thumbprint,
so a client can pin keys by thumbprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "BUNDLE_TYP",
    "DEFAULT_ALGORITHM",
    "KeyCache",
    "PrivateKey",
    "SigningKey",
    "audience",
    "bundle_etag",
    "bundle_payload",
    "carries_jwks_refresh",
    "jwk_thumbprint",
]

ALGORITHMS: tuple[str, ...] = ("EdDSA", "ES256", "RS256")
DEFAULT_ALGORITHM = "EdDSA"
BUNDLE_TYP = "d2-policy+jwt"
RSA_BITS = 3072

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_THUMBPRINT_MEMBERS = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def _check_alg(alg: str) -> None:
    if alg not in ALGORITHMS:
        raise ValueError(
            f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}"
        )


def _generate(alg: str) -> PrivateKey:
    _check_alg(alg)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _public_members(key: PrivateKey) -> dict[str, str]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _uint(numbers.x, 32), "y": _uint(numbers.y, 32)}
    rsa_numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "n": _uint(rsa_numbers.n), "e": _uint(rsa_numbers.e)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK (base64url, no padding)."""
    members = _THUMBPRINT_MEMBERS[str(jwk["kty"])]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class SigningKey:
    """A private signing key with its algorithm, ``kid`` and public JWK."""

    __slots__ = ("alg", "jwk", "kid", "private_key")

    def __init__(self, private_key: PrivateKey, alg: str) -> None:
        _check_alg(alg)
        expected: dict[str, type[Any]] = {
            "EdDSA": ed25519.Ed25519PrivateKey,
            "ES256": ec.EllipticCurvePrivateKey,
            "RS256": rsa.RSAPrivateKey,
        }
        if not isinstance(private_key, expected[alg]):
            raise ValueError(f"a {type(private_key).__name__} cannot sign {alg}")
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise ValueError("ES256 needs a P-256 key")
        if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < 2048:
            raise ValueError("RS256 needs an RSA key of at least 2048 bits")
        self.private_key = private_key
        self.alg = alg
        members = _public_members(private_key)
        self.kid = jwk_thumbprint(members)
        self.jwk: dict[str, str] = {**members, "kid": self.kid, "alg": alg, "use": "sig"}

    @classmethod
    def generate(cls, alg: str = DEFAULT_ALGORITHM) -> SigningKey:
        """A new random key for ``alg``."""
        return cls(_generate(alg), alg)

    @classmethod
    def from_pem(cls, pem: bytes, alg: str) -> SigningKey:
        """Load a PKCS#8 PEM private key (as stored by :meth:`pem`)."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(
            key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
        ):
            raise ValueError(f"unsupported private key type {type(key).__name__}")
        return cls(key, alg)

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        pem: bytes = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem

    def sign(self, payload: bytes, *, jwks_refresh: bool = False) -> str:
        """A compact JWS of ``payload`` (bytes, signed as they are)."""
        headers: dict[str, Any] = {"kid": self.kid, "typ": BUNDLE_TYP}
        if jwks_refresh:
            headers["jwks_refresh"] = True
        return jwt.api_jws.encode(payload, self.private_key, algorithm=self.alg, headers=headers)

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, kid={self.kid!r})"


class KeyCache:
    """Loaded :class:`SigningKey` objects by ``kid`` (parsing a PEM, RSA above all,
    costs more than a signature)."""

    def __init__(self) -> None:
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()

    def cached(self, kid: str) -> SigningKey | None:
        """The key ``kid`` when it was loaded before, else ``None``."""
        with self._lock:
            return self._keys.get(kid)

    def load(self, kid: str, pem: bytes, alg: str) -> SigningKey:
        """The key ``kid``, parsed from ``pem`` on first use."""
        with self._lock:
            key = self._keys.get(kid)
        if key is None:
            key = SigningKey.from_pem(pem, alg)
            if key.kid != kid:
                raise ValueError(f"stored key {kid!r} does not match its private key")
            with self._lock:
                self._keys[kid] = key
        return key


def carries_jwks_refresh(jws: str) -> bool:
    """Whether a compact JWS's protected header has ``jwks_refresh: true``."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError:
        return False
    return header.get("jwks_refresh") is True


def audience(account_id: str, app_name: str) -> str:
    """The ``aud`` claim of an app's bundles."""
    return f"d2-policy:{account_id}:{app_name}"


def bundle_payload(
    *,
    account_id: str,
    app_name: str,
    version: int,
    iat: int,
    exp: int,
    document: Mapping[str, Any],
) -> bytes:
    """The JWS payload: ``aud``, ``iat``, ``exp``, ``version`` and the policy
    document's top-level keys, as canonical JSON (sorted keys, no spaces)."""
    claims = {
        **document,
        "aud": audience(account_id, app_name),
        "iat": iat,
        "exp": exp,
        "version": version,
    }
    return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def bundle_etag(jws: str) -> str:
    """The ``ETag`` of a signed bundle: a quoted digest of the JWS itself, so it
    changes whenever the served bytes do (a new version, or a re-signing)."""
    return '"' + hashlib.sha256(jws.encode("ascii")).hexdigest()[:32] + '"'
