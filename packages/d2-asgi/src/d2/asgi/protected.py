"""Bearer-token protection for an ASGI app, as MCP's authorization spec wants it.

:class:`BearerProtected` wraps an ASGI app (an MCP Streamable HTTP server, an API)
and keeps these promises (MCP authorization 2025-06-18, RFC 9728, RFC 6750):

1. ``GET /.well-known/oauth-protected-resource`` and
   ``GET /.well-known/oauth-protected-resource<path>`` (RFC 9728, 3.1) answer the
   protected resource metadata (JSON) without any token: ``resource``,
   ``authorization_servers`` (the extractor's ``oidc_issuer`` or ``issuer``),
   ``bearer_methods_supported: ["header"]``, ``resource_name`` and
   ``scopes_supported`` when given.
2. Every other ``http`` request and ``websocket`` session runs the inner app only
   with an identity from the extractor. Without one the answer is ``401`` with
   ``WWW-Authenticate: Bearer resource_metadata="<metadata URL>"``, plus
   ``error="invalid_token"`` when a bearer token was presented and refused (or
   ``error="invalid_request"`` for two ``Authorization`` headers); no ``error``
   when no credentials came (RFC 6750, 3.1). ``Cache-Control: no-store``. A
   refused WebSocket handshake gets the same 401 where the server supports the
   ``websocket.http.response`` extension, else it is closed (1008).
3. The inner app finds the identity as ``scope["d2.user"] = (user_id, roles)`` on
   its own copy of the scope; a ``d2.user`` already in the scope (set by anything
   outside) is never trusted: it is replaced.
4. ``lifespan`` goes straight through; an unknown scope type is refused.

Without ``resource`` the resource URL is built from the request (its scheme, its
``Host`` header, its path), so a client that forges ``Host`` is shown its own
host back. That is harmless to the wrapper (answers are ``no-store``; a ``Host``
that is not a plain host name or address is a 400) but behind a proxy, or
wherever ``Host`` may differ from the public name, give ``resource``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Iterable
from urllib.parse import quote, unquote, urlsplit

from d2.core import ConfigurationError

from ._idp import check_url
from .types import ASGIApp, Receive, Scope, Send, UserExtractor

__all__ = ["WELL_KNOWN", "BearerProtected"]

log = logging.getLogger("d2.asgi")

WELL_KNOWN = "/.well-known/oauth-protected-resource"
"""The well-known path of the protected resource metadata (RFC 9728)."""

_USER_KEY = "d2.user"
_SPACE = " \t\r\n\f\v"
_PATH_SAFE = "/-._~!$&'()*+,;=:@"  # RFC 3986 pchar without "%": no quote, no backslash
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749, 3.3
_URL_TEXT = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # printable ASCII but '"' and '\'
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")

Identity = tuple[str, tuple[str, ...]]


def _identity(info: object) -> Identity | None:
    """``(user_id, roles)`` from an extractor's answer; ``None`` for no user."""
    if info is None:
        return None
    if not isinstance(info, (tuple, list)) or len(info) != 2:
        raise ConfigurationError(
            f"the extractor must return (user_id, roles) or None, got a {type(info).__name__}"
        )
    raw, raw_roles = info
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return None
    user = str(raw).strip(_SPACE)
    if not user:
        return None
    if raw_roles is None:
        items: Iterable[object] = ()
    elif isinstance(raw_roles, str):
        items = raw_roles.split()
    else:
        items = raw_roles
    roles: list[str] = []
    for item in items:
        role = item.strip(_SPACE) if isinstance(item, str) else ""
        if role and role not in roles:
            roles.append(role)
    return user, tuple(roles)


def _bearer_error(scope: Scope) -> str | None:
    """The RFC 6750 error code of a refused request: ``None`` when it carried no
    bearer credentials (no ``Authorization``, or another scheme)."""
    found: list[bytes] = [v for k, v in scope.get("headers") or () if k.lower() == b"authorization"]
    if not found:
        return None
    if len(found) > 1:
        return "invalid_request"
    scheme = found[0].strip().split(b" ", 1)[0]
    return "invalid_token" if scheme.lower() == b"bearer" else None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


def _origin(scope: Scope) -> str | None:
    """``scheme://host`` of the request from its ``Host`` header (else the server
    address); ``None`` when the host is not a plain name or address."""
    scheme = _SCHEMES.get(str(scope.get("scheme") or "http"), "http")
    raw = _header(scope, b"host")
    if raw is None:
        server = scope.get("server")
        if not server or server[1] is None:
            return None
        host, port = server
        host = f"[{host}]" if ":" in str(host) else str(host)
        text = f"{host}:{port}"
    else:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(text) > 255 or not _HOST.fullmatch(text):
        return None
    return f"{scheme}://{text.lower()}"


