"""Approval notifications: a JSON event posted to a webhook when an approval request
is opened, approved or rejected, so approvers hear of it without polling.

``configure_rbac_*(approval_webhook=URL)`` (or ``D2_APPROVAL_WEBHOOK``) turns it on;
the event's shape is in ``docs/approvals.md`` ("Notifications") and built by
:func:`~d2.core._webhook_event.approval_event`.

Promises:

* **The guarded call never waits for it.** Opening a request (or deciding one)
  only appends a small tuple to a bounded in-memory queue and sets an event: no
  I/O, no encoding, no lock held beyond that event's own. One daemon thread per
  webhook builds, encodes and posts the events, in order.
* **Bounded memory.** The queue holds :attr:`ApprovalWebhook.capacity` events;
  when it is full the oldest is dropped (a warning the first time). Every event
  not delivered (dropped, refused by the receiver, given up after the retries,
  left at shutdown) is counted in :attr:`ApprovalWebhook.dropped`; the sender logs
  its failures (the first, then every 100th) and the total at shutdown. Nothing
  is retried forever.
* **Retries with exponential backoff** on a network error, a timeout, 408, 429
  and 5xx: :attr:`~ApprovalWebhook.retries` more attempts, waiting
  :attr:`~ApprovalWebhook.backoff` seconds, doubled each time up to
  :attr:`~ApprovalWebhook.max_backoff` (a ``Retry-After`` the receiver sends is
  honoured within that cap). Another 4xx, or a redirect (never followed: the
  body would go elsewhere), drops the event at once. Delivery is at least once:
  a receiver that answers 500 after taking an event gets it again, with the
  same ``event_id``.
* **Flushed at shutdown, bounded in time.** ``shutdown_rbac()`` (and a new
  configure replacing the instance) sends what is queued within
  :attr:`~ApprovalWebhook.flush_timeout` seconds; so does interpreter exit for
  every webhook still sending, within one shared window. An attempt still waiting
  on the receiver then (one that hangs or trickles its answer) is cut: its socket
  is shut down. In an event loop the shutdown does not block the loop: ``await
  shutdown_rbac()`` waits for the flush, and a shutdown left unawaited is still
  flushed at exit.
* **The URL is a secret.** It is never logged, shown in an error or in a repr:
  only :func:`~d2.core._webhook_event.masked_url` (scheme, host, port) is.
* **Fork-safe.** A forked child starts its own sender with an empty queue (the
  parent's queued events are the parent's to send; sent by both they would
  arrive twice).

Why the standard library, in d2-core: d2-core has no required dependency (httpx
lives in d2-cloud), and a local-mode app that wants one POST per approval should
not need an extra for it. The sender is already a thread of its own, so the
blocking ``urllib.request`` costs nothing the app can see; it verifies TLS
certificates with the default context, honours the ``HTTPS_PROXY`` family of
variables like httpx does, and works in sync and async apps, in local and cloud
mode alike. This module is imported only when a webhook is configured, so an app
without one never loads ``urllib.request``.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._webhook_event import approval_event, encode_event, masked_url, retry_after_seconds
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .approval_data import ApprovalRequest

__all__ = [
    "ApprovalWebhook",
    "approval_event",
    "configured_webhook",
    "masked_url",
    "validate_url",
]

_RETRIED = frozenset({408, 425, 429, 500, 502, 503, 504})
# webhooks whose sender runs (open, or flushing after close): waited for at exit;
# the open ones restarted after fork
_live: list[ApprovalWebhook] = []


def _log() -> Any:
    import logging  # the sender's and configure's, never the guarded call's

    return logging.getLogger("d2")


def validate_url(url: object, what: str) -> str:
    """``url`` if it is an absolute ``http``/``https`` URL with a host and no
    whitespace or control character; else :class:`ConfigurationError` naming
    ``what`` and showing the URL masked (it may hold a secret)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"{what} must be an http(s) URL (a string), got {type(url).__name__}"
        )
    url = url.strip()
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        problem = f"it cannot be read ({type(exc).__name__})"
    else:
        if parts.scheme not in ("http", "https"):
            problem = "its scheme must be http or https"
        elif not parts.hostname:
            problem = "it has no host"
        elif any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
            problem = "it holds whitespace or a control character (percent-encode it)"
        elif not url.isascii():
            problem = (
                "it holds characters beyond ASCII (percent-encode them; a host in its "
                "IDNA form, xn--...)"
            )
    if problem is not None:
        raise ConfigurationError(f"{what} {masked_url(url)} is not usable: {problem}")
    return url


