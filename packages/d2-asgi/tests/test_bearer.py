"""``jwt_extractor``: bearer JWTs verified against a real JWKS served by uvicorn on
127.0.0.1. A token that does not verify (no token, bad signature, expired, another
audience or issuer, ``none``/HMAC, a key of another type) is no user; the JWKS is
fetched without blocking the event loop, shared by concurrent requests, and
refreshed for a new key id at most once per floor."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from d2.asgi import ASGIMiddleware, JWTExtractor, jwt_extractor
from d2.asgi.bearer import ASYMMETRIC_ALGORITHMS, bearer_token, identity_from_claims
from d2.asgi.testing import TokenIssuer
from d2.core import ConfigurationError, get_user_context
from hypothesis import given
from hypothesis import strategies as st

Serve = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def rsa_issuer() -> TokenIssuer:
    return TokenIssuer(audience="refund-desk")


@pytest.fixture
def issuer(rsa_issuer: TokenIssuer) -> TokenIssuer:
    rsa_issuer.fetches, rsa_issuer.available, rsa_issuer.delay = 0, True, 0.0
    rsa_issuer.extra_keys = []
    return rsa_issuer


@pytest.fixture
def jwks(issuer: TokenIssuer, serve_asgi: Serve) -> Iterator[str]:
    with serve_asgi(issuer.jwks_app()) as host:
        yield f"http://{host}/.well-known/jwks.json"


def scope_with(*values: bytes) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", v) for v in values]}


def bearer(token: str) -> dict[str, Any]:
    return scope_with(f"Bearer {token}".encode())


def extractor(url: str, **options: Any) -> JWTExtractor:
    options.setdefault("audience", "refund-desk")
    options.setdefault("issuer", "https://issuer.test.invalid/")
    return jwt_extractor(jwks_url=url, **options)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], key: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if not key:
        return head + "."
    return head + "." + b64(hmac.new(key, head.encode(), hashlib.sha256).digest())


def good_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "dana",
        "roles": ["finance_lead"],
        "aud": "refund-desk",
        "iss": "https://issuer.test.invalid/",
        "iat": now,
        "exp": now + 300,
        **extra,
    }


async def test_a_valid_token_gives_its_user_and_roles(issuer: TokenIssuer, jwks: str) -> None:
    ext = extractor(jwks)
    token = issuer.token("dana", roles=["finance_lead", "auditor"])
    assert await ext(bearer(token)) == ("dana", ("finance_lead", "auditor"))
    spaced = scope_with(f"bearer   {token}".encode())
    assert await ext(spaced) == ("dana", ("finance_lead", "auditor"))
    assert issuer.fetches == 1  # the keys are cached


async def test_no_token_or_a_malformed_header_is_no_user(issuer: TokenIssuer, jwks: str) -> None:
    ext = extractor(jwks)
    token = issuer.token("dana", roles=["finance_lead"])
    for scope in (
        {"type": "http", "headers": []},
        scope_with(token.encode()),  # no scheme
        scope_with(f"Basic {token}".encode()),
        scope_with(f"Bearer {token}".encode(), f"Bearer {token}".encode()),  # twice
        scope_with(f"Bearer {token} extra".encode()),
        scope_with(b"Bearer \xff\xfe"),
        scope_with(b"Bearer " + b"a" * 20_000),
        bearer("not.a.jwt"),
        bearer(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")),  # signature
    ):
        assert await ext(scope) is None
    assert bearer_token(bearer(token)) == token


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"expires_in": -120}, "expired beyond the leeway"),
        ({"audience": "another-app"}, "another audience"),
        ({"audience": ["another-app", "third"]}, "a list without ours"),
        ({"issuer": "https://evil.test.invalid/"}, "another issuer"),
        ({"claims": {"exp": None}}, "no exp"),
        ({"claims": {"aud": None}}, "no aud"),
        ({"claims": {"iss": None}}, "no iss while one is required"),
        ({"claims": {"nbf": int(time.time()) + 3600}}, "not yet valid"),
        ({"headers": {"crit": ["exp"]}}, "a crit header"),
        ({"headers": {"kid": "unknown-kid"}}, "an unknown key id"),
    ],
)
async def test_a_token_that_does_not_verify_is_no_user(
    issuer: TokenIssuer, jwks: str, options: dict[str, Any], why: str
) -> None:
    ext = extractor(jwks)
    sub = options.pop("sub", "dana")
    assert await ext(bearer(issuer.token(sub, ["finance_lead"], **options))) is None, why


async def test_only_a_token_typed_as_a_login_is_accepted(issuer: TokenIssuer, jwks: str) -> None:
    # The ninth review: the typ header was ignored, so a logout token or a DPoP
    # proof of the provider with the right audience was taken for a login.
    ext = extractor(jwks)
    for typ in (None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "application/jwt"):
        token = issuer.token("dana", ["r"], headers={"typ": typ})
        if typ is None:
            assert "typ" not in jwt.get_unverified_header(token)
        assert await ext(bearer(token)) == ("dana", ("r",)), typ
    for typ in ("logout+jwt", "secevent+jwt", "dpop+jwt", "JOSE", "JWS", "jwt ", 1, ["JWT"]):
        token = issuer.token("dana", ["r"], headers={"typ": typ})
        assert await ext(bearer(token)) is None, typ


async def test_an_audience_list_naming_ours_is_accepted_and_leeway_applies(
    issuer: TokenIssuer, jwks: str
) -> None:
    ext = extractor(jwks, leeway=60)
    listed = issuer.token("dana", ["r"], audience=["other", "refund-desk"])
    assert await ext(bearer(listed)) == ("dana", ("r",))
    just_expired = issuer.token("dana", ["r"], expires_in=-10)
    assert await ext(bearer(just_expired)) == ("dana", ("r",))
    assert await extractor(jwks, leeway=0)(bearer(just_expired)) is None


async def test_alg_none_and_hmac_with_the_public_key_are_refused(
    issuer: TokenIssuer, jwks: str
) -> None:
    from cryptography.hazmat.primitives import serialization

    ext = extractor(jwks)
    assert await ext(bearer(issuer.token("dana", ["r"]))) is not None
    pem = issuer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = good_claims()
    for header, key in (
        ({"alg": "none", "kid": issuer.kid}, b""),
        ({"alg": "None", "kid": issuer.kid}, b""),
        ({"alg": "HS256", "kid": issuer.kid}, pem),  # the classic key confusion
        ({"alg": "HS256", "kid": issuer.kid}, json.dumps(issuer.public_jwk()).encode()),
    ):
        assert await ext(bearer(unsigned(header, claims, key))) is None, header


async def test_each_key_admits_only_the_algorithms_of_its_type(
    serve_asgi: Serve, issuer: TokenIssuer
) -> None:
    ec = TokenIssuer(algorithm="ES256", audience="refund-desk")
    ed = TokenIssuer(algorithm="EdDSA", audience="refund-desk")
    ps = TokenIssuer(algorithm="PS256", audience="refund-desk", kid=issuer.kid)
    ps.private_key = issuer.private_key  # the same RSA key, signing PS256
    issuer.extra_keys = [ec.public_jwk(), ed.public_jwk()]
    with serve_asgi(issuer.jwks_app()) as host:
        ext = extractor(f"http://{host}/jwks")
        for minter in (issuer, ec, ed, ps):
            assert await ext(bearer(minter.token("dana", ["r"]))) == ("dana", ("r",)), minter
        # an EC token claiming to be signed by the RSA key (and the other way round)
        ec.kid = issuer.kid
        assert await ext(bearer(ec.token("dana", ["r"]))) is None
        # a key that declares its alg admits that one only
        declared = {**issuer.public_jwk(), "alg": "RS256"}
        issuer.extra_keys = []
        original = issuer.public_jwk
        issuer.public_jwk = lambda: declared  # type: ignore[method-assign]
        try:
            strict = extractor(f"http://{host}/jwks")
            assert await strict(bearer(issuer.token("dana", ["r"]))) == ("dana", ("r",))
            assert await strict(bearer(ps.token("dana", ["r"]))) is None
        finally:
            issuer.public_jwk = original  # type: ignore[method-assign]
    restricted = extractor(f"http://{host}/jwks", algorithms=["ES256"])
    assert restricted.algorithms == frozenset({"ES256"})


async def test_unusable_keys_in_the_jwks_are_skipped(
    serve_asgi: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    weak = TokenIssuer(audience="refund-desk", kid="weak")
    weak.private_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = TokenIssuer(audience="refund-desk", kid="leaked")
    leaked = json.loads(RSAAlgorithm.to_jwk(private.private_key))
    good = TokenIssuer(audience="refund-desk", kid="good")
    twin = TokenIssuer(audience="refund-desk", kid="good")  # the same kid, another key
    good.extra_keys = [
        weak.public_jwk(),
        {**leaked, "kid": "leaked"},
        {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
        {**private.public_jwk(), "kid": "enc", "use": "enc"},
        twin.public_jwk(),
    ]
    caplog.set_level(logging.WARNING, "d2.asgi")
    with serve_asgi(good.jwks_app()) as host:
        ext = extractor(f"http://{host}/jwks")
        with pytest.warns(UserWarning, match="1024 bits"):  # PyJWT warns its signer too
            weak_token = weak.token("dana", ["r"])
        assert await ext(bearer(weak_token)) is None
        assert await ext(bearer(private.token("dana", ["r"], headers={"kid": "leaked"}))) is None
        assert await ext(bearer(good.token("dana", ["r"]))) is None  # its kid is ambiguous
    text = caplog.text
    assert "1024 bits" in text and "private key material" in text and "repeated" in text


async def test_a_new_key_id_refreshes_the_keys_at_most_once_per_floor(
    issuer: TokenIssuer, jwks: str
) -> None:
    ext = extractor(jwks, refresh_floor=0.5)
    assert await ext(bearer(issuer.token("dana", ["r"]))) is not None
    assert issuer.fetches == 1
    for n in range(50):  # a flood of made-up key ids: no fetch within the floor
        assert await ext(bearer(issuer.token("dana", ["r"], headers={"kid": f"x{n}"}))) is None
    assert issuer.fetches == 1
    rotated = TokenIssuer(audience="refund-desk", kid="rotated")
    issuer.extra_keys = [rotated.public_jwk()]
    await asyncio.sleep(0.6)
    assert await ext(bearer(rotated.token("erin", ["r"]))) == ("erin", ("r",))
    assert issuer.fetches == 2


async def test_keys_are_refetched_after_cache_seconds_and_kept_when_the_fetch_fails(
    issuer: TokenIssuer, jwks: str, caplog: pytest.LogCaptureFixture
) -> None:
    ext = extractor(jwks, cache_seconds=0.2, refresh_floor=0.1)
    token = issuer.token("dana", ["r"])
    assert await ext(bearer(token)) is not None
    issuer.available = False
    await asyncio.sleep(0.25)
    caplog.set_level(logging.WARNING, "d2.asgi")
    assert await ext(bearer(token)) == ("dana", ("r",))  # the known key is kept
    await eventually(lambda: issuer.fetches == 2 and "HTTP 503" in caplog.text)
    assert await ext(bearer(token)) == ("dana", ("r",))  # and still, after the failure


async def eventually(condition: Any, within: float = 5.0) -> None:
    """Wait for a refresh running in the background to have done its work."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the background refresh did not finish"
        await asyncio.sleep(0.01)


