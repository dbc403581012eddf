"""Start a request's user context from an extractor's result (ASGI and WSGI)."""

from __future__ import annotations

from collections.abc import Awaitable

from d2.core import ConfigurationError, set_user

__all__ = ["begin_request"]


def begin_request(info: object) -> None:
    """Set the user for this request from ``(user_id, roles)``; ``None`` (or a
    ``None``/empty user id) means no user, and then no roles either."""
    if info is None:
        set_user(None)
        return
    if not isinstance(info, (tuple, list)) or len(info) != 2:
        if isinstance(info, Awaitable):
            close = getattr(info, "close", None)
            if close is not None:  # a coroutine: never awaited, so close it quietly
                close()
            raise ConfigurationError(
                "the WSGI user_extractor returned an awaitable; WSGI has no event loop, "
                "so give a plain (sync) function"
            )
        # the value is not shown: it may hold credentials
        raise ConfigurationError(
            f"user_extractor must return (user_id, roles) or None, got a {type(info).__name__}"
        )
    user_id, roles = info
    if set_user(user_id, roles).user_id is None:
        set_user(None)
