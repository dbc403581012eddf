"""Usage events: recorded without blocking a tool call, shipped in the background.

A guarded call only appends to a bounded deque (O(1), no lock, no I/O); when it is
full the oldest event is dropped and counted. The shipper packs events into chunks
of at most 32 KiB of JSON body, honours 429 ``Retry-After`` by sending the same
chunk again (nothing is lost for a 429), splits a chunk on 413, and flushes at
shutdown. Never sent in local mode or when ``D2_TELEMETRY`` is ``off``/``metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from d2.core.context import UserContext

from .client import ApiError, ControlPlane

__all__ = ["MAX_CHUNK", "UsageEvents", "usage_enabled"]

log = logging.getLogger("d2.cloud")
MAX_CHUNK = 32 * 1024
_ENVELOPE = len(b'{"events":[]}')


def usage_enabled() -> bool:
    """``D2_TELEMETRY`` is ``all`` (the default) or ``usage``."""
    mode = os.environ.get("D2_TELEMETRY", "all").strip().lower() or "all"
    return mode in ("all", "usage")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class UsageEvents:
    """The buffer and its shipper. ``observe`` is installed as the evaluator's
    observer; ``record`` takes lifecycle events."""

    def __init__(
        self,
        api: ControlPlane,
        *,
        capacity: int = 10_000,
        interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        hash_user_ids: bool | None = None,
    ) -> None:
        self.api = api
        self.buffer: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.interval = interval
        self.clock = clock
        self.dropped = 0
        self.sent = 0
        self.max_events = 1_000  # per request; the control plane's quota when known
        self._held: list[bytes] = []  # encoded events the server could not take yet
        self._warned = False
        if hash_user_ids is None:
            flag = os.environ.get("D2_USER_ID_HASH", "").strip().lower()
            hash_user_ids = flag in ("1", "true", "yes", "on")
        salt = os.environ.get("D2_USER_ID_SALT", "")
        self._salt = salt.encode() if salt else os.urandom(16)
        self.hash_user_ids = hash_user_ids
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # -- recording (any thread, never blocks) -------------------------------------
    def _drop(self, n: int) -> None:
        self.dropped += n
        from d2.core.telemetry import get_metrics

        metrics = get_metrics()
        if metrics is not None:
            metrics.events_dropped.add(n)

    def _push(self, event: dict[str, Any]) -> None:
        buffer = self.buffer
        if len(buffer) == buffer.maxlen:
            self._drop(1)
            if not self._warned:
                self._warned = True
                log.warning("d2: usage event buffer full; dropping the oldest events")
        buffer.append(event)

    def user(self, user_id: str | None) -> str | None:
        """The user id as sent: as given, or a salted hash with D2_USER_ID_HASH=1."""
        if user_id is None or not self.hash_user_ids:
            return user_id
        data = user_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._salt, data, hashlib.sha256).hexdigest()[:32]

    def observe(
        self, tool_id: str, ctx: UserContext, reason: str | None, decision: str = "allowed"
    ) -> None:
        """Evaluator observer: one ``authz_decision`` event per decision
        (``allowed``, ``denied`` or ``would_deny``; budget and approval denials carry
        their reason)."""
        self._push(
            {
                "event_type": "authz_decision",
                "payload": {
                    "tool_id": tool_id,
                    "user_id": self.user(ctx.user_id),
                    "decision": decision if reason is not None else "allowed",
                    "reason": reason,
                },
                "occurred_at": _iso(self.clock()),
            }
        )

    def record(self, event_type: str, **payload: Any) -> None:
        """A lifecycle event (``policy_loaded``, ``policy_revoked``, ...)."""
        self._push(
            {"event_type": event_type, "payload": payload, "occurred_at": _iso(self.clock())}
        )

    # -- shipping (the runtime's event loop) --------------------------------------
    def renew_after_fork(self) -> None:
        """In a forked child, before :meth:`start` on the child's loop: forget the
        parent's shipper (its task was on a loop that does not run here) and the
        events buffered before the fork (the parent's to send; sent by both, they
        would be counted twice)."""
        self._task = None
        self._wake = None
        self.buffer.clear()
        self._held = []
        self.dropped = 0
        self.sent = 0
        self._warned = False

    def start(self) -> None:
        """Start the background shipper on the running loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="d2-usage")

    async def _run(self) -> None:
        assert self._wake is not None
        pid = os.getpid()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except asyncio.TimeoutError:
                pass
            if os.getpid() != pid:  # a copy on a loop a forked child ran on: not ours
                return
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let telemetry die or reach the app
                log.warning("d2: shipping usage events failed: %s", exc)

    def _take_chunk(self) -> list[bytes]:
        """Up to 32 KiB (and ``max_events``) of encoded events: held-back ones first."""
        chunk: list[bytes] = []
        size = _ENVELOPE
        while self._held or self.buffer:
            if self._held:
                encoded = self._held[0]
            else:
                encoded = json.dumps(self.buffer[0], separators=(",", ":"), default=str).encode()
                if len(encoded) + _ENVELOPE > MAX_CHUNK:  # one event too large to ever send
                    self.buffer.popleft()
                    self._drop(1)
                    continue
            if chunk and (size + len(encoded) + 1 > MAX_CHUNK or len(chunk) >= self.max_events):
                break
            chunk.append(encoded)
            size += len(encoded) + 1
            if self._held:
                self._held.pop(0)
            else:
                self.buffer.popleft()
        return chunk

    async def flush(self, deadline: float | None = None) -> None:
        """Send everything buffered now (until ``deadline``, a monotonic time). A
        chunk the server cannot take now (5xx, network) is held back for the next
        flush; a 429 is waited out and the same chunk sent again."""
        while self._held or self.buffer:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if not await self._send(self._take_chunk(), deadline):
                return

    async def _send(self, chunk: list[bytes], deadline: float | None) -> bool:
        """Send ``chunk``; False when the server is failing (the rest is held back)."""
        pending = [chunk]
        failures = 0
        while pending:
            part = pending.pop()
            if not part:
                continue
            body = b'{"events":[' + b",".join(part) + b"]}"
            try:
                await self.api.ingest(body)
                self.sent += len(part)
                continue
            except ApiError as exc:
                if exc.status == 413 and len(part) > 1:
                    half = len(part) // 2
                    pending += [part[half:], part[:half]]
                    continue
                if exc.status == 413:
                    self._drop(1)
                    continue
                if exc.status == 429:  # never dropped for a 429: wait, send it again
                    wait = exc.retry_after if exc.retry_after is not None else 1.0
                elif exc.status == 0 or exc.status >= 500:
                    failures += 1
                    if failures > 2:  # the server is down: keep it for the next flush
                        held = [e for p in (part, *pending) for e in p]
                        self._held[:0] = held
                        self._trim_held()
                        return False
                    wait = min(2.0**failures, 30.0)
                else:  # 4xx: the server will never take these
                    self._drop(len(part))
                    log.warning("d2: dropping %d usage events: %s", len(part), exc)
                    continue
                if deadline is not None and time.monotonic() + wait > deadline:
                    self._drop(len(part))  # shutting down: cannot wait that long
                    continue
                pending.append(part)  # the same chunk again, after the wait
                await asyncio.sleep(wait)
        return True

    def _trim_held(self) -> None:
        # held-back events count against the buffer's capacity: drop the oldest
        excess = len(self._held) + len(self.buffer) - (self.buffer.maxlen or 0)
        if excess > 0:
            del self._held[:excess]
            self._drop(excess)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the shipper and flush what is buffered (bounded by ``timeout``)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        try:  # bounded even against a server that trickles its answer
            await asyncio.wait_for(self.flush(deadline=time.monotonic() + timeout), timeout)
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("d2: final flush of usage events failed: %s", exc or "timed out")
        if self.dropped:
            log.warning("d2: %d usage events were dropped in total", self.dropped)