async def test_an_unreachable_jwks_is_no_user_until_it_answers(
    issuer: TokenIssuer, serve_asgi: Serve
) -> None:
    issuer.available = False
    with serve_asgi(issuer.jwks_app()) as host:
        ext = extractor(f"http://{host}/jwks", refresh_floor=0.1)
        token = issuer.token("dana", ["r"])
        assert await ext(bearer(token)) is None
        assert await ext(bearer(token)) is None  # within the floor: not fetched again
        assert issuer.fetches == 1
        issuer.available = True
        await asyncio.sleep(0.15)
        assert await ext(bearer(token)) == ("dana", ("r",))
    closed = extractor(f"http://{host}/jwks", timeout=1)  # nothing listens any more
    assert await closed(bearer(token)) is None


async def test_the_jwks_fetch_never_blocks_the_event_loop_and_is_shared(
    issuer: TokenIssuer, jwks: str
) -> None:
    issuer.delay = 0.4
    ext = extractor(jwks)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    token = issuer.token("dana", ["r"])
    try:
        results = await asyncio.gather(*(ext(bearer(token)) for _ in range(20)))
    finally:
        task.cancel()
    assert results == [("dana", ("r",))] * 20
    assert issuer.fetches == 1  # twenty requests, one fetch
    assert ticks >= 20  # the loop ran other work while the JWKS was on its way


