"""d2-asgi: D2 for web apps.

- :class:`ASGIMiddleware`: sets the D2 user for each HTTP request and WebSocket
  session of any ASGI app (Starlette, FastAPI, Quart, Django ASGI) and clears it
  when the response is fully sent.
- :class:`WSGIMiddleware`: the same for WSGI apps (Flask, Django).
- :func:`headers_extractor` / :func:`wsgi_headers_extractor`: the default user
  source, ``X-D2-User`` and ``X-D2-Roles``; only safe behind a gateway that sets or
  strips those headers.
- :func:`jwt_extractor`: the user from a verified ``Authorization: Bearer`` JWT
  (checked against a JWKS, audience and issuer; needs ``d2-asgi[jwt]``).
- :func:`add_permission_denied_handler` / :func:`permission_denied_handler`
  (Starlette/FastAPI, imported on first use): a denial becomes a 403 JSON response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bearer import JWTExtractor, jwt_extractor
from .headers import ROLES_HEADER, USER_HEADER, headers_extractor, wsgi_headers_extractor
from .middleware import ASGIMiddleware
from .wsgi import WSGIMiddleware

if TYPE_CHECKING:
    from .starlette import add_permission_denied_handler, permission_denied_handler

_NEEDS_STARLETTE = frozenset({"add_permission_denied_handler", "permission_denied_handler"})


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_STARLETTE:
        raise AttributeError(f"module 'd2.asgi' has no attribute {name!r}")
    from . import starlette

    value = getattr(starlette, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ASGIMiddleware",
    "JWTExtractor",
    "ROLES_HEADER",
    "USER_HEADER",
    "WSGIMiddleware",
    "add_permission_denied_handler",
    "headers_extractor",
    "jwt_extractor",
    "permission_denied_handler",
    "wsgi_headers_extractor",
]
