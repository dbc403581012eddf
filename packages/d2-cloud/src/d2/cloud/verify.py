"""Verify a signed policy bundle (a compact JWS) against the control plane's keys.

Each key admits exactly one algorithm, decided by the key itself, never by the
token: Ed25519 (OKP) -> ``EdDSA``, P-256 (EC) -> ``ES256``, RSA of 2048 bits or more
-> ``RS256``. ``none`` and every HMAC algorithm are refused before any key is looked
at, and a header whose ``alg`` is not its key's algorithm is refused (no alg/key
confusion). Then: ``typ``, exact ``aud``, ``exp`` (with the caller's clock), and a
strictly monotonic ``version``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import jwt
from d2.core.errors import InvalidSignatureError
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = ["RESERVED_CLAIMS", "Bundle", "Key", "content_digest", "thumbprint", "verify_bundle"]

TYP = "d2-policy+jwt"
# Claims of the bundle that are not part of the policy document.
RESERVED_CLAIMS = frozenset({"aud", "iat", "exp", "nbf", "iss", "sub", "jti", "version"})
_RSA_MIN_BITS = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url, no padding) of a public JWK."""
    members = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
    names = members.get(str(jwk.get("kty")))
    if names is None or any(not isinstance(jwk.get(n), str) for n in names):
        raise InvalidSignatureError(f"cannot take the thumbprint of JWK {jwk.get('kid')!r}")
    canonical = json.dumps({n: jwk[n] for n in names}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


class Key:
    """A verification key: its ``kid``, the one ``alg`` it admits, the public key
    object and its RFC 7638 ``thumbprint``."""

    __slots__ = ("alg", "jwk", "kid", "public_key", "thumbprint")

    def __init__(self, jwk: Mapping[str, Any]) -> None:
        kid, kty = jwk.get("kid"), jwk.get("kty")
        if not isinstance(kid, str) or not kid:
            raise InvalidSignatureError("a JWKS key without a 'kid' cannot be used")
        if jwk.get("use", "sig") != "sig":
            raise InvalidSignatureError(
                f"key {kid!r} is not a signing key (use={jwk.get('use')!r})"
            )
        text = json.dumps(dict(jwk))
        public_key: Any
        try:
            if kty == "OKP" and jwk.get("crv") == "Ed25519":
                alg, public_key = "EdDSA", OKPAlgorithm.from_jwk(text)
            elif kty == "EC" and jwk.get("crv") == "P-256":
                alg, public_key = "ES256", ECAlgorithm.from_jwk(text)
            elif kty == "RSA":
                alg, public_key = "RS256", RSAAlgorithm.from_jwk(text)
                if public_key.key_size < _RSA_MIN_BITS:
                    raise InvalidSignatureError(f"RSA key {kid!r} is shorter than 2048 bits")
            else:
                raise InvalidSignatureError(
                    f"key {kid!r} has an unsupported type {kty!r}/{jwk.get('crv')!r} "
                    "(Ed25519, P-256 and RSA are accepted)"
                )
        except InvalidSignatureError:
            raise
        except Exception as exc:  # malformed key material
            raise InvalidSignatureError(f"key {kid!r} is malformed: {exc}") from None
        if hasattr(public_key, "private_bytes"):
            raise InvalidSignatureError(f"key {kid!r} is a private key; publish public keys only")
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise InvalidSignatureError(f"key {kid!r} declares alg {declared!r} but is a {alg} key")
        self.kid = kid
        self.alg = alg
        self.public_key = public_key
        self.jwk = dict(jwk)
        self.thumbprint = thumbprint(jwk)


class Bundle:
    """A verified bundle: its claims, the policy document inside, ``version``,
    ``expires_at`` and the content digest used to detect same-version changes."""

    __slots__ = ("claims", "digest", "document", "expires_at", "jws", "kid", "version")

    def __init__(self, jws: str, claims: dict[str, Any], kid: str) -> None:
        self.jws = jws
        self.claims = claims
        self.kid = kid
        self.version: int = claims["version"]
        self.expires_at = float(claims["exp"])
        self.document = {k: v for k, v in claims.items() if k not in RESERVED_CLAIMS}
        self.digest = content_digest(claims)


def content_digest(claims: Mapping[str, Any]) -> str:
    """Digest of what a version *says* (every claim but ``iat``/``exp``), so a
    re-signed, same-content bundle is recognised and changed content is not."""
    body = {k: v for k, v in claims.items() if k not in ("iat", "exp")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def header_of(token: str) -> dict[str, Any]:
    """The protected header, read without trusting it."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidSignatureError(f"bundle is not a compact JWS: {exc}") from None
    return header


def verify_bundle(
    token: str,
    key: Key | None,
    *,
    audience: str,
    now: float,
    highest: tuple[int, str] | None = None,
) -> Bundle:
    """Verify ``token`` with ``key`` (the JWKS entry for its ``kid``) and return it.

    ``highest`` is the (version, content digest) of the newest bundle accepted so far:
    an older version is a rollback, the same version with another digest a forgery;
    both are refused. Raises :class:`InvalidSignatureError` saying what failed.
    """
    header = header_of(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
        raise InvalidSignatureError(f"bundle algorithm {alg!r} is never accepted")
    if header.get("typ") != TYP:
        raise InvalidSignatureError(f"bundle typ is {header.get('typ')!r}, expected {TYP!r}")
    if key is None:
        raise InvalidSignatureError(f"no key with kid {header.get('kid')!r} in the JWKS")
    if alg != key.alg:
        raise InvalidSignatureError(f"bundle says alg {alg!r} but key {key.kid!r} is {key.alg}")
    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[key.alg],
            audience=audience,
            options={
                "require": ["aud", "exp", "iat", "version"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise InvalidSignatureError(
            f"bundle is for another app or account (aud != {audience!r})"
        ) from None
    except jwt.PyJWTError as exc:
        raise InvalidSignatureError(f"bundle failed verification: {exc}") from None
    if claims.get("aud") != audience:  # a list naming several apps is not this app's
        raise InvalidSignatureError(f"bundle aud must be exactly {audience!r}")
    version, exp = claims.get("version"), claims.get("exp")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidSignatureError(f"bundle version {version!r} is not an integer >= 1")
    if (
        isinstance(exp, bool)
        or not isinstance(exp, (int, float))
        or not math.isfinite(exp)
        or not now < exp
    ):
        raise InvalidSignatureError(f"bundle expired (exp={exp!r}) or has no valid exp")
    bundle = Bundle(token, claims, key.kid)
    if highest is not None:
        top, digest = highest
        if version < top:
            raise InvalidSignatureError(
                f"bundle version {version} is older than version {top} already accepted "
                "(rollback refused)"
            )
        if version == top and bundle.digest != digest:
            raise InvalidSignatureError(
                f"bundle version {version} differs from the version {top} already accepted "
                "(same version, other content: refused)"
            )
    return bundle