def _metadata_url(origin: str, path: str) -> str:
    """The metadata URL of the resource ``origin + path`` (RFC 9728, 3.1: the
    well-known path goes between the host and the path, a lone ``/`` dropped)."""
    return origin + WELL_KNOWN + ("" if path in ("", "/") else path)


def _quoted(value: str) -> str:
    """``value`` as an RFC 9110 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_resource(resource: str) -> tuple[str, str]:
    """A configured ``resource`` checked; returns it and its (encoded) path."""
    if not isinstance(resource, str):
        raise ConfigurationError("resource must be the protected resource's URL (a string)")
    check_url(resource, "resource")
    if not _URL_TEXT.fullmatch(resource):
        raise ConfigurationError(
            f"resource must be printable ASCII without spaces, quotes or backslashes "
            f"(percent-encode them), got {resource!r}"
        )
    parts = urlsplit(resource)
    if parts.query or parts.fragment or "?" in resource or "#" in resource:
        raise ConfigurationError(f"resource must have no query or fragment, got {resource!r}")
    return resource, parts.path


class BearerProtected:
    """Run ``app`` only for requests with a verified bearer identity, and publish
    the RFC 9728 metadata that tells clients where to get a token.

    ``extractor``: ``extractor(scope) -> (user_id, roles) | None``, plain or async;
    usually :func:`~d2.asgi.jwt_extractor` (its ``oidc_issuer``, else its
    ``issuer``, becomes the metadata's ``authorization_servers``). ``resource``:
    the resource's public URL (for an MCP server, its endpoint, e.g.
    ``https://tools.example.invalid/mcp``); give it behind a proxy, since without
    it the URL is built from the request's ``Host`` header. ``resource_name``,
    ``scopes``: published in the metadata.

    The inner app reads ``scope["d2.user"]``; to make it the D2 user of each
    request, put :class:`~d2.asgi.ASGIMiddleware` inside::

        app = BearerProtected(
            ASGIMiddleware(mcp_app, user_extractor=lambda scope: scope["d2.user"]),
            extractor=jwt_extractor(oidc_issuer=..., audience=...),
            resource="https://tools.example.invalid/mcp",
        )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        extractor: UserExtractor,
        resource: str | None = None,
        resource_name: str | None = None,
        scopes: Iterable[str] | None = None,
    ) -> None:
        if not callable(extractor):
            raise ConfigurationError(
                f"extractor must be a function of the ASGI scope (e.g. jwt_extractor(...)), "
                f"got {type(extractor).__name__}"
            )
        if resource_name is not None and (not isinstance(resource_name, str) or not resource_name):
            raise ConfigurationError("resource_name must be a non-empty string, or None")
        listed: list[str] | None = None
        if scopes is not None:
            if isinstance(scopes, str):
                raise ConfigurationError("scopes must be a list of scope names, not one string")
            listed = list(dict.fromkeys(scopes))
            for item in listed:
                if not isinstance(item, str) or not _SCOPE_TOKEN.fullmatch(item):
                    raise ConfigurationError(
                        f"scopes must be OAuth scope tokens (printable ASCII, no spaces, "
                        f"quotes or backslashes), got {item!r}"
                    )
        # the authorization server: the issuer whose discovery document the extractor
        # reads, else the issuer its tokens must name
        issuer = getattr(extractor, "oidc_issuer", None) or getattr(extractor, "issuer", None)
        self.app = app
        self.extractor = extractor
        self.resource_name = resource_name
        self.scopes: tuple[str, ...] | None = None if listed is None else tuple(listed)
        self.issuer: str | None = issuer if isinstance(issuer, str) and issuer else None
        self.resource: str | None = None
        self._paths: frozenset[str] = frozenset()
        self._metadata_at = ""
        if resource is not None:
            self.resource, path = _check_resource(resource)
            parts = urlsplit(self.resource)
            self._metadata_at = _metadata_url(f"{parts.scheme}://{parts.netloc}", path)
            suffix = "" if path in ("", "/") else unquote(path)
            self._paths = frozenset({WELL_KNOWN, WELL_KNOWN + suffix})

    def __repr__(self) -> str:
        return f"<BearerProtected resource={self.resource!r} issuer={self.issuer!r}>"

    def metadata(self, resource: str) -> dict[str, object]:
        """The protected resource metadata document for ``resource``."""
        doc: dict[str, object] = {"resource": resource}
        if self.issuer is not None:
            doc["authorization_servers"] = [self.issuer]
        doc["bearer_methods_supported"] = ["header"]
        if self.resource_name is not None:
            doc["resource_name"] = self.resource_name
        if self.scopes is not None:
            doc["scopes_supported"] = list(self.scopes)
        return doc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            raise RuntimeError(f"BearerProtected refuses an ASGI scope of type {kind!r}")
        path = str(scope.get("path") or "/")
        if kind == "http" and (path == WELL_KNOWN or path.startswith(WELL_KNOWN + "/")):
            await self._serve_metadata(scope, send, path)
            return
        if _USER_KEY in scope:  # set outside: not even the extractor sees it
            scope = {key: value for key, value in scope.items() if key != _USER_KEY}
        info = self.extractor(scope)
        if isinstance(info, Awaitable):
            info = await info
        identity = _identity(info)
        if identity is None:
            await self._refuse(scope, send, path)
            return
        inner = dict(scope)  # the caller's scope keeps no identity; a forged one is replaced
        inner[_USER_KEY] = identity
        await self.app(inner, receive, send)

    # -- answers -------------------------------------------------------------------
    async def _serve_metadata(self, scope: Scope, send: Send, path: str) -> None:
        method = scope.get("method", "GET")
        if method == "OPTIONS":
            headers = [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                (b"access-control-allow-headers", b"*"),
                (b"allow", b"GET, HEAD, OPTIONS"),
            ]
            await _respond(send, 204, b"", headers)
            return
        if method not in ("GET", "HEAD"):
            body = json.dumps({"error": "method_not_allowed"}).encode()
            await _respond(send, 405, body, [_JSON, (b"allow", b"GET, HEAD, OPTIONS")])
            return
        if self.resource is not None:
            if path not in self._paths:
                await _respond(send, 404, json.dumps({"error": "not_found"}).encode(), [_JSON])
                return
            resource = self.resource
        else:
            origin = _origin(scope)
            if origin is None:
                await _bad_host(send)
                return
            suffix = path[len(WELL_KNOWN) :] or "/"
            resource = origin + quote(suffix, safe=_PATH_SAFE, errors="replace")
        body = json.dumps(self.metadata(resource)).encode()
        headers = [_JSON, _NO_STORE, (b"access-control-allow-origin", b"*")]
        await _respond(send, 200, b"" if method == "HEAD" else body, headers, len(body))

    async def _refuse(self, scope: Scope, send: Send, path: str) -> None:
        if self.resource is not None:
            metadata_at = self._metadata_at
        else:
            origin = _origin(scope)
            if origin is None:
                await _bad_host(send, websocket=scope["type"] == "websocket")
                return
            metadata_at = _metadata_url(origin, quote(path, safe=_PATH_SAFE, errors="replace"))
        error = _bearer_error(scope)
        challenge = "Bearer resource_metadata=" + _quoted(metadata_at)
        if error is not None:
            challenge += ", error=" + _quoted(error)
        body = json.dumps({"error": error or "unauthorized"}).encode()
        headers = [_JSON, _NO_STORE, (b"www-authenticate", challenge.encode("ascii"))]
        if scope["type"] == "websocket":
            await _refuse_websocket(scope, send, body, headers)
        else:
            await _respond(send, 401, body, headers)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
    *,
    prefix: str = "http.response",
) -> None:
    size = str(len(body) if length is None else length).encode()
    await send(
        {
            "type": f"{prefix}.start",
            "status": status,
            "headers": [*headers, (b"content-length", size)],
        }
    )
    await send({"type": f"{prefix}.body", "body": body})


async def _refuse_websocket(
    scope: Scope, send: Send, body: bytes, headers: list[tuple[bytes, bytes]], status: int = 401
) -> None:
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await _respond(send, status, body, headers, prefix="websocket.http.response")
    else:
        await send({"type": "websocket.close", "code": 1008})


async def _bad_host(send: Send, *, websocket: bool = False) -> None:
    body = json.dumps({"error": "invalid_request", "error_description": "bad Host"}).encode()
    if websocket:
        await send({"type": "websocket.close", "code": 1008})
    else:
        await _respond(send, 400, body, [_JSON, _NO_STORE])
