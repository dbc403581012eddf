"""The HTTP API (PROTOCOL.md v1) as a Starlette application.

Each route authenticates, reads a bounded body, and hands the work to
:class:`~d2.server.service.ControlPlane` in the thread pool (storage is blocking
SQLite). Every refusal is JSON ``{"detail": ...}``; unknown routes and methods too.

A poll first tries the fast path,
:meth:`~d2.server.service.ControlPlane.servable`: the token's poll state and a
bundle this process served before, no signing, a 304 without a body or the
stored JWS. The state is read on the event loop itself when the storage's reads
are local (:attr:`~d2.server.storage.Storage.local_reads`, SQLite); otherwise
(PostgreSQL) from the :class:`~d2.server.pollcache.PollCache`, which re-reads a
token's state only when the database's poll epoch changed. Anything else (a
refusal, a bundle due for re-signing) takes the full path.

The application's lifespan checks the signing keys against ``D2_SERVER_SECRET``
(:meth:`~d2.server.service.ControlPlane.check_signing_keys`: a refusal stops the
server before it serves) and runs the usage-event pruner
(:class:`~d2.server.retention.EventPruner`) in a thread of its own while it serves.
``/healthz`` answers 503 ``database_unavailable`` when the database does not answer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import bodies
from .config import EVENTS_MAX_BYTES
from .errors import ApiError
from .openapi import openapi_document
from .pollcache import PollCache
from .preconditions import ETagSet, parse_etags
from .retention import EventPruner
from .service import ControlPlane
from .storage import Bundle, PollState, Principal
from .tokens import EVENTS_WRITE, POLICY_WRITE
from .wire import error_response, http_exception_response, json_response, read_body

__all__ = ["create_app"]

_T = TypeVar("_T")
_SMALL_BODY = 64 * 1024  # keys and other small JSON bodies
_log = logging.getLogger("d2.server")


class _Api:
    """The route handlers, bound to one control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.poll = str(plane.config.poll_seconds)
        self.cache = None if plane.storage.local_reads else PollCache(plane.storage)

    async def _run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await run_in_threadpool(functools.partial(func, *args, **kwargs))

    async def _principal(self, request: Request, scope: str | None = None) -> Principal:
        principal = await self._run(self.plane.authenticate, request.headers.get("authorization"))
        if scope is not None:
            self.plane.require(principal, scope)
        return principal

    async def health(self, request: Request) -> Response:
        try:
            await self._run(self.plane.health)
        except Exception:
            _log.warning("health check: the database does not answer", exc_info=True)
            return json_response({"detail": "database_unavailable"}, 503)
        return json_response(bodies.Health())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def jwks(self, request: Request) -> Response:
        body = await self._run(self.plane.jwks)
        return json_response(body, headers={"Cache-Control": "no-cache"})

    async def me(self, request: Request) -> Response:
        principal = await self._principal(request)
        return json_response(self.plane.identity(principal))

    async def bundle(self, request: Request) -> Response:
        if_none_match = parse_etags(request.headers.get("if-none-match"))
        authorization = request.headers.get("authorization")
        token_hash = self.plane.poll_token_hash(authorization)
        if token_hash is not None:  # the fast path: no signing, a stored body
            try:
                state = await self._poll_state(token_hash)
            except Exception:  # the full path answers, or fails on its own
                _log.warning("poll fast path: cannot read the poll state", exc_info=True)
                state = None
            bundle = self.plane.servable(state)
            if bundle is not None:
                return self._bundle_response(bundle, if_none_match)
        bundle = await self._run(self._authenticated_bundle, authorization)
        return self._bundle_response(bundle, if_none_match)

    async def _poll_state(self, token_hash: str) -> PollState | None:
        if self.cache is None:  # a local read (SQLite): on the event loop
            return self.plane.storage.poll_state(token_hash)
        return await self.cache.state(token_hash)

    def _bundle_response(self, bundle: Bundle, if_none_match: ETagSet | None) -> Response:
        headers = self._bundle_headers(bundle.etag)
        if self.plane.bundle_matches(bundle, if_none_match):
            return Response(status_code=304, headers=headers)
        return json_response(bodies.Bundle(jws=bundle.jws, version=bundle.version), headers=headers)

    def _authenticated_bundle(self, authorization: str | None) -> Bundle:
        return self.plane.bundle(self.plane.authenticate(authorization))  # one thread hop

    def _bundle_headers(self, etag: str) -> dict[str, str]:
        return {"ETag": etag, "X-D2-Poll-Seconds": self.poll, "Cache-Control": "no-cache"}

    async def publish(self, request: Request) -> Response:
        principal = await self._principal(request, POLICY_WRITE)
        body = await read_body(request, self.plane.config.max_body_bytes)
        new = await self._run(
            self.plane.publish,
            principal,
            body,
            key_id=request.headers.get("x-d2-key-id"),
            signature=request.headers.get("x-d2-signature"),
            if_match=parse_etags(request.headers.get("if-match")),
            if_none_match=parse_etags(request.headers.get("if-none-match")),
        )
        etag = new.bundle.etag
        return json_response(bodies.Published(version=new.version, etag=etag), 201, {"ETag": etag})

    async def revoke(self, request: Request) -> Response:
        principal = await self._principal(request, POLICY_WRITE)
        await read_body(request, _SMALL_BODY)  # ignored, but bounded
        version = await self._run(self.plane.revoke, principal)
        return json_response(bodies.Revoked(revoked_version=version))

    async def draft(self, request: Request) -> Response:
        principal = await self._principal(request, POLICY_WRITE)
        if request.method != "PUT":
            return json_response(await self._run(self.plane.get_draft, principal))
        body = await read_body(request, self.plane.config.max_body_bytes)
        version = await self._run(self.plane.put_draft, principal, body)
        return json_response(bodies.DraftSaved(draft_version=version))

    async def keys(self, request: Request) -> Response:
        principal = await self._principal(request, POLICY_WRITE)
        body = await read_body(request, _SMALL_BODY)
        return json_response(await self._run(self.plane.register_key, principal, body), 201)

    async def ingest(self, request: Request) -> Response:
        principal = await self._principal(request, EVENTS_WRITE)
        self.plane.admit_events(principal)
        body = await read_body(request, EVENTS_MAX_BYTES)
        count = await self._run(self.plane.ingest, principal, body)
        return json_response(bodies.Accepted(accepted=count), 202)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, HTTPException):
        return http_exception_response(exc)
    return json_response({"detail": "internal_error"}, 500)


