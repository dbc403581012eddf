"""Type aliases shared by the ASGI and WSGI middleware (no framework imported).

The ASGI aliases match ``starlette.types`` structurally, so a Starlette or FastAPI
app is an :data:`ASGIApp` without this package importing Starlette; the WSGI ones
follow PEP 3333 (and typeshed's ``_typeshed.wsgi``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "ASGIApp",
    "Environ",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "UserExtractor",
    "UserInfo",
    "WSGIApp",
    "WSGIUserExtractor",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UserInfo = tuple[str | int | None, Iterable[str] | str | None] | None
"""What an extractor returns: ``(user_id, roles)``, or ``None`` for "no user"."""

UserExtractor = Callable[[Scope], UserInfo | Awaitable[UserInfo]]
"""``extractor(scope) -> (user_id, roles)``, a plain or an ``async`` function."""

Environ = dict[str, Any]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


class StartResponse(Protocol):
    """PEP 3333 ``start_response(status, headers, exc_info=None) -> write``."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | tuple[None, None, None] | None = ...,
        /,
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

WSGIUserExtractor = Callable[[Environ], UserInfo]
"""``extractor(environ) -> (user_id, roles)`` (sync: WSGI has no event loop)."""