def configured_webhook(
    url: str | None = None, arguments: bool | None = None, inbox_url: str | None = None
) -> ApprovalWebhook | None:
    """The webhook these settings name, each ``None`` read from the environment
    (``D2_APPROVAL_WEBHOOK``, ``D2_APPROVAL_WEBHOOK_ARGUMENTS``,
    ``D2_APPROVAL_INBOX_URL``); ``None`` when no URL is set. What
    ``configure_rbac_*`` uses, and what a process deciding requests without a
    configured instance (``d2 approvals``) uses to post its decisions."""
    if url is None:
        url = os.environ.get("D2_APPROVAL_WEBHOOK", "").strip() or None
        if url is None:
            return None
    if arguments is None:
        arguments = os.environ.get("D2_APPROVAL_WEBHOOK_ARGUMENTS", "").strip().lower() in {
            "1",
            "true",
            "yes",
            "on",
        }
    if inbox_url is None:
        inbox_url = os.environ.get("D2_APPROVAL_INBOX_URL", "").strip() or None
    return ApprovalWebhook(url, arguments=bool(arguments), inbox_url=inbox_url)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")


class ApprovalWebhook:
    """The sender of one instance's approval events (see the module's promises).

    ``url``: where to POST (validated; shown masked). ``arguments``: include the
    approver's view of the call's arguments. ``inbox_url``: the approvals inbox;
    each event links ``<inbox_url>/<request id>``. The other settings default to
    the class attributes of the same name.
    """

    capacity = 1000
    """Events queued at most; the oldest is dropped beyond."""
    timeout = 5.0
    """Seconds each attempt may wait for the connection or for each read."""
    retries = 5
    """Attempts after the first, for a failure worth retrying."""
    backoff = 0.5
    """Seconds before the first retry; doubled for each next one."""
    max_backoff = 30.0
    """The longest wait between two attempts (``Retry-After`` included)."""
    flush_timeout = 5.0
    """Seconds a shutdown (or interpreter exit) spends delivering what is queued."""

    def __init__(
        self,
        url: str,
        *,
        arguments: bool = False,
        inbox_url: str | None = None,
        capacity: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        flush_timeout: float | None = None,
    ) -> None:
        self._url = validate_url(url, "approval_webhook")
        self.shown_url = masked_url(self._url)
        self._target, self._auth = _without_credentials(self._url)
        self._secrets = _Secrets(self._url, self._target)
        self.arguments = bool(arguments)
        self.inbox_url = (
            validate_url(inbox_url, "approval_inbox_url") if inbox_url is not None else None
        )
        self.capacity = int(capacity if capacity is not None else type(self).capacity)
        if self.capacity < 1:
            raise ConfigurationError(f"capacity must be at least 1, got {self.capacity}")
        self.timeout = float(timeout if timeout is not None else type(self).timeout)
        self.retries = int(retries if retries is not None else type(self).retries)
        self.backoff = float(backoff if backoff is not None else type(self).backoff)
        self.max_backoff = float(max_backoff if max_backoff is not None else type(self).max_backoff)
        self.flush_timeout = float(
            flush_timeout if flush_timeout is not None else type(self).flush_timeout
        )
        host = urlsplit(self._url).hostname or ""
        if urlsplit(self._url).scheme == "http" and not _loopback(host):
            _log().warning(
                "d2: approval_webhook %s is plain http: the URL (its secret) and every "
                "event travel unencrypted; use https",
                self.shown_url,
            )
        self.sent = 0  # events the receiver took
        self.dropped = 0  # events not delivered, for any reason
        self.attempts = 0  # POSTs made, retries included
        self._queue: deque[tuple[Any, ...]] = deque()
        self._busy = False  # the sender holds an event taken off the queue
        self._warned_full = False
        self._start()

    def __repr__(self) -> str:
        return (
            f"<ApprovalWebhook {self.shown_url} queued={len(self._queue)} sent={self.sent} "
            f"dropped={self.dropped}>"
        )

    # -- the caller's side: append only -------------------------------------------
    def opened(self, request: ApprovalRequest, app: str | None) -> None:
        """Queue the ``approval.requested`` event of a request just opened (called
        by the evaluator; never blocks, never raises)."""
        self._push(("requested", request, app, None, time.time()))

    def decided(self, request: ApprovalRequest, approved: bool, by: str, app: str | None) -> None:
        """Queue the ``approval.approved`` / ``approval.rejected`` event of a
        decision by ``by`` (called by ``approve`` / ``reject``; never blocks)."""
        self._push(("approved" if approved else "rejected", request, app, by, time.time()))

    def _push(self, item: tuple[Any, ...]) -> None:
        # Counted here, logged by the sender (or once, below): a log handler may do
        # I/O, which the call's thread must not wait for at every drop.
        queue = self._queue
        if self._stop.is_set():  # closed between the evaluator's read and now
            self.dropped += 1
            return
        if len(queue) >= self.capacity:
            try:
                queue.popleft()
            except IndexError:  # the sender took it meanwhile
                pass
            else:
                self.dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    _log().warning(
                        "d2: approval webhook %s: its queue is full (%d events), the "
                        "receiver is slower than requests are opened or down; dropping "
                        "the oldest (counted, reported at shutdown)",
                        self.shown_url,
                        self.capacity,
                    )
        queue.append(item)
        wake = self._wake
        if not wake.is_set():
            wake.set()

    # -- the sender's side -----------------------------------------------------------
    def _start(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._opener: Any = None
        self._connection: http.client.HTTPConnection | None = None  # the attempt in flight
        thread = threading.Thread(target=self._run, name="d2-approval-webhook", daemon=True)
        self._thread = thread
        _live.append(self)
        thread.start()

    def _run(self) -> None:
        try:
            self._send_until_closed()
        finally:
            try:
                _live.remove(self)
            except ValueError:
                pass

    def _send_until_closed(self) -> None:
        queue, wake, stop = self._queue, self._wake, self._stop
        while True:
            wake.clear()
            if queue:
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    left = len(queue)
                    queue.clear()
                    self._lost(left, "the shutdown's flush time ran out")
                    return
                try:
                    item = queue.popleft()
                except IndexError:
                    continue
                self._busy = True
                try:
                    self._deliver(item)
                except Exception as exc:  # never let the sender die on a surprise
                    self._lost(1, f"unexpected {type(exc).__name__}")
                finally:
                    self._busy = False
                continue
            if stop.is_set():
                return
            wake.wait()

    def _deliver(self, item: tuple[Any, ...]) -> None:
        kind, request, app, by, occurred = item
        import secrets

        event = approval_event(
            kind,
            request,
            app=app,
            event_id=secrets.token_hex(16),
            occurred_at=occurred,
            decided_by=by,
            inbox_url=self.inbox_url,
            arguments=self.arguments,
        )
        body = encode_event(event)
        attempt = 0
        while True:
            status, wait, detail = self._post(body)
            if status is not None and 200 <= status < 300:
                self.sent += 1
                return
            retried = status is None or status in _RETRIED
            if not retried:
                self._lost(1, detail)
                return
            if attempt >= self.retries:
                self._lost(1, f"{detail}, after {attempt + 1} attempts")
                return
            delay = min(self.backoff * 2**attempt, self.max_backoff)
            if wait is not None:
                delay = min(max(delay, wait), self.max_backoff)
            attempt += 1
            if not self._pause(delay):
                self._lost(1, f"{detail}; the shutdown's flush time ran out before a retry")
                return

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds before a retry; False when a shutdown began whose
        flush time ends first."""
        end = time.monotonic() + delay
        if not self._stop.wait(delay):
            return True
        deadline = self._deadline
        if deadline is None or end > deadline:
            return False
        time.sleep(max(end - time.monotonic(), 0.0))
        return True

    def _post(self, body: bytes) -> tuple[int | None, float | None, str]:
        """One POST: ``(status or None for a network failure, Retry-After seconds,
        what happened, for the log)``. The URL never appears in what it returns."""
        timeout = self.timeout
        deadline = self._deadline
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                return None, None, "the shutdown's flush time ran out"
        if self._opener is None:
            self._opener = urllib.request.build_opener(
                _NoRedirect, _Tracked(self), _TrackedTLS(self)
            )
        headers = {"Content-Type": "application/json", "User-Agent": _user_agent()}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(self._target, data=body, method="POST", headers=headers)
        self.attempts += 1
        try:
            return self._attempt(request, timeout)
        finally:
            self._connection = None

    def _attempt(
        self, request: urllib.request.Request, timeout: float
    ) -> tuple[int | None, float | None, str]:
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read(65536)
                return int(response.status), None, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            try:
                wait = retry_after_seconds(exc.headers.get("Retry-After"), time.time())
                said = _excerpt(exc.read(512), self._secrets)
            except Exception:
                wait, said = None, ""
            finally:
                exc.close()
            detail = f"HTTP {exc.code}{said}"
            if 300 <= exc.code < 400:
                detail += " (redirects are not followed: configure the final URL)"
            return exc.code, wait, detail
        except Exception as exc:  # URLError, timeouts, resets: worth a retry
            reason = getattr(exc, "reason", None)
            text = f"{type(exc).__name__}: {reason if reason is not None else exc}"
            return None, None, self._scrub(text)

    def _scrub(self, text: str) -> str:
        """``text`` without the URL or any part of it that may be secret (see
        :func:`_masked`), then cut to a bounded length."""
        return _masked(text, self._secrets)[:300]

    def _lost(self, count: int, why: str) -> None:
        before = self.dropped
        self.dropped += count
        if before == 0 or before // 100 != self.dropped // 100:
            _log().warning(
                "d2: approval webhook %s: %d notification(s) not delivered (%s); %d so far",
                self.shown_url,
                count,
                self._scrub(why),
                self.dropped,
            )

    # -- shutdown ---------------------------------------------------------------------
    def close(self, timeout: float | None = None, *, wait: bool = True) -> None:
        """Stop taking events and deliver what is queued within ``timeout``
        seconds (default :attr:`flush_timeout`); ``wait=False``: return at once,
        the sender goes on delivering within that time (:meth:`wait_closed`)."""
        if self._deadline is None:
            limit = self.flush_timeout if timeout is None else timeout
            self._deadline = time.monotonic() + max(limit, 0.0)
        self._stop.set()
        self._wake.set()
        if wait:
            self.wait_closed()

    def wait_closed(self) -> None:
        """Wait (bounded by the flush time) for the sender to finish."""
        thread = self._thread
        if thread is threading.current_thread() or not thread.is_alive():
            return
        deadline = self._deadline
        left = 0.0 if deadline is None else deadline - time.monotonic()
        thread.join(max(left, 0.0))
        if thread.is_alive():  # an attempt still waiting on the receiver: cut it
            self._cut()
            thread.join(0.5)
        if thread.is_alive():
            pending = len(self._queue) + (1 if self._busy else 0)
            _log().warning(
                "d2: approval webhook %s: %d notification(s) still unsent when the "
                "shutdown's flush time ran out",
                self.shown_url,
                pending,
            )
        elif self.dropped:
            _log().warning(
                "d2: approval webhook %s closed: %d notification(s) sent, %d not delivered",
                self.shown_url,
                self.sent,
                self.dropped,
            )

    def _cut(self) -> None:
        """End the attempt in flight (a receiver that hangs or trickles past the
        shutdown's flush time): its socket is shut down, which wakes the sender."""
        connection = self._connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was delivered or dropped (at most
        ``timeout`` seconds); True when nothing is left. For tests and for apps
        that want to know."""
        end = time.monotonic() + timeout
        while self._queue or self._busy:
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def _after_fork(self) -> None:
        # the parent's queued events are the parent's to send (also those of a
        # webhook it was closing: nothing is left for the child to do with it)
        if self in _live:
            _live.remove(self)
        if self._stop.is_set():
            return
        self._queue = deque()
        self._busy = False
        self.sent = self.dropped = self.attempts = 0
        self._warned_full = False
        self._start()


def _without_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its ``user:password@`` part, and that part as an HTTP Basic
    ``Authorization`` value (``urllib`` would take it for a part of the host)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    import base64
    from urllib.parse import unquote

    host = parts.netloc.rpartition("@")[2]
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return parts._replace(netloc=host).geturl(), f"Basic {token}"


def _user_agent() -> str:
    from ._version import __version__

    return f"d2-sdk/{__version__} approval-webhook"


_EXCERPT = 80  # characters of a receiver's error body in the log
_GRAM = 6  # a run of this many characters of the URL's secret parts is masked
_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=~.%]{24,}")  # anything that looks like a token


class _Secrets:
    """What :func:`_masked` removes: the URL's secret parts in every spelling a
    receiver may echo them (as sent, percent-decoded, HTML- or JSON-escaped), and
    every run of :data:`_GRAM` characters of them, compared case-insensitively."""

    __slots__ = ("grams", "whole")

    def __init__(self, url: str, target: str) -> None:
        import html
        from urllib.parse import quote, unquote, unquote_plus

        parts = urlsplit(url)
        raw = [url, target, parts.path, parts.query, parts.fragment]
        raw += [parts.username or "", parts.password or ""]
        spellings: set[str] = set()
        for value in raw:
            for form in (value, unquote(value), unquote_plus(value), quote(unquote(value))):
                spellings |= {form, html.escape(form), form.replace("/", "\\/")}
        self.whole = sorted((v.lower() for v in spellings if len(v) > 1), key=len, reverse=True)
        self.grams = frozenset(
            value[i : i + _GRAM] for value in self.whole for i in range(len(value) - _GRAM + 1)
        )


def _masked(text: str, secrets: _Secrets) -> str:
    """``text`` with every spelling of the URL's secret parts, every run of
    :data:`_GRAM` of their characters, and every run that looks like a token
    (24 or more letters, digits and ``-_+/=~.%``) replaced by ``***``."""
    lower = text.lower()
    hidden = bytearray(len(text))
    for secret in secrets.whole:
        start = lower.find(secret)
        while start >= 0:
            hidden[start : start + len(secret)] = b"\x01" * len(secret)
            start = lower.find(secret, start + 1)
    for i in range(len(lower) - _GRAM + 1):
        if lower[i : i + _GRAM] in secrets.grams:
            hidden[i : i + _GRAM] = b"\x01" * _GRAM
    for found in _TOKEN.finditer(text):
        hidden[found.start() : found.end()] = b"\x01" * (found.end() - found.start())
    if not any(hidden):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append("***")
    return "".join(out)


def _excerpt(data: bytes, secrets: _Secrets) -> str:
    """A receiver's error body as the log shows it: printable, every part of the
    URL masked (many receivers echo the path of a 404, some decoded or escaped),
    and only then cut to :data:`_EXCERPT` characters, so that a cut never leaves a
    piece of the secret that no longer matches."""
    text = data.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = " ".join(_masked(text, secrets).split())
    if not text:
        return ""
    if len(text) > _EXCERPT:
        text = text[: _EXCERPT - 1] + "\u2026"
    return f": {text!r}"


def _tracking(owner: ApprovalWebhook, cls: type[http.client.HTTPConnection]) -> Any:
    """A factory of ``cls`` connections that keeps the one in flight on
    ``owner``, so a shutdown can cut an attempt its flush time cannot wait for."""

    def make(host: str, **options: Any) -> http.client.HTTPConnection:
        connection = cls(host, **options)
        owner._connection = connection
        return connection

    return make


class _Tracked(urllib.request.HTTPHandler):
    """Opens ``http`` connections as urllib does, through :func:`_tracking`."""

    def __init__(self, owner: ApprovalWebhook) -> None:
        super().__init__()
        self.owner = owner

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_tracking(self.owner, http.client.HTTPConnection), req)


class _TrackedTLS(urllib.request.HTTPSHandler):
    """Opens ``https`` connections as urllib does (certificates verified by the
    default context), through :func:`_tracking`."""

    def __init__(self, owner: ApprovalWebhook) -> None:
        super().__init__()
        self.owner = owner

    def https_open(self, req: urllib.request.Request) -> Any:
        make = _tracking(self.owner, http.client.HTTPSConnection)
        return self.do_open(make, req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the event would go somewhere the app did not
    configure (the 3xx is reported and the event dropped)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _close_all() -> None:
    """At interpreter exit: flush every webhook still sending (open, or closed
    without waiting on an event loop), within one shared window."""
    live = list(_live)
    for hook in live:
        hook.close(wait=False)
    for hook in live:
        hook.wait_closed()


def _after_fork_in_child() -> None:
    for hook in list(_live):
        hook._after_fork()


import atexit  # noqa: E402 - registration belongs with the functions it registers

atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