def create_app(plane: ControlPlane, *, prune: bool = True) -> Starlette:
    """The ASGI application serving ``plane``. Serve it with the lifespan protocol on
    (uvicorn's default): startup checks the signing keys against ``D2_SERVER_SECRET``
    (:meth:`~d2.server.service.ControlPlane.check_signing_keys`; a refusal fails the
    startup, so the server never listens) and starts the usage-event pruner
    (``app.state.pruner``), shutdown stops it. ``prune=False``: no pruner (another
    process of the same server runs it, as with ``d2-server serve --workers N``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(plane.check_signing_keys)  # refuse to start with bad keys
        if not prune:
            yield
            return
        pruner = EventPruner(plane)
        app.state.pruner = pruner
        pruner.start()
        try:
            yield
        finally:
            await run_in_threadpool(pruner.stop)

    api = _Api(plane)
    handler: Callable[[Request, Exception], Awaitable[Response]] = _on_error
    routes = [
        Route("/healthz", api.health, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/.well-known/jwks.json", api.jwks, methods=["GET"]),
        Route("/v1/accounts/me", api.me, methods=["GET"]),
        Route("/v1/policy/bundle", api.bundle, methods=["GET"]),
        Route("/v1/policy/publish", api.publish, methods=["POST"]),
        Route("/v1/policy/revoke", api.revoke, methods=["POST"]),
        Route("/v1/policy/draft", api.draft, methods=["GET", "PUT"]),
        Route("/v1/keys", api.keys, methods=["POST"]),
        Route("/v1/events/ingest", api.ingest, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: handler, HTTPException: handler, Exception: handler},
        lifespan=lifespan,
    )
    app.state.plane = plane
    return app
