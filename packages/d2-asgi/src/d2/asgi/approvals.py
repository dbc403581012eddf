"""The approvals inbox: a web page where approvers see and decide approval requests.

``inbox_app(user_extractor=...)`` is an ASGI app (Starlette) to mount in your own
app, for example at ``/d2/approvals``; ``d2 approvals serve`` runs it on its own.
It reads and decides through an :class:`~d2.core.approval_desk.ApprovalDesk`: by
default the store and policy of this process's D2 instance (so it works with the
in-process store when mounted in the app's own process, and with Redis anywhere).

What each approver gets, server-rendered (no script; the list refreshes itself
with a ``<meta>`` refresh):

* ``GET /``: the pending requests they may decide (an approver role of theirs, not
  asked by them), 50 a page (``?page=2``), and the recent decisions made through
  this inbox on requests they could have decided;
* ``GET /requests/<id>``: one request (tool, arguments as JSON, requester, policy
  version, asked and expiry times) with the buttons **Approve** and **Reject** and
  an optional comment, or who decided it. Arguments beyond
  ``max_argument_chars`` are shown cut, and such a call cannot be approved on the
  page (only where it is seen whole: ``d2 approvals``);
* ``POST /requests/<id>``: the decision (then back to the request's page).

The same guarantees as :func:`d2.approve` (exact call, one use, never the
requester, only approver roles), and the page is safe by construction: POSTs
carry a CSRF token bound to the user's session cookie and identity and valid for
12 hours (:data:`CSRF_LIFETIME`), and a
cross-site POST is refused; every response sends a strict Content-Security-Policy,
``X-Frame-Options: DENY`` and ``Cache-Control: no-store``; every value is
HTML-escaped; a request the user could not decide answers exactly like a missing
one (404), and an expired or used request cannot be decided.

Needs Starlette: ``pip install "d2-sdk[asgi]"``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from collections.abc import Awaitable
from urllib.parse import parse_qs

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        'd2.asgi.approvals needs Starlette: pip install "d2-sdk[asgi]"', name=exc.name
    ) from exc

from d2.core import ConfigurationError, UserContext
from d2.core import evaluate as _evaluate
from d2.core.approval_data import ApprovalRequest
from d2.core.approval_desk import ApprovalDesk, could_decide, shown_json_within
from d2.core.errors import D2Error, PermissionDeniedError

from . import _inbox_html as view
from .bearer import JWTExtractor
from .types import ASGIApp, Message, Receive, Scope, Send, UserExtractor

__all__ = ["CSRF_LIFETIME", "SECURITY_HEADERS", "current_user", "inbox_app"]

log = logging.getLogger("d2.asgi")

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "content-security-policy",
        "default-src 'none'; style-src '" + view.CSS_HASH + "'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
    ("pragma", "no-cache"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)
"""The headers every inbox response carries (replacing any the app set)."""

CSRF_LIFETIME = 12 * 3600
"""Seconds a page's CSRF token is accepted after it was issued (a form left open
longer is refused: reload the page)."""

_ID = re.compile(r"[0-9a-f]{64}")
_COOKIE = "d2_inbox_session"
_SESSION = re.compile(r"[A-Za-z0-9_-]{43}")
_MAX_FORM = 16 * 1024
_MAX_COMMENT = 500
_PAGE = re.compile(r"[1-9][0-9]{0,5}")
_TOKEN = re.compile(r"[0-9a-f]{64}")
_SKEW = 300  # seconds a token's time may be ahead of this process's clock (replicas)


def current_user(scope: Scope) -> tuple[str | None, tuple[str, ...]]:
    """A user extractor that reads the D2 user already set for this request (by
    the app's :class:`~d2.asgi.ASGIMiddleware`, wrapped around the mounted inbox)."""
    ctx = _current()
    return ctx.user_id, tuple(sorted(ctx.roles))


def _current() -> UserContext:
    from d2.core import get_user_context

    return get_user_context()


class _Headers:
    """ASGI wrapper: every response gets :data:`SECURITY_HEADERS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._names = {name.encode() for name, _ in SECURITY_HEADERS}
        self._headers = [(n.encode(), v.encode()) for n, v in SECURITY_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (n, v) for n, v in message.get("headers") or () if n.lower() not in self._names
                ]
                message["headers"] = kept + self._headers
            await send(message)

        await self.app(scope, receive, secured)


class _Inbox:
    """The handlers, and what they share: the desk, the extractor, the CSRF key
    and the recent decisions."""

    def __init__(
        self,
        desk: ApprovalDesk,
        user_extractor: UserExtractor,
        secret: bytes,
        refresh: int | None,
        keep: int,
        title: str,
        limit: int,
    ) -> None:
        self.desk = desk
        self.limit = limit
        self.extract = user_extractor
        self.secret = secret
        self.refresh = refresh
        self.title = title
        self.recent: collections.deque[view.Decision] = collections.deque(maxlen=keep)
        self.lock = threading.Lock()
        self.bearer = isinstance(user_extractor, JWTExtractor)

    # -- identity and session ------------------------------------------------------
    async def user(self, request: Request) -> UserContext:
        try:
            info = self.extract(request.scope)
            if isinstance(info, Awaitable):
                info = await info
            if info is None:
                return UserContext(None, None)
            user_id, roles = info
            return UserContext(user_id, roles)
        except Exception:  # an extractor that fails: nobody (fail closed)
            log.warning("d2: the inbox's user extractor raised: no user", exc_info=True)
            return UserContext(None, None)

    def token(self, session: str, user: str, issued: int | None = None) -> str:
        """The CSRF token of ``user`` in ``session``, issued at ``issued`` (Unix
        seconds, default now): the time in 8 hex digits, then 56 of the HMAC of
        the three (64 hex digits in all)."""
        if issued is None:
            issued = int(_evaluate._now())
        issued &= 0xFFFFFFFF
        message = json.dumps([session, user, issued], ensure_ascii=True).encode()
        mac = hmac.new(self.secret, message, hashlib.sha256).hexdigest()
        return f"{issued:08x}{mac[:56]}"

    def token_valid(self, given: str, session: str, user: str) -> bool:
        """Whether ``given`` is a token this inbox issued to ``user`` in ``session``
        less than :data:`CSRF_LIFETIME` seconds ago."""
        if not _TOKEN.fullmatch(given):
            return False
        issued = int(given[:8], 16)
        age = _evaluate._now() - issued
        if not -_SKEW <= age <= CSRF_LIFETIME:
            return False
        return hmac.compare_digest(given.encode(), self.token(session, user, issued).encode())

    @staticmethod
    def session_of(request: Request) -> str | None:
        value = request.cookies.get(_COOKIE)
        return value if value is not None and _SESSION.fullmatch(value) else None

    # -- responses -------------------------------------------------------------------
    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path") or "").rstrip("/")

    def html(
        self,
        request: Request,
        ctx: UserContext,
        title: str,
        body: view.Html,
        status: int = 200,
        *,
        refresh: int | None = None,
        session: str | None = None,
    ) -> Response:
        roles = sorted(ctx.roles)
        document = view.page(
            title,
            body,
            base=self.base(request),
            heading=self.title,
            user=ctx.user_id,
            roles=roles,
            refresh=refresh,
        )
        response = HTMLResponse(document, status_code=status)
        if session is not None:
            response.set_cookie(
                _COOKIE,
                session,
                path=self.base(request) + "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        if status == 401 and self.bearer:
            response.headers["www-authenticate"] = 'Bearer realm="d2-approvals"'
        return response

    def error(self, request: Request, ctx: UserContext, status: int) -> Response:
        title, body = view.error_page(status)
        return self.html(request, ctx, f"{title} - {self.title}", body, status)

    def unavailable(self, request: Request, ctx: UserContext, exc: BaseException) -> Response:
        log.warning("d2: the approvals inbox could not reach the store: %s", exc)
        return self.error(request, ctx, 503)

    def visible(self, ctx: UserContext) -> list[view.Decision]:
        with self.lock:
            decisions = list(self.recent)
        return [d for d in reversed(decisions) if could_decide(d.request, ctx.user_id, ctx.roles)]

    # -- handlers --------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        ctx = await self.user(request)
        if ctx.user_id is None:
            return self.error(request, ctx, 401)
        number = request.query_params.get("page", "1")
        if not _PAGE.fullmatch(number):
            return self.error(request, ctx, 400)
        try:
            pending = await self.desk.pending(ctx.user_id, ctx.roles)
        except D2Error as exc:
            return self.unavailable(request, ctx, exc)
        body = view.inbox_page(
            pending,
            self.visible(ctx)[:10],
            now=_evaluate._now(),
            base=self.base(request),
            number=int(number),
        )
        return self.html(request, ctx, self.title, body, refresh=self.refresh)

    async def show(self, request: Request) -> Response:
        ctx = await self.user(request)
        if ctx.user_id is None:
            return self.error(request, ctx, 401)
        request_id = request.path_params["request_id"]
        return await self.render(request, ctx, request_id)

    async def render(
        self,
        request: Request,
        ctx: UserContext,
        request_id: str,
        status: int = 200,
        notice: str | None = None,
    ) -> Response:
        assert ctx.user_id is not None
        if not _ID.fullmatch(request_id):
            return self.error(request, ctx, 404)
        try:
            state = await self.desk.lookup(request_id, ctx.user_id, ctx.roles)
        except D2Error as exc:
            return self.unavailable(request, ctx, exc)
        decision = next((d for d in self.visible(ctx) if d.request.id == request_id), None)
        if state is None and decision is None:
            return self.error(request, ctx, 404)
        shown: ApprovalRequest = state.request if state is not None else decision.request  # type: ignore[union-attr]
        session = self.session_of(request)
        fresh = session is None
        if session is None:
            session = secrets.token_urlsafe(32)
        # in a thread: the call's arguments may be megabytes of JSON to read through
        # (the page shows at most self.limit characters of them)
        body = await asyncio.to_thread(
            view.request_page,
            shown,
            now=_evaluate._now(),
            state=state.state if state is not None else "closed",
            decided_by=state.decided_by if state is not None else None,
            decision=decision,
            csrf=self.token(session, ctx.user_id),
            action=f"{self.base(request)}/requests/{request_id}",
            notice=notice,
            limit=self.limit,
        )
        title = f"{shown.tool_id} - {self.title}"
        return self.html(request, ctx, title, body, status, session=session if fresh else None)

    async def decide(self, request: Request) -> Response:
        ctx = await self.user(request)
        if ctx.user_id is None:
            return self.error(request, ctx, 401)
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return self.error(request, ctx, 403)  # a cross-site form (browsers say so)
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return self.error(request, ctx, 400)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM:
                return self.error(request, ctx, 413)
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=False, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return self.error(request, ctx, 400)
        session = self.session_of(request)
        given = form.get("csrf", [])
        if (
            session is None
            or len(given) != 1
            or not self.token_valid(given[0], session, ctx.user_id)
        ):
            return self.error(request, ctx, 403)
        choice, comments = form.get("decision", []), form.get("comment", [""])
        if len(choice) != 1 or choice[0] not in ("approve", "reject") or len(comments) != 1:
            return self.error(request, ctx, 400)
        comment = comments[0].strip()
        if len(comment) > _MAX_COMMENT:
            return self.error(request, ctx, 400)
        request_id = request.path_params["request_id"]
        if not _ID.fullmatch(request_id):
            return self.error(request, ctx, 404)
        approve = choice[0] == "approve"
        try:
            too_large = approve and await self.too_large(request_id, ctx)
        except D2Error as exc:  # not known to be shown whole: never approved (fail closed)
            return self.unavailable(request, ctx, exc)
        if too_large:
            notice = (
                "This call is too large to be shown whole here, so it cannot be approved "
                "here: decide it with d2 approvals."
            )
            return await self.render(request, ctx, request_id, 409, notice=notice)
        try:
            decided = await self.desk.decide(request_id, approve, ctx.user_id, ctx.roles)
        except PermissionDeniedError as exc:
            if exc.reason not in ("approval_not_found", "approval_not_permitted", "no_user"):
                return self.unavailable(request, ctx, exc)
            return await self.refused(request, ctx, request_id)
        except D2Error as exc:
            return self.unavailable(request, ctx, exc)
        now = _evaluate._now()
        with self.lock:
            self.recent.append(view.Decision(decided, approve, ctx.user_id, now, comment))
        if comment:
            log.info(
                "d2: approval request %s %s by %r with comment %r",
                decided.id,
                "approved" if approve else "rejected",
                ctx.user_id,
                comment,
            )
        where = f"{self.base(request)}/requests/{request_id}"
        return RedirectResponse(where, status_code=303)

    async def too_large(self, request_id: str, ctx: UserContext) -> bool:
        """Whether the request's arguments are longer than the page shows (its
        approval must be given where the whole call is seen). A store failure
        raises: an approval is never given on a size not known."""
        state = await self.desk.lookup(request_id, ctx.user_id, ctx.roles)
        if state is None:
            return False
        _, left = await asyncio.to_thread(shown_json_within, state.request.arguments, 0)
        return left > self.limit

    async def refused(self, request: Request, ctx: UserContext, request_id: str) -> Response:
        """A decision the desk refused: 409 when the user can still see the request
        (another approver decided it first), else the 404 of a missing request."""
        try:
            state = await self.desk.lookup(request_id, ctx.user_id, ctx.roles)
        except D2Error as exc:
            return self.unavailable(request, ctx, exc)
        if state is None or state.state == "pending":
            return self.error(request, ctx, 404)
        return await self.render(
            request, ctx, request_id, 409, notice="This request was decided already."
        )

    async def not_found(self, request: Request, exc: Exception) -> Response:
        ctx = await self.user(request)
        return self.error(request, ctx, getattr(exc, "status_code", 404))


def inbox_app(
    *,
    user_extractor: UserExtractor,
    desk: ApprovalDesk | None = None,
    instance_name: str = "default",
    csrf_secret: bytes | str | None = None,
    refresh_seconds: int | None = 15,
    recent_decisions: int = 50,
    title: str = "Approvals",
    max_argument_chars: int = view.MAX_SHOWN,
) -> ASGIApp:
    """The approvals inbox as an ASGI app (see the module docstring).

    ``user_extractor``: who the approver is, as for
    :class:`~d2.asgi.ASGIMiddleware` (``(user_id, roles)`` or ``None``, plain or
    async): :func:`~d2.asgi.jwt_extractor`, :func:`~d2.asgi.headers_extractor`
    behind a proxy that sets or strips the headers, or :func:`current_user` when
    the app's own ``ASGIMiddleware`` wraps the mount. It is required: a page that
    approves refunds never guesses who is asking. It must give the user id the
    app's guard gives the same person (the same claim, the same header): the
    requester is refused by comparing the two ids (ignoring case, width and
    invisible characters), so an inbox reading ``email`` in front of an app that
    reads ``sub`` would let approvers decide their own requests.

    ``desk``: where requests are read and decided (default: D2 instance
    ``instance_name`` of this process, its store and the namespace of its policy).
    ``csrf_secret``: the key of the CSRF tokens (default: random per process; give
    the same one to every replica behind a load balancer). ``refresh_seconds``:
    how often the list reloads itself (``None``: never). ``recent_decisions``: how
    many decisions made here are remembered for the list (in this process's
    memory). ``title``: the page's heading. ``max_argument_chars``: how much of a
    call's arguments (characters of indented JSON) a request page shows; a longer
    call is shown cut, with its **Approve** button removed and an approval POST
    refused (409): an approver approves only what they saw whole, with
    ``d2 approvals show`` / ``approve``. The list shows 50 pending requests a
    page (``?page=2``).

    Mount it::

        app.mount("/d2/approvals", inbox_app(user_extractor=users))
    """
    if not callable(user_extractor):
        raise ConfigurationError(
            "inbox_app needs user_extractor=: a function of the ASGI scope returning "
            "(user_id, roles), e.g. d2.asgi.jwt_extractor(...)"
        )
    if isinstance(csrf_secret, str):
        csrf_secret = csrf_secret.encode()
    if csrf_secret is not None and len(csrf_secret) < 32:
        raise ConfigurationError("csrf_secret must be at least 32 bytes of random data")
    if refresh_seconds is not None and refresh_seconds < 1:
        raise ConfigurationError("refresh_seconds must be 1 or more, or None")
    if int(max_argument_chars) < 1024:
        raise ConfigurationError("max_argument_chars must be 1024 or more")
    inbox = _Inbox(
        desk if desk is not None else ApprovalDesk.of_instance(instance_name),
        user_extractor,
        csrf_secret or secrets.token_bytes(32),
        refresh_seconds,
        max(1, int(recent_decisions)),
        title,
        int(max_argument_chars),
    )
    app = Starlette(
        routes=[
            Route("/", inbox.index, methods=["GET"]),
            Route("/requests/{request_id}", inbox.show, methods=["GET"]),
            Route("/requests/{request_id}", inbox.decide, methods=["POST"]),
        ],
        exception_handlers={404: inbox.not_found, 405: inbox.not_found},
    )
    # Starlette answers a URL with a trailing slash by a redirect to an address it
    # builds from the Host header (307, which a browser follows with the form's
    # body): the inbox's own addresses never end in one, so such a URL is a 404.
    app.router.redirect_slashes = False
    return _Headers(app)
