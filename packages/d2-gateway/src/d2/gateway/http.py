"""The gateway over MCP Streamable HTTP: an ASGI app serving ``/mcp``.

Identity never comes from plain headers: the layer in front of ``/mcp`` (a
bearer-JWT verifier) puts the verified ``(user_id, roles)`` in the ASGI scope
under ``"d2.user"``; a request without it is answered 401 before the MCP
transport sees it (and, were it to get through, the gateway would show it no
tools)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .gateway import USER_SCOPE_KEY, Gateway, _identity

__all__ = ["Wrap", "http_app", "require_identity"]

Wrap = Callable[[ASGIApp], ASGIApp]
"""Wraps the gateway's ASGI app in an identity layer that sets ``scope["d2.user"]``
(``d2.asgi.protected.BearerProtected``: it also answers the protected-resource
metadata document and the 401s)."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def _unauthorized(send: Send, www_authenticate: str) -> None:
    body = json.dumps(
        {"error": "unauthorized", "message": "a verified bearer token is required"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", www_authenticate.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def require_identity(app: ASGIApp) -> ASGIApp:
    """Answer 401 to an HTTP request whose scope carries no well-formed
    ``"d2.user"``; pass the others to ``app``."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _identity(scope.get(USER_SCOPE_KEY)) is None:
            await _unauthorized(send, 'Bearer error="invalid_token"')
            return
        await app(scope, receive, send)

    return guarded


def _security(host: str, allowed_hosts: list[str] | None) -> TransportSecuritySettings:
    if allowed_hosts:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=list(allowed_hosts)
        )
    if host in _LOOPBACK:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    # Behind a bearer token a rebinding page cannot act as a user (it has no token).
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


def http_app(
    gateway: Gateway,
    *,
    wrap: Wrap | None,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    path: str = "/mcp",
    startup_wait: float = 15.0,
) -> ASGIApp:
    """The ASGI app: ``path`` serves MCP Streamable HTTP behind :func:`require_identity`,
    and the whole app sits inside ``wrap`` (the identity layer); its lifespan supervises the
    upstreams; it waits up to ``startup_wait`` seconds for every upstream to
    connect or fail once before serving (one that is later appears later). ``wrap=None`` only
    for tests that set ``scope["d2.user"]`` themselves: with no layer every
    request is 401."""
    manager = StreamableHTTPSessionManager(
        app=gateway.server, security_settings=_security(host, allowed_hosts)
    )

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await manager.handle_request(scope, receive, send)

    inner: ASGIApp = require_identity(endpoint)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with gateway.running(), manager.run():
            await gateway.wait_tried(startup_wait)
            yield

    app: ASGIApp = Starlette(routes=[Route(path, endpoint=_Endpoint(inner))], lifespan=lifespan)
    return app if wrap is None else wrap(app)


class _Endpoint:
    """An ASGI app as a Starlette route endpoint (a plain function would be taken
    for a request/response handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
