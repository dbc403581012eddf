"""Starlette / FastAPI: answer a :class:`~d2.core.PermissionDeniedError` with 403.

``add_permission_denied_handler(app)`` installs :func:`permission_denied_handler`,
which turns a denial raised while handling a request into::

    403 {"detail": "permission_denied", "tool_id": "billing:refund", "reason": "not_granted"}

The body names the tool and the machine-readable reason only: never the user, the
roles or the policy. A denial in a WebSocket session refuses the handshake with
that 403 or, once accepted, closes the session with code 1008 (policy violation).
A denial raised after the response started (mid-stream) or in a background task
cannot become a 403; it propagates like any error.

Needs Starlette: ``pip install "d2-sdk[asgi]"`` (or ``"d2-sdk[fastapi]"``).
"""

from __future__ import annotations

from typing import cast

try:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
    from starlette.responses import JSONResponse, Response
    from starlette.types import ExceptionHandler
    from starlette.websockets import WebSocket, WebSocketState
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        'd2.asgi.starlette needs Starlette: pip install "d2-sdk[asgi]"', name=exc.name
    ) from exc

from d2.core import PermissionDeniedError

__all__ = ["add_permission_denied_handler", "permission_denied_handler"]

WEBSOCKET_POLICY_VIOLATION = 1008


async def permission_denied_handler(conn: HTTPConnection, exc: Exception) -> Response | None:
    """Starlette exception handler: a 403 JSON response for a
    :class:`~d2.core.PermissionDeniedError` (any other exception is re-raised).

    In a WebSocket session not yet accepted, the handshake is refused with that 403
    response (when the server supports the denial-response extension; else with a
    plain 403); once accepted, the session is closed with code 1008.
    """
    if not isinstance(exc, PermissionDeniedError):
        raise exc
    response = JSONResponse(
        {"detail": "permission_denied", "tool_id": exc.tool_id, "reason": exc.reason},
        status_code=403,
    )
    if conn.scope["type"] != "websocket":
        return response
    ws = cast("WebSocket", conn)
    if ws.application_state == WebSocketState.CONNECTING and _has_denial_response(ws):
        await ws.send_denial_response(response)
    elif WebSocketState.DISCONNECTED not in (ws.application_state, ws.client_state):
        await ws.close(code=WEBSOCKET_POLICY_VIOLATION, reason="permission_denied")
    return None


def _has_denial_response(ws: WebSocket) -> bool:
    return "websocket.http.response" in (ws.scope.get("extensions") or {})


def add_permission_denied_handler(app: Starlette) -> None:
    """Install :func:`permission_denied_handler` for ``PermissionDeniedError`` (and
    so its subclasses) on a Starlette or FastAPI app."""
    app.add_exception_handler(
        PermissionDeniedError, cast("ExceptionHandler", permission_denied_handler)
    )