async def test_a_request_arriving_during_a_fetch_waits_for_it(
    issuer: TokenIssuer, jwks: str
) -> None:
    # Found while building BearerProtected: a request that came while the first
    # fetch was on its way saw the floor as "recent" and was refused at once.
    issuer.delay = 0.4
    ext = extractor(jwks)
    token = issuer.token("dana", ["r"])
    first = asyncio.create_task(ext(bearer(token)))
    await asyncio.sleep(0.15)  # the fetch has started and is waiting on the provider
    assert await ext(bearer(token)) == ("dana", ("r",))
    assert await first == ("dana", ("r",))
    assert issuer.fetches == 1


async def test_the_extractor_sets_the_user_in_asgi_middleware(
    issuer: TokenIssuer, jwks: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        ctx = get_user_context()
        body = json.dumps([ctx.user_id, sorted(ctx.roles)]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    wrapped = ASGIMiddleware(app, user_extractor=extractor(jwks))
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        token = issuer.token("dana", "finance_lead auditor")
        seen = await client.get("/", headers={"authorization": f"Bearer {token}"})
        assert seen.json() == ["dana", ["auditor", "finance_lead"]]
        forged = await client.get("/", headers={"x-d2-user": "dana", "x-d2-roles": "admin"})
        assert forged.json() == [None, []]


def test_configuration_mistakes_are_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="https://"):
        jwt_extractor(jwks_url="http://idp.example.invalid/jwks", audience="a")
    with pytest.raises(ConfigurationError, match=r"not a URL|https://"):
        jwt_extractor(jwks_url="jwks.json", audience="a")
    with pytest.raises(ConfigurationError, match="audience"):
        jwt_extractor(jwks_url="https://idp.example.invalid/jwks", audience="")
    for algorithms in (["HS256"], ["none"], [], ["RS256", "HS512"]):
        with pytest.raises(ConfigurationError, match="asymmetric"):
            jwt_extractor(jwks_url="https://idp.invalid/jwks", audience="a", algorithms=algorithms)
    for url in ("http://127.0.0.1:9/jwks", "http://localhost/jwks", "http://[::1]/jwks"):
        assert jwt_extractor(jwks_url=url, audience="a").jwks_url == url
    assert "none" not in {a.lower() for a in ASYMMETRIC_ALGORITHMS}
    assert not any(a.startswith("HS") for a in ASYMMETRIC_ALGORITHMS)


# -- claims ---------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12).filter(lambda s: s.strip(" \t\r\n\f\v") != "")


@given(user=names, roles=st.lists(names, max_size=6))
def test_roles_from_a_list_keep_their_order_trimmed_and_unique(user: str, roles: list[str]) -> None:
    got = identity_from_claims({"sub": user, "roles": roles})
    expected: list[str] = []
    for role in roles:
        role = role.strip(" \t\r\n\f\v")
        if role not in expected:
            expected.append(role)
    assert got == (user.strip(" \t\r\n\f\v"), tuple(expected))


@given(roles=st.lists(st.from_regex(r"[A-Za-z0-9_:.-]{1,10}", fullmatch=True), max_size=6))
def test_roles_from_a_space_separated_string(roles: list[str]) -> None:
    got = identity_from_claims({"sub": "u", "scope": " ".join(roles)}, roles_claim="scope")
    assert got == ("u", tuple(dict.fromkeys(roles)))


@given(
    bad=st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        st.lists(st.one_of(st.integers(), st.none(), st.booleans()), min_size=1, max_size=3),
        st.lists(st.text(max_size=3), max_size=3).map(lambda xs: [*xs, 7]),
    )
)
def test_a_roles_claim_of_another_shape_gives_no_roles_at_all(bad: Any) -> None:
    assert identity_from_claims({"sub": "u", "roles": bad}) == ("u", ())


