"""Fetching an identity provider's documents (a JWKS, an OIDC discovery document)
and checking the URLs they come from; private to d2-asgi.

Every URL is ``https://``, or ``http://`` on the loopback interface only; every
document is fetched with httpx's async client, without redirects, whole within a
deadline (the timeout), and refused past 1 MiB.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from d2.core import ConfigurationError

if TYPE_CHECKING:
    import httpx

__all__ = ["MAX_DOCUMENT", "check_issuer_url", "check_url", "get_json", "jwks_uri_of"]

MAX_DOCUMENT = 1024 * 1024
"""Bytes of a JWKS or discovery document; a bigger one is refused."""


def check_url(url: str, what: str = "jwks_url") -> str:
    """``url`` if it is ``https://`` (``http://`` on loopback); else a
    ``ConfigurationError`` naming ``what``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except (ValueError, TypeError, AttributeError):
        raise ConfigurationError(f"{what} {url!r} is not a URL") from None
    if parts.scheme == "https" and host:
        return url
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if parts.scheme == "http" and loopback:
        return url
    raise ConfigurationError(
        f"{what} must be an https:// URL (http:// only on the loopback interface), got {url!r}"
    )


def check_issuer_url(url: str) -> str:
    """An ``oidc_issuer``: a URL as :func:`check_url` wants, without query or
    fragment (OpenID Connect Discovery 1.0, 2)."""
    check_url(url, "oidc_issuer")
    parts = urlsplit(url)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigurationError(f"oidc_issuer must have no query or fragment, got {url!r}")
    return url


def jwks_uri_of(document: Any, issuer: str) -> str:
    """The checked ``jwks_uri`` of a discovery document for ``issuer``; raises
    ``ValueError`` saying why the document is refused."""
    if not isinstance(document, Mapping):
        raise ValueError("the document is not a JSON object")
    said = document.get("issuer")
    if said != issuer:
        raise ValueError(
            f"its issuer {said!r} is not identical to oidc_issuer {issuer!r} (OpenID Connect "
            "Discovery 4.3; a document naming another issuer is refused: set oidc_issuer to "
            "exactly the provider's issuer, trailing slash included)"
        )
    uri = document.get("jwks_uri")
    if not isinstance(uri, str):
        raise ValueError("it has no jwks_uri")
    try:
        return check_url(uri, "its jwks_uri")
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None


async def get_json(url: str, *, timeout: float, transport: httpx.AsyncBaseTransport | None) -> Any:
    """The JSON document at ``url`` (async, no redirects, at most ``MAX_DOCUMENT``
    bytes, all of it within ``timeout`` seconds); raises on any failure
    (``TimeoutError`` past the deadline)."""
    # httpx's timeout bounds each read, not the whole answer: a server that
    # trickles a few bytes per read would hold the fetch for as long as it likes
    try:
        return await asyncio.wait_for(_get_json(url, timeout, transport), timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no whole answer within {timeout:g} s") from None


async def _get_json(url: str, timeout: float, transport: httpx.AsyncBaseTransport | None) -> Any:
    import httpx

    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False, transport=transport) as client,
        client.stream("GET", url, headers={"accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT:
                raise ValueError(f"the document is over {MAX_DOCUMENT} bytes")
    return json.loads(bytes(body))
