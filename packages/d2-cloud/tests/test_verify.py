"""The verifier: only a bundle signed by a known key, for this app, unexpired and not
older than what was accepted passes; everything else is InvalidSignatureError."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cloudfakes import Clock, Signer, policy_claims
from d2.cloud.verify import Key, content_digest, thumbprint, verify_bundle
from d2.core.errors import InvalidSignatureError
from hypothesis import given, settings
from hypothesis import strategies as st

AUD = "d2-policy:acc1:app1"


def check(token: str, signer: Signer | None, clock: Clock, **kwargs: Any) -> Any:
    key = Key(signer.jwk) if signer is not None else None
    return verify_bundle(token, key, audience=AUD, now=clock(), **kwargs)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_each_accepted_algorithm_verifies(alg: str, clock: Clock) -> None:
    signer = Signer(alg)
    bundle = check(signer.sign(policy_claims(3, clock)), signer, clock)
    assert bundle.version == 3 and bundle.document["policies"][0]["role"] == "agent"
    assert "aud" not in bundle.document and "exp" not in bundle.document


def test_tampered_payload_fails(clock: Clock) -> None:
    signer = Signer()
    header, payload, sig = signer.sign(policy_claims(1, clock)).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["policies"][0]["permissions"] = ["*"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignatureError, match="verification"):
        check(f"{header}.{forged}.{sig}", signer, clock)


def test_wrong_audience_and_other_account_fail(clock: Clock) -> None:
    signer = Signer()
    for claims in (policy_claims(1, clock, app="other"), policy_claims(1, clock, account="x")):
        with pytest.raises(InvalidSignatureError, match="another app or account"):
            check(signer.sign(claims), signer, clock)


def test_alg_none_and_hmac_with_the_public_key_fail(clock: Clock) -> None:
    signer = Signer("RS256")
    claims = policy_claims(1, clock)
    unsigned = jwt.encode(
        claims, None, algorithm="none", headers={"kid": "k1", "typ": "d2-policy+jwt"}
    )
    with pytest.raises(InvalidSignatureError, match="never accepted"):
        check(unsigned, signer, clock)
    public_pem = Key(signer.jwk).public_key.public_bytes(
        encoding=__import__("cryptography").hazmat.primitives.serialization.Encoding.PEM,
        format=__import__(
            "cryptography"
        ).hazmat.primitives.serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "kid": "k1", "typ": "d2-policy+jwt"}).encode()
    ).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac

    mac = hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    forged = b".".join([header, body, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()
    with pytest.raises(InvalidSignatureError, match="never accepted"):
        check(forged, signer, clock)


def test_alg_key_confusion_fails(clock: Clock) -> None:
    ed, es = Signer("EdDSA"), Signer("ES256")
    token = es.sign(policy_claims(1, clock))  # ES256 header, checked against an OKP key
    with pytest.raises(InvalidSignatureError, match="but key 'k1' is EdDSA"):
        check(token, ed, clock)


def test_unknown_kid_wrong_typ_and_expiry(clock: Clock) -> None:
    signer = Signer()
    with pytest.raises(InvalidSignatureError, match="no key with kid"):
        check(signer.sign(policy_claims(1, clock)), None, clock)
    with pytest.raises(InvalidSignatureError, match="typ"):
        check(signer.sign(policy_claims(1, clock), typ="JWT"), signer, clock)
    with pytest.raises(InvalidSignatureError, match="expired"):
        check(signer.sign(policy_claims(1, clock, ttl=-1)), signer, clock)


def test_rollback_and_same_version_other_content_fail(clock: Clock) -> None:
    signer = Signer()
    v5 = check(signer.sign(policy_claims(5, clock)), signer, clock)
    highest = (v5.version, v5.digest)
    with pytest.raises(InvalidSignatureError, match="rollback"):
        check(signer.sign(policy_claims(4, clock)), signer, clock, highest=highest)
    other = policy_claims(5, clock, permissions=["*"])
    with pytest.raises(InvalidSignatureError, match="same version, other content"):
        check(signer.sign(other), signer, clock, highest=highest)
    clock.advance(60)  # re-signed with a new iat/exp but the same content: fine
    assert check(signer.sign(policy_claims(5, clock)), signer, clock, highest=highest)


def test_bad_keys_are_refused() -> None:
    with pytest.raises(InvalidSignatureError, match="shorter than 2048"):
        Key(Signer("RS256", bits=1024).jwk)
    jwk = Signer("ES256").jwk
    with pytest.raises(InvalidSignatureError, match="declares alg"):
        Key({**jwk, "alg": "RS256"})
    with pytest.raises(InvalidSignatureError, match="not a signing key"):
        Key({**jwk, "use": "enc"})
    with pytest.raises(InvalidSignatureError, match="unsupported type"):
        Key({"kid": "h", "kty": "oct", "k": "c2VjcmV0"})


def test_thumbprint_matches_rfc7638_example() -> None:
    # RFC 7638 section 3.1
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
        "65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLy"
        "rdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKn"
        "qDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(1, 255))
def test_any_changed_character_breaks_verification(position: int, byte: int) -> None:
    clock = Clock()
    signer = _SIGNER
    token = _TOKEN
    i = position % len(token)
    if token[i] == ".":
        return
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(token[i]) + byte) % len(alphabet)]
    mutated = token[:i] + replacement + token[i + 1 :]
    try:
        bundle = check(mutated, signer, clock)
    except InvalidSignatureError:
        return
    # base64 slack bits can leave the decoded bytes unchanged: then it is the same bundle
    assert content_digest(bundle.claims) == _DIGEST


_SIGNER = Signer()
_TOKEN = _SIGNER.sign(policy_claims(1, Clock(), ttl=10 * 365 * 86400))
_DIGEST = content_digest(jwt.decode(_TOKEN, options={"verify_signature": False}))


@settings(max_examples=100, deadline=None)
@given(
    claims=st.fixed_dictionaries(
        {
            "aud": st.sampled_from([AUD, "d2-policy:acc1:app2", "", "d2-policy:acc2:app1"]),
            "version": st.one_of(st.integers(-2, 3), st.just(True), st.text(max_size=2)),
            "exp": st.one_of(st.integers(-100, 100), st.just("never")),
        }
    )
)
def test_claims_outside_the_rules_never_verify(claims: dict[str, Any]) -> None:
    clock = Clock()
    full = {
        **policy_claims(1, clock),
        **claims,
        "exp": claims["exp"] if isinstance(claims["exp"], str) else int(clock() + claims["exp"]),
    }
    valid = (
        claims["aud"] == AUD
        and isinstance(claims["version"], int)
        and not isinstance(claims["version"], bool)
        and claims["version"] >= 1
        and not isinstance(claims["exp"], str)
        and claims["exp"] > 0
    )
    token = _SIGNER.sign(full)
    if valid:
        assert check(token, _SIGNER, clock).version == claims["version"]
    else:
        with pytest.raises(InvalidSignatureError):
            check(token, _SIGNER, clock)


def test_aud_lists_and_infinite_exp_are_refused(clock: Clock) -> None:
    signer = Signer()
    listed = {**policy_claims(1, clock), "aud": [AUD, "d2-policy:acc1:other"]}
    with pytest.raises(InvalidSignatureError, match="aud"):
        check(signer.sign(listed), signer, clock)
    forever = {**policy_claims(1, clock), "exp": float("inf")}
    with pytest.raises(InvalidSignatureError):
        check(
            jwt.encode(
                forever,
                signer.private,
                algorithm="EdDSA",
                headers={"kid": "k1", "typ": "d2-policy+jwt"},
            ),
            signer,
            clock,
        )
