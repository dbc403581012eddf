"""``jwt_extractor(oidc_issuer=...)``: the JWKS named by the provider's OIDC discovery
document, served by a real uvicorn on 127.0.0.1. The document must name exactly the
configured issuer and a JWKS URL that passes the https check; until a discovery
succeeds every token is refused, retried at most once per floor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from d2.asgi import JWTExtractor, jwt_extractor
from d2.asgi.testing import TokenIssuer
from d2.core import ConfigurationError

Serve = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture(scope="module")
def rsa_issuer() -> TokenIssuer:
    return TokenIssuer(audience="refund-desk")


@pytest.fixture
def provider(rsa_issuer: TokenIssuer, serve_asgi: Serve) -> Iterator[TokenIssuer]:
    """The issuer, served on loopback, with ``issuer.issuer`` set to its realm URL."""
    rsa_issuer.fetches = rsa_issuer.discoveries = 0
    rsa_issuer.available, rsa_issuer.delay, rsa_issuer.discovery = True, 0.0, {}
    with serve_asgi(rsa_issuer.jwks_app()) as host:
        rsa_issuer.issuer = f"http://{host}/realms/desk"
        yield rsa_issuer


def bearer(token: str) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}


def discovered(provider: TokenIssuer, **options: Any) -> JWTExtractor:
    options.setdefault("oidc_issuer", provider.issuer)
    return jwt_extractor(audience="refund-desk", **options)


async def test_the_jwks_named_by_the_discovery_document_verifies_tokens(
    provider: TokenIssuer,
) -> None:
    ext = discovered(provider)
    assert ext.jwks_url is None and ext.issuer == provider.issuer  # iss defaults to it
    assert ext.discovery_url == f"{provider.issuer}/.well-known/openid-configuration"
    token = provider.token("dana", ["finance_lead"])
    assert await ext(bearer(token)) == ("dana", ("finance_lead",))
    assert ext.jwks_url == f"{provider.issuer}/jwks"
    assert (provider.discoveries, provider.fetches) == (1, 1)
    assert await ext(bearer(token)) == ("dana", ("finance_lead",))
    assert (provider.discoveries, provider.fetches) == (1, 1)  # both cached
    other_iss = provider.token("dana", ["r"], issuer="http://127.0.0.1:9/realms/other")
    assert await ext(bearer(other_iss)) is None  # the token's iss must be the issuer's


async def test_a_trailing_slash_is_dropped_from_the_discovery_url_but_kept_for_the_issuer(
    provider: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "d2.asgi")
    realm = provider.issuer
    provider.issuer = realm + "/"  # the provider says its issuer ends with a slash
    ext = discovered(provider)
    assert ext.discovery_url == f"{realm}/.well-known/openid-configuration"
    assert await ext(bearer(provider.token("dana", ["r"]))) == ("dana", ("r",))
    # configured without the slash, the provider's document (with it) is refused
    strict = discovered(provider, oidc_issuer=realm)
    assert await strict(bearer(provider.token("dana", ["r"], issuer=realm))) is None
    assert "not identical" in caplog.text


async def test_a_document_naming_another_issuer_is_refused_and_logged(
    provider: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # the mix-up: the document (or a proxy in front of it) names another provider
    caplog.set_level(logging.WARNING, "d2.asgi")
    provider.discovery = {"issuer": "http://127.0.0.1:9/realms/evil"}
    ext = discovered(provider)
    assert await ext(bearer(provider.token("dana", ["r"]))) is None
    evil = provider.token("dana", ["r"], issuer="http://127.0.0.1:9/realms/evil")
    assert await ext(bearer(evil)) is None
    assert provider.fetches == 0  # its JWKS is never read
    assert ext.jwks_url is None
    assert "not identical to oidc_issuer" in caplog.text and "realms/evil" in caplog.text


@pytest.mark.parametrize(
    ("discovery", "said"),
    [
        ({"jwks_uri": "http://idp.example.invalid/jwks"}, "https://"),
        ({"jwks_uri": "ftp://127.0.0.1/jwks"}, "https://"),
        ({"jwks_uri": None}, "no jwks_uri"),
        ({"jwks_uri": ["https://idp.example.invalid/jwks"]}, "no jwks_uri"),
    ],
)
async def test_a_jwks_uri_that_fails_the_url_check_is_refused(
    provider: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
    discovery: dict[str, Any],
    said: str,
) -> None:
    caplog.set_level(logging.WARNING, "d2.asgi")
    provider.discovery = discovery
    ext = discovered(provider)
    assert await ext(bearer(provider.token("dana", ["r"]))) is None
    assert provider.fetches == 0 and ext.jwks_url is None
    assert said in caplog.text and "every token is refused" in caplog.text


async def test_a_failed_discovery_fails_closed_then_recovers_no_faster_than_the_floor(
    provider: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "d2.asgi")
    provider.available = False
    ext = discovered(provider, refresh_floor=0.3)
    token = provider.token("dana", ["r"])
    for _ in range(20):  # within the floor: one attempt only
        assert await ext(bearer(token)) is None
    assert (provider.discoveries, provider.fetches) == (1, 0)
    assert "HTTP 503" in caplog.text
    provider.available = True
    assert await ext(bearer(token)) is None  # still within the floor
    await asyncio.sleep(0.35)
    assert await ext(bearer(token)) == ("dana", ("r",))
    assert (provider.discoveries, provider.fetches) == (2, 1)


async def test_a_later_failed_discovery_keeps_the_known_jwks(
    provider: TokenIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    ext = discovered(provider, cache_seconds=0.2, refresh_floor=0.1)
    token = provider.token("dana", ["r"])
    assert await ext(bearer(token)) == ("dana", ("r",))
    provider.discovery = {"issuer": "http://127.0.0.1:9/realms/evil"}
    caplog.set_level(logging.WARNING, "d2.asgi")
    await asyncio.sleep(0.25)
    assert await ext(bearer(token)) == ("dana", ("r",))  # at once; refreshed meanwhile
    deadline = time.monotonic() + 5
    while not (provider.discoveries == 2 and provider.fetches == 2):
        assert time.monotonic() < deadline, "the background refresh did not finish"
        await asyncio.sleep(0.01)
    assert "keeping the JWKS" in caplog.text
    assert await ext(bearer(token)) == ("dana", ("r",))


async def test_concurrent_first_requests_share_one_discovery_and_one_jwks_fetch(
    provider: TokenIssuer,
) -> None:
    provider.delay = 0.2
    ext = discovered(provider)
    token = provider.token("dana", ["r"])
    results = await asyncio.gather(*(ext(bearer(token)) for _ in range(20)))
    assert results == [("dana", ("r",))] * 20
    assert (provider.discoveries, provider.fetches) == (1, 1)


async def test_an_explicit_issuer_is_what_the_token_must_carry(provider: TokenIssuer) -> None:
    ext = discovered(provider, issuer="https://tokens.example.invalid/")
    assert await ext(bearer(provider.token("dana", ["r"]))) is None
    named = provider.token("dana", ["r"], issuer="https://tokens.example.invalid/")
    assert await ext(bearer(named)) == ("dana", ("r",))


def test_exactly_one_of_jwks_url_and_oidc_issuer_is_required() -> None:
    with pytest.raises(ConfigurationError, match=r"exactly one of jwks_url.*got neither"):
        jwt_extractor(audience="a")
    with pytest.raises(ConfigurationError, match=r"exactly one of jwks_url.*got both"):
        jwt_extractor(
            jwks_url="https://idp.example.invalid/jwks",
            oidc_issuer="https://idp.example.invalid/",
            audience="a",
        )
    with pytest.raises(ConfigurationError, match="oidc_issuer must be an https://"):
        jwt_extractor(oidc_issuer="http://idp.example.invalid/", audience="a")
    for bad in ("https://idp.example.invalid/?tenant=x", "https://idp.example.invalid/#x"):
        with pytest.raises(ConfigurationError, match="no query or fragment"):
            jwt_extractor(oidc_issuer=bad, audience="a")
    ext = jwt_extractor(oidc_issuer="https://idp.example.invalid/realms/x", audience="a")
    assert ext.issuer == "https://idp.example.invalid/realms/x"
    assert "oidc_issuer=" in repr(ext)


async def test_a_discovery_document_that_trickles_fails_after_the_timeout(
    rsa_issuer: TokenIssuer, trickler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # the twelfth review: httpx's timeout bounds each read, and the trickle (about
    # 12 s, conftest.Trickler) never lets one wait 1 s; the whole document has a
    # deadline of `timeout`
    realm = trickler.url("/realms/desk")
    path = "/realms/desk/.well-known/openid-configuration"
    trickler.documents[path] = {"issuer": realm, "jwks_uri": f"{realm}/jwks"}
    trickler.documents["/realms/desk/jwks"] = rsa_issuer.jwks
    trickler.slow.add(path)
    caplog.set_level(logging.WARNING, "d2.asgi")
    ext = jwt_extractor(oidc_issuer=realm, audience="refund-desk", timeout=1.0)
    started = time.monotonic()
    assert await ext(bearer(rsa_issuer.token("dana", ["r"], issuer=realm))) is None
    assert time.monotonic() - started < 5
    assert "TimeoutError" in caplog.text and trickler.paths == [path]
