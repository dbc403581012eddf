"""Signing keys, the JWKS and bundle JWS: every algorithm verifies with pyjwt and
with the key published in the JWKS; no algorithm confusion."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from d2.server.signing import (
    ALGORITHMS,
    BUNDLE_TYP,
    SigningKey,
    audience,
    bundle_etag,
    bundle_payload,
    jwk_thumbprint,
)

_KTY = {"EdDSA": "OKP", "ES256": "EC", "RS256": "RSA"}


@pytest.fixture(scope="module", params=ALGORITHMS)
def key(request: pytest.FixtureRequest) -> SigningKey:
    return SigningKey.generate(request.param)


def _payload() -> bytes:
    doc = {"metadata": {"name": "app"}, "policies": [{"role": "r", "permissions": ["t"]}]}
    return bundle_payload(account_id="acc", app_name="app", version=3, iat=10, exp=20, document=doc)


def test_a_bundle_verifies_with_pyjwt_and_the_published_jwk(key: SigningKey) -> None:
    jws = key.sign(_payload())
    public = jwt.PyJWK.from_dict(key.jwk)
    claims = jwt.decode(
        jws,
        public.key,
        algorithms=[key.alg],
        audience=audience("acc", "app"),
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["version"] == 3 and claims["aud"] == "d2-policy:acc:app"
    assert claims["policies"] == [{"role": "r", "permissions": ["t"]}]
    header = jwt.get_unverified_header(jws)
    assert header == {"alg": key.alg, "kid": key.kid, "typ": BUNDLE_TYP}


def test_the_jwks_entry_has_kid_kty_alg_use_and_no_private_part(key: SigningKey) -> None:
    assert key.jwk["kid"] == key.kid == jwk_thumbprint(key.jwk)
    assert key.jwk["kty"] == _KTY[key.alg] and key.jwk["alg"] == key.alg
    assert key.jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key.jwk)


def test_a_rotated_key_marks_its_bundles_with_jwks_refresh(key: SigningKey) -> None:
    header = jwt.get_unverified_header(key.sign(b"{}", jwks_refresh=True))
    assert header["jwks_refresh"] is True


def test_a_bundle_does_not_verify_with_another_key_or_algorithm(key: SigningKey) -> None:
    jws = key.sign(_payload())
    other = SigningKey.generate(key.alg)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            jws,
            jwt.PyJWK.from_dict(other.jwk).key,
            algorithms=[key.alg],
            options={"verify_aud": False},
        )
    wrong_alg = next(a for a in ALGORITHMS if a != key.alg)
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(
            jws,
            jwt.PyJWK.from_dict(key.jwk).key,
            algorithms=[wrong_alg],
            options={"verify_aud": False},
        )


def test_a_key_survives_its_pem_round_trip(key: SigningKey) -> None:
    again = SigningKey.from_pem(key.pem(), key.alg)
    assert again.kid == key.kid and again.jwk == key.jwk


def test_a_key_of_the_wrong_type_or_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sign ES256"):
        SigningKey(ed25519.Ed25519PrivateKey.generate(), "ES256")
    with pytest.raises(ValueError, match="P-256"):
        SigningKey(ec.generate_private_key(ec.SECP384R1()), "ES256")
    with pytest.raises(ValueError, match="2048"):
        SigningKey(rsa.generate_private_key(public_exponent=65537, key_size=1024), "RS256")
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        SigningKey.generate("HS256")
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        SigningKey.generate("none")


def test_the_thumbprint_follows_rfc_7638() -> None:
    # The example of RFC 7638, section 3.1.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
            "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
            "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrd"
            "kt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKn"
            "qDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_payload_spreads_the_document_next_to_the_claims() -> None:
    claims = json.loads(_payload())
    assert set(claims) == {"aud", "iat", "exp", "version", "metadata", "policies"}
    assert (claims["iat"], claims["exp"]) == (10, 20)
    assert _payload() == _payload()  # canonical: the same bytes every time


def test_the_etag_changes_with_the_signed_bytes(key: SigningKey) -> None:
    a, b = key.sign(b'{"v":1}'), key.sign(b'{"v":2}')
    assert bundle_etag(a) != bundle_etag(b)
    assert bundle_etag(a).startswith('"') and bundle_etag(a).endswith('"')