@given(
    user=st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        st.lists(st.text(max_size=3), max_size=2),
        st.just(""),
        st.text(alphabet=" \t\r\n", max_size=4),
    )
)
def test_a_missing_empty_or_non_text_user_is_no_user(user: Any) -> None:
    claims = {"roles": ["admin"]} if user is None else {"sub": user, "roles": ["admin"]}
    assert identity_from_claims(claims) is None


@given(
    path=st.lists(st.from_regex(r"[a-z_]{1,6}", fullmatch=True), min_size=1, max_size=4),
    roles=st.lists(st.from_regex(r"[a-z]{1,6}", fullmatch=True), max_size=4),
)
def test_dotted_paths_reach_nested_claims(path: list[str], roles: list[str]) -> None:
    value: Any = roles
    for part in reversed(path):
        value = {part: value}
    claims = {"sub": "u", **value}
    got = identity_from_claims(claims, roles_claim=".".join(path))
    assert got == ("u", tuple(dict.fromkeys(roles)))


def test_a_claim_named_with_dots_is_read_by_its_name_first() -> None:
    claims = {
        "sub": "u",
        "https://example.invalid/roles": ["lead"],
        "https://example": {"invalid/roles": ["admin"]},
        "realm_access": {"roles": ["agent"]},
    }
    assert identity_from_claims(claims, roles_claim="https://example.invalid/roles") == (
        "u",
        ("lead",),
    )
    assert identity_from_claims(claims, roles_claim="realm_access.roles") == ("u", ("agent",))
    assert identity_from_claims(claims, roles_claim="realm_access.missing") == ("u", ())
    assert identity_from_claims({"oid": 42}, user_claim="oid") == ("42", ())
    assert identity_from_claims({"user": {"email": "d@x"}}, user_claim="user.email") == ("d@x", ())


