"""The gateway over MCP Streamable HTTP: an ASGI app serving ``/mcp``.

Identity never comes from plain headers: the layer in front of ``/mcp`` (a
bearer-JWT verifier) puts the verified ``(user_id, roles)`` in the ASGI scope
under ``"d2.user"``; a request without it is answered 401 before the MCP
transport sees it (and, were it to get through, the gateway would show it no
tools)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.types import UNSUPPORTED_PROTOCOL_VERSION
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .gateway import USER_SCOPE_KEY, Gateway, _identity
from .sessions import DEFAULT_IDLE_TIMEOUT, DEFAULT_SESSIONS_PER_USER, SessionManager

__all__ = ["Wrap", "handshake_only", "http_app", "require_identity", "session_owner"]

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


def session_owner(user_id: str, roles: tuple[str, ...], issuer: str | None) -> AuthenticatedUser:
    """The MCP SDK's principal for a verified identity: the SDK binds each session
    to the principal of the request that created it (``initialize``) and answers
    404 to a request, a ``DELETE`` or a ``GET`` stream of any other principal in
    it. The principal is the whole D2 identity (user id and roles, and the
    issuer when one is configured), so the session's D2 request is bound to the
    identity that initialized it. The bearer token itself is not kept."""
    return AuthenticatedUser(
        AccessToken(
            token="",
            client_id=json.dumps([user_id, list(roles)]),
            scopes=[],
            subject=user_id,
            claims={"iss": issuer} if issuer else None,
        )
    )


def require_identity(app: ASGIApp, issuer: str | None = None) -> ASGIApp:
    """Answer 401 to an HTTP request whose scope carries no well-formed
    ``"d2.user"``; pass the others to ``app`` with ``scope["user"]`` set to their
    :func:`session_owner` (any value set by anything outside is replaced)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            identity = _identity(scope.get(USER_SCOPE_KEY))
            if identity is None:
                await _unauthorized(send, 'Bearer error="invalid_token"')
                return
            scope = {**scope, "user": session_owner(identity[0], identity[1], issuer)}
        await app(scope, receive, send)

    return guarded


_VERSION_HEADER = MCP_PROTOCOL_VERSION_HEADER.lower().encode("ascii")
_PEEK_LIMIT = 1 << 20  # bytes of a refused request read to echo its JSON-RPC id


async def _request_id(receive: Receive) -> object:
    """The JSON-RPC id of the request body (``None`` when it cannot be read)."""
    body, more = b"", True
    while more and len(body) <= _PEEK_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        more = bool(message.get("more_body", False))
    if more:
        return None
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    found = decoded.get("id") if isinstance(decoded, dict) else None
    return found if isinstance(found, (str, int)) and not isinstance(found, bool) else None


def handshake_only(app: ASGIApp) -> ASGIApp:
    """Refuse the stateless protocol revisions (2026-07-28 and later): answer a
    request whose ``MCP-Protocol-Version`` is not a handshake-era version with
    JSON-RPC error -32022 naming the versions served, so a client falls back to
    the ``initialize`` handshake and a session. Data flow, sequences and
    per-request budgets need the history a session carries; a stateless request
    would start from nothing each time (fail open)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            versions = [v for k, v in scope.get("headers", []) if k.lower() == _VERSION_HEADER]
            requested = versions[0].decode("latin-1") if versions else None
            if requested is not None and (
                len(versions) > 1 or requested not in HANDSHAKE_PROTOCOL_VERSIONS
            ):
                request_id = await _request_id(receive) if scope.get("method") == "POST" else None
                await _json_response(send, 400, _unsupported(request_id, requested))
                return
        await app(scope, receive, send)

    return guarded


def _unsupported(request_id: object, requested: str) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": UNSUPPORTED_PROTOCOL_VERSION,
            "message": (
                f"Unsupported protocol version {requested[:40]!r}: this gateway keeps a session "
                "per client (data flow, sequences and per-request budgets need its history); "
                f"connect with the initialize handshake, protocol {LATEST_HANDSHAKE_VERSION} "
                "or earlier (reason: session_required)"
            ),
            "data": {
                "supported": list(HANDSHAKE_PROTOCOL_VERSIONS),
                "requested": requested[:200],
                "d2_reason": "session_required",
            },
        },
    }


async def _json_response(send: Send, status: int, document: object) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
    issuer: str | None = None,
    max_sessions_per_user: int | None = DEFAULT_SESSIONS_PER_USER,
    session_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The ASGI app: ``path`` serves MCP Streamable HTTP behind :func:`require_identity`,
    and the whole app sits inside ``wrap`` (the identity layer); its lifespan supervises the
    upstreams; it waits up to ``startup_wait`` seconds for every upstream to
    connect or fail once before serving (one that is later appears later); ``issuer`` (the
    identity provider's, when configured) is part of each session's owner. A user
    holds at most ``max_sessions_per_user`` open sessions (then 429); a session with
    no request in flight for ``session_idle_timeout`` seconds ends. ``on_shutdown`` is
    awaited when the server stops, before the upstreams do (the command shuts D2
    down there: usage events and the decision log are flushed). ``wrap=None`` only
    for tests that set ``scope["d2.user"]`` themselves: with no layer every
    request is 401."""
    manager = SessionManager(
        app=gateway.server,
        security_settings=_security(host, allowed_hosts),
        session_idle_timeout=session_idle_timeout,
        max_sessions_per_user=max_sessions_per_user,
    )

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await manager.handle_request(scope, receive, send)

    inner: ASGIApp = require_identity(handshake_only(endpoint), issuer)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with gateway.running(), manager.run():
            await gateway.wait_tried(startup_wait)
            try:
                yield
            finally:  # the server is stopping (a signal too): before the upstreams stop
                if on_shutdown is not None:
                    await on_shutdown()

    app: ASGIApp = Starlette(routes=[Route(path, endpoint=_Endpoint(inner))], lifespan=lifespan)
    return app if wrap is None else wrap(app)


class _Endpoint:
    """An ASGI app as a Starlette route endpoint (a plain function would be taken
    for a request/response handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
