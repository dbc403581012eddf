"""``ASGIMiddleware``: set the D2 user for each HTTP request and WebSocket session.

A plain ASGI middleware (no ``BaseHTTPMiddleware``): it sets the user in the task
that runs the app, so the endpoint, its dependencies, a streaming body, background
tasks and anything started from them (child tasks, the thread pool) see it, and it
clears the user when the app returns: after the last byte of a streaming response
and after background tasks, or when the app or the extractor raises. Each request
runs in its own task with its own copy of the context, so concurrent requests never
see each other's user.
"""

from __future__ import annotations

from collections.abc import Awaitable

from d2.core import ConfigurationError, clear_user_context

from ._request import begin_request
from .headers import headers_extractor
from .types import ASGIApp, Receive, Scope, Send, UserExtractor

__all__ = ["ASGIMiddleware"]

_GUARDED_SCOPES = frozenset({"http", "websocket"})


class ASGIMiddleware:
    """Set the D2 user context for each ``http`` and ``websocket`` scope.

    ``user_extractor(scope)`` returns ``(user_id, roles)`` (or ``None`` for no
    user); it may be a plain or an ``async`` function and runs on the event loop,
    so a plain one must not block. The default, :func:`~d2.asgi.headers_extractor`,
    trusts ``X-D2-User`` / ``X-D2-Roles`` and is only safe behind a gateway that
    sets or strips them. ``lifespan`` and unknown scopes go straight to the app.

    With Starlette or FastAPI::

        app.add_middleware(ASGIMiddleware, user_extractor=my_extractor)
    """

    def __init__(self, app: ASGIApp, *, user_extractor: UserExtractor = headers_extractor) -> None:
        if not callable(user_extractor):
            raise ConfigurationError(
                f"user_extractor must be a function of the ASGI scope, got "
                f"{type(user_extractor).__name__}"
            )
        self.app = app
        self.user_extractor = user_extractor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _GUARDED_SCOPES:
            await self.app(scope, receive, send)
            return
        try:
            info = self.user_extractor(scope)
            if isinstance(info, Awaitable):
                info = await info
            begin_request(info)
            await self.app(scope, receive, send)
        finally:
            clear_user_context()
