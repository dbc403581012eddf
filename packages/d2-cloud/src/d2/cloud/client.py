"""The control plane's HTTP API, as PROTOCOL.md defines it (async, httpx).

The transport is a parameter, so tests can swap in ``httpx.MockTransport`` for
fault injection; everything else talks to a real server.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["ApiError", "BundleReply", "ControlPlane", "retry_after"]


class ApiError(Exception):
    """A non-success answer: ``status`` (0 for a network failure), ``detail`` and
    ``retry_after`` seconds when the server asked to wait."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (it may be seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class BundleReply:
    """``GET /v1/policy/bundle``: 200 (``jws``, ``version``, ``etag``) or 304."""

    __slots__ = ("etag", "jws", "poll_seconds", "status", "version")

    def __init__(
        self,
        status: int,
        jws: str | None,
        version: int | None,
        etag: str | None,
        poll_seconds: float | None,
    ) -> None:
        self.status = status
        self.jws = jws
        self.version = version
        self.etag = etag
        self.poll_seconds = poll_seconds


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, Mapping) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return str(body)[:200]


def _poll_seconds(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["X-D2-Poll-Seconds"])
    except (KeyError, ValueError):
        return None


class ControlPlane:
    """A client of one control plane with one token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        jwks_url: str | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.jwks_url = jwks_url or f"{self.base_url}/.well-known/jwks.json"
        self._settings: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {token}", "User-Agent": "d2-cloud"},
            "timeout": timeout,
            "transport": transport,
            "follow_redirects": False,
        }
        self._http: httpx.AsyncClient | None = httpx.AsyncClient(**self._settings)
        self._forked_away: list[httpx.AsyncClient] = []

    def renew_after_fork(self) -> None:
        """In a forked child: a new connection pool, made at the first request (on
        the child's poller loop: building one loads TLS settings, tens of
        milliseconds that ``fork`` itself should not wait for). The parent's pooled
        connections are its sockets, shared with the child by ``fork``: a request on
        one would interleave with the parent's. They are left alone, never closed
        here (closing would speak on the parent's connections); the old client is
        kept so it is never finalised either. A ``transport`` given to the
        constructor is reused (it is for tests: a real one would carry its own pool
        across the fork)."""
        if self._http is not None:
            self._forked_away.append(self._http)
        self._http = None

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        client = self._http
        if client is None:  # after a fork: this process's own pool
            client = self._http = httpx.AsyncClient(**self._settings)
        try:
            return await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"{method} {url} failed: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _fail(response: httpx.Response) -> ApiError:
        return ApiError(
            response.status_code,
            _detail(response),
            retry_after(response.headers.get("Retry-After")),
        )

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self._send(method, url, **kwargs)
        if response.status_code != 200:
            raise self._fail(response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, f"{url} answered with invalid JSON") from None

    async def me(self) -> dict[str, Any]:
        """``GET /v1/accounts/me``: account, app, plan, poll interval, quotas."""
        body = await self._json("GET", "/v1/accounts/me")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("account_id"), str)
            or not (isinstance(body.get("app_name"), str))
        ):
            raise ApiError(200, "/v1/accounts/me answered without account_id/app_name")
        return body

    async def jwks(self) -> Mapping[str, Any]:
        """The signing keys (``/.well-known/jwks.json`` or ``D2_JWKS_URL``)."""
        body = await self._json("GET", self.jwks_url)
        if not isinstance(body, Mapping):
            raise ApiError(200, "JWKS is not a JSON object")
        return body

    async def bundle(self, etag: str | None) -> BundleReply:
        """``GET /v1/policy/bundle`` with ``If-None-Match`` when an ETag is known."""
        headers = {"If-None-Match": etag} if etag else {}
        response = await self._send("GET", "/v1/policy/bundle", headers=headers)
        poll = _poll_seconds(response)
        if response.status_code == 304:
            return BundleReply(304, None, None, etag, poll)
        if response.status_code != 200:
            raise self._fail(response)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(200, "bundle answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("jws"), str):
            raise ApiError(200, "bundle answer has no 'jws'")
        version = body.get("version")
        return BundleReply(
            200,
            body["jws"],
            version if isinstance(version, int) else None,
            response.headers.get("ETag"),
            poll,
        )

    async def ingest(self, body: bytes) -> None:
        """``POST /v1/events/ingest`` (202); raises :class:`ApiError` otherwise."""
        response = await self._send(
            "POST",
            "/v1/events/ingest",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        if response.status_code not in (200, 202):
            raise self._fail(response)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http is not None:  # else none was made in this process
            await self._http.aclose()
