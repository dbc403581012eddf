"""d2-asgi: D2 for web apps.

- :class:`ASGIMiddleware`: sets the D2 user for each HTTP request and WebSocket
  session of any ASGI app (Starlette, FastAPI, Quart, Django ASGI) and clears it
  when the response is fully sent.
- :class:`WSGIMiddleware`: the same for WSGI apps (Flask, Django).
- :func:`headers_extractor` / :func:`wsgi_headers_extractor`: the default user
  source, ``X-D2-User`` and ``X-D2-Roles``; only safe behind a gateway that sets or
  strips those headers.
- :func:`jwt_extractor`: the user from a verified ``Authorization: Bearer`` JWT
  (checked against a JWKS, given or found by OIDC discovery, audience and issuer;
  needs ``d2-asgi[jwt]``).
- :class:`BearerProtected` (imported on first use): runs an ASGI app only for
  requests with a verified bearer identity, answering 401 and the RFC 9728
  protected resource metadata as MCP's authorization spec says.
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
    from .protected import BearerProtected
    from .starlette import add_permission_denied_handler, permission_denied_handler

# names imported on first use: the module that holds each
_LAZY = {
    "BearerProtected": "protected",
    "add_permission_denied_handler": "starlette",
    "permission_denied_handler": "starlette",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'd2.asgi' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ASGIMiddleware",
    "BearerProtected",
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
