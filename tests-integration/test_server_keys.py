"""Signing algorithms, key rotation with its overlap window and ``jwks_refresh``,
and bundles re-signed before they expire, all on the server's fake clock."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest
from d2.server.testing import D2Server


@pytest.mark.parametrize(("alg", "kty"), [("EdDSA", "OKP"), ("ES256", "EC"), ("RS256", "RSA")])
def test_every_algorithm_signs_bundles_that_verify_with_the_jwks(
    d2_server_factory: Callable[..., D2Server], alg: str, kty: str
) -> None:
    server = d2_server_factory(alg=alg)
    server.publish(server.policy())
    jws = server.fetch_bundle().json()["jws"]
    assert jwt.get_unverified_header(jws)["alg"] == alg
    (key,) = server.jwks()["keys"]
    assert (key["kty"], key["alg"]) == (kty, alg)
    assert server.verify(jws)["version"] == 1


def test_rotation_keeps_the_old_key_for_the_overlap_and_flags_new_bundles(
    d2_server: D2Server,
) -> None:
    d2_server.publish(d2_server.policy())
    v1 = d2_server.fetch_bundle().json()["jws"]
    old_kid = jwt.get_unverified_header(v1)["kid"]
    new = d2_server.rotate_key("ES256", overlap=600)

    jwks = d2_server.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [new.kid, old_kid]
    assert d2_server.verify(v1, jwks)["version"] == 1  # old bundle, new JWKS: still valid

    # the current version is re-signed with the new key, claims unchanged
    r = d2_server.fetch_bundle()
    resigned = r.json()["jws"]
    header = jwt.get_unverified_header(resigned)
    assert header["kid"] == new.kid and header["alg"] == "ES256"
    assert header["jwks_refresh"] is True
    assert resigned.split(".")[1] == v1.split(".")[1]
    assert d2_server.verify(resigned, jwks)["version"] == 1

    # a publish inside the window is flagged too, and verifies with the new JWKS
    assert (
        d2_server.publish(d2_server.policy({"role": "r", "permissions": ["t"]})).status_code == 201
    )
    v2 = d2_server.fetch_bundle().json()["jws"]
    assert jwt.get_unverified_header(v2)["jwks_refresh"] is True
    assert d2_server.verify(v2, d2_server.jwks())["version"] == 2
    with pytest.raises(jwt.InvalidKeyError):  # the old JWKS does not know the new key
        d2_server.verify(v2, {"keys": [k for k in jwks["keys"] if k["kid"] == old_kid]})

    # after the overlap the old key leaves the JWKS and bundles are no longer flagged
    d2_server.clock.advance(600)
    assert [k["kid"] for k in d2_server.jwks()["keys"]] == [new.kid]
    with pytest.raises(jwt.InvalidKeyError):
        d2_server.verify(v1)
    # the cached signing of v2 is re-served without the flag (same claims), so a
    # client does not re-fetch the JWKS at every poll from now on
    r = d2_server.fetch_bundle()
    v2_unflagged = r.json()["jws"]
    assert "jwks_refresh" not in jwt.get_unverified_header(v2_unflagged)
    assert v2_unflagged.split(".")[1] == v2.split(".")[1]
    assert d2_server.fetch_bundle(r.headers["etag"]).status_code == 304
    assert d2_server.publish(d2_server.policy()).status_code == 201
    v3 = d2_server.fetch_bundle().json()["jws"]
    assert "jwks_refresh" not in jwt.get_unverified_header(v3)
    assert d2_server.verify(v3)["version"] == 3


def test_a_bundle_is_re_signed_before_it_expires(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(bundle_lifetime=1000)
    server.publish(server.policy())
    first = server.fetch_bundle()
    claims = server.verify(first.json()["jws"])
    server.clock.advance(499)
    assert server.fetch_bundle(first.headers["etag"]).status_code == 304
    server.clock.advance(1)
    second = server.fetch_bundle(first.headers["etag"])
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    fresh = server.verify(second.json()["jws"])
    assert fresh["version"] == claims["version"] == 1
    assert fresh["exp"] == claims["exp"] + 500 and fresh["iat"] == claims["iat"] + 500
    # a publisher holding the first ETag of the version has not missed a publish
    assert server.publish(server.policy(), if_match=first.headers["etag"]).status_code == 201


def test_a_bundle_fetched_after_a_long_outage_is_fresh(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(bundle_lifetime=100)
    server.publish(server.policy())
    server.clock.advance(10_000)
    claims = server.verify(server.fetch_bundle().json()["jws"])
    assert claims["exp"] == int(server.clock()) + 100
