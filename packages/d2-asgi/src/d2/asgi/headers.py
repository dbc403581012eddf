"""Read the user from ``X-D2-User`` / ``X-D2-Roles`` request headers.

**Only safe behind a gateway** (reverse proxy, API gateway, auth sidecar) that
authenticates the caller and then *sets or strips* both headers on every request.
Reachable directly, any client can send ``X-D2-Roles: admin``. See
``docs/integrations.md`` for the deployment checklist and a custom extractor.

Parsing, the same for ASGI and WSGI: the user id is trimmed and an empty one means
no user; roles are comma-separated, each trimmed, empties dropped; roles without a
user are ignored (no user: guarded tools deny with ``no_user``). Bytes are read as
UTF-8, falling back to Latin-1. Ambiguous input fails closed, as no user: a header
sent twice (ASGI), or a user id holding a comma (how WSGI servers merge a repeated
header).
"""

from __future__ import annotations

from .types import Environ, Scope

__all__ = ["ROLES_HEADER", "USER_HEADER", "headers_extractor", "wsgi_headers_extractor"]

USER_HEADER = "X-D2-User"
"""The header naming the user id."""
ROLES_HEADER = "X-D2-Roles"
"""The header listing the user's roles, comma-separated."""

_ASGI_USER = USER_HEADER.lower().encode("ascii")
_ASGI_ROLES = ROLES_HEADER.lower().encode("ascii")
_WSGI_USER = "HTTP_" + USER_HEADER.upper().replace("-", "_")
_WSGI_ROLES = "HTTP_" + ROLES_HEADER.upper().replace("-", "_")
_SPACE = b" \t\r\n\f\v"
_NOBODY: tuple[str | None, tuple[str, ...]] = (None, ())


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse(user: bytes | None, roles: bytes | None) -> tuple[str | None, tuple[str, ...]]:
    user = user.strip(_SPACE) if user is not None else b""
    if not user or b"," in user:
        return _NOBODY
    if not roles:
        return _text(user), ()
    parts = (part.strip(_SPACE) for part in roles.split(b","))
    return _text(user), tuple(_text(part) for part in parts if part)


def headers_extractor(scope: Scope) -> tuple[str | None, tuple[str, ...]]:
    """ASGI extractor: ``(user_id, roles)`` from ``X-D2-User`` and ``X-D2-Roles``.

    The default of :class:`~d2.asgi.ASGIMiddleware`. Returns ``(None, ())`` when the
    user header is missing, empty, repeated or holds a comma, or a roles header is
    repeated. Trust it only behind a gateway that sets or strips both headers.
    """
    user: bytes | None = None
    roles: bytes | None = None
    seen_user = seen_roles = False
    for name, value in scope.get("headers") or ():
        name = name.lower()
        if name == _ASGI_USER:
            if seen_user:
                return _NOBODY
            user, seen_user = value, True
        elif name == _ASGI_ROLES:
            if seen_roles:
                return _NOBODY
            roles, seen_roles = value, True
    return _parse(user, roles)


def _environ_bytes(environ: Environ, key: str) -> bytes | None:
    value = environ.get(key)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    try:  # PEP 3333: header values are "native strings" decoded as Latin-1
        return str(value).encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded them otherwise
        return str(value).encode("utf-8")


def wsgi_headers_extractor(environ: Environ) -> tuple[str | None, tuple[str, ...]]:
    """WSGI extractor: ``(user_id, roles)`` from ``HTTP_X_D2_USER`` and
    ``HTTP_X_D2_ROLES`` in the environ.

    The default of :class:`~d2.asgi.WSGIMiddleware`; same parsing as
    :func:`headers_extractor`. WSGI servers merge a repeated header into one
    comma-joined value, so a repeated ``X-D2-User`` is refused (a comma in the id)
    but repeated ``X-D2-Roles`` reads as one list: the gateway must overwrite it.
    """
    return _parse(_environ_bytes(environ, _WSGI_USER), _environ_bytes(environ, _WSGI_ROLES))
