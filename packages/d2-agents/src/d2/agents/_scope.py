"""Act as a user for the span of one framework request while keeping the request
scope (call history, data-flow facts) of a longer session.

An MCP session is many JSON-RPC requests, and each runs in a fresh copy of the
context, so ``set_user`` per request would forget the session's history and no
sequence rule could ever see ``db.read_users`` followed by ``http.request``. A
session keeps the :class:`~d2.core.UserContext` it was given and re-enters it on
each request while the user stays the same.

``d2.core.attach`` re-enters a context; ``d2.core.detach`` restores the previous one.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import Token

from d2.core import UserContext, attach, detach, get_user_context, set_user

__all__ = ["enter", "leave"]


def enter(
    user_id: str | int | None, roles: Iterable[str] | str | None, previous: UserContext | None
) -> tuple[UserContext, Token[UserContext]]:
    """Make ``user_id`` with ``roles`` the current user; keep ``previous``'s scope
    when it is the same user with the same roles. Returns the context now current and
    the token that :func:`leave` needs to restore what was current before."""
    token = attach(get_user_context())
    fresh = set_user(user_id, roles)  # validates and normalises like every set_user
    if previous is not None and previous == fresh:  # same user and roles
        attach(previous)
        return previous, token
    return fresh, token


def leave(token: Token[UserContext]) -> None:
    """Restore the context that was current before the matching :func:`enter`."""
    detach(token)