# -- a provider that trickles its answer (the twelfth review) -------------------------


async def test_a_known_key_does_not_wait_for_a_refetch_that_trickles(
    issuer: TokenIssuer, trickler: Any
) -> None:
    # Anyone can start a refetch with a made-up key id; while the provider trickled
    # its answer, every login waited for it, a known key included (22 s with
    # timeout=1). The timeout here is long, so only not waiting passes.
    trickler.documents["/jwks"] = issuer.jwks
    ext = extractor(trickler.url("/jwks"), timeout=10.0, refresh_floor=0.0)
    good = issuer.token("dana", ["r"])
    assert await ext(bearer(good)) == ("dana", ("r",))
    trickler.slow.add("/jwks")
    made_up = issuer.token("mallory", ["r"], headers={"kid": "made-up"})
    refetch = asyncio.create_task(ext(bearer(made_up)))
    await trickler.asked(2)  # the refetch is trickling in
    started = time.monotonic()
    assert await ext(bearer(good)) == ("dana", ("r",))
    assert time.monotonic() - started < 5
    assert not refetch.done()
    await trickler.close()  # the provider hangs up: the refetch fails, the key is kept
    assert await refetch is None
    assert await ext(bearer(good)) == ("dana", ("r",))


async def test_a_jwks_that_trickles_fails_after_the_timeout(
    issuer: TokenIssuer, trickler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # httpx's timeout bounds each read; the trickle (about 12 s) never lets one
    # wait 1 s. The whole fetch has a deadline of `timeout`.
    trickler.documents["/jwks"] = issuer.jwks
    trickler.slow.add("/jwks")
    caplog.set_level(logging.WARNING, "d2.asgi")
    ext = extractor(trickler.url("/jwks"), timeout=1.0)
    started = time.monotonic()
    assert await ext(bearer(issuer.token("dana", ["r"]))) is None
    assert time.monotonic() - started < 5
    assert "TimeoutError" in caplog.text


async def test_a_known_key_answers_at_once_while_a_stale_cache_refreshes(
    issuer: TokenIssuer, trickler: Any
) -> None:
    # fourteenth review: past cache_seconds, the first login (a known key) started the
    # refresh and waited for it: one login per floor + timeout waited the whole timeout
    trickler.documents["/jwks"] = issuer.jwks
    ext = extractor(trickler.url("/jwks"), timeout=10.0, cache_seconds=0.2, refresh_floor=0.0)
    good = issuer.token("dana", ["r"])
    assert await ext(bearer(good)) == ("dana", ("r",))
    trickler.slow.add("/jwks")
    await asyncio.sleep(0.3)  # the keys are now older than cache_seconds
    started = time.monotonic()
    assert await ext(bearer(good)) == ("dana", ("r",))
    assert time.monotonic() - started < 5  # the refresh trickles meanwhile
    await trickler.asked(2)
    await trickler.close()
    assert await ext(bearer(good)) == ("dana", ("r",))  # a failed refresh keeps the keys
