"""The Redis store: budgets and approvals shared by every process of an app.

Needs the ``redis`` package (``pip install "d2-core[redis]"``). Each operation that
reads and writes is one Lua script, so it is atomic on the server; times are the
caller's (``now``, ``expires_at`` in Unix seconds) and are stored next to the
values they bound, so expiry is decided by those stored times, never by the Redis
server's clock. Keys also get a relative ``PEXPIRE`` matching their window so Redis
drops them once they can no longer matter.

Keys (all under ``prefix``, default ``d2:``):

* ``{prefix}count:{key}``: hash ``n`` (calls taken), ``exp`` (window end);
* ``{prefix}approval:{id}``: hash ``request`` (JSON), ``state``, ``by``, ``exp``;
* ``{prefix}approvals:pending``: sorted set of pending request ids by expiry.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from ..approvals import ApprovalRequest
from ..errors import ConfigurationError
from .base import TAKEN, ApprovalState, Counter, Store, StoreUnavailableError

__all__ = ["RedisStore"]

_MAX_TTL_MS = 10 * 365 * 86400 * 1000  # keys never live longer than ten years

# KEYS: the counters, then (with an approval) the approval and the pending index.
# ARGV: now, number of counters, approval id ("" for none), then per counter:
# max, expires_at, ttl in ms. Returns a full counter's 0-based index, -2 or -1.
_TAKE = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local function live(key)
  local found = redis.call('HMGET', key, 'n', 'exp')
  if found[1] and found[2] and tonumber(found[2]) > now then
    return tonumber(found[1])
  end
  return 0
end
for i = 1, n do
  if live(KEYS[i]) >= tonumber(ARGV[3 + (i - 1) * 3 + 1]) then
    return i - 1
  end
end
if ARGV[3] ~= '' then
  local found = redis.call('HMGET', KEYS[n + 1], 'state', 'exp')
  if found[1] ~= 'approved' or not found[2] or tonumber(found[2]) <= now then
    return -2
  end
  redis.call('DEL', KEYS[n + 1])
  redis.call('ZREM', KEYS[n + 2], ARGV[3])
end
for i = 1, n do
  local base = 3 + (i - 1) * 3
  redis.call('HSET', KEYS[i], 'n', live(KEYS[i]) + 1, 'exp', ARGV[base + 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[base + 3])
end
return -1
"""

# KEYS: the approval, the pending index. ARGV: now, request JSON, expires_at, ttl
# in ms, id. Returns {request JSON, state, decided_by or nil}.
_REQUEST = """
local found = redis.call('HMGET', KEYS[1], 'request', 'state', 'by', 'exp')
if found[1] and found[4] and tonumber(found[4]) > tonumber(ARGV[1]) then
  return {found[1], found[2], found[3]}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'request', ARGV[2], 'state', 'pending', 'exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return {ARGV[2], 'pending', false}
"""

# KEYS: the approval, the pending index. ARGV: now, new state, decided by, id.
_DECIDE = """
local found = redis.call('HMGET', KEYS[1], 'state', 'exp')
if found[1] ~= 'pending' or not found[2] or tonumber(found[2]) <= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'by', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""


def _redis() -> Any:
    """The ``redis`` package, or a :class:`ConfigurationError` naming the extra."""
    try:
        import redis
        import redis.asyncio
    except ImportError:
        raise ConfigurationError(
            'the Redis store needs the redis package: pip install "d2-core[redis]" '
            '(or "d2-sdk[redis]")'
        ) from None
    return redis


def _num(value: float) -> str:
    """``value`` as text Lua's ``tonumber`` and Redis scores read back exactly."""
    return repr(float(value))


def _ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds from ``now`` to ``expires_at`` (at least 1, at most ten years)."""
    span = (expires_at - now) * 1000
    if not math.isfinite(span):
        return _MAX_TTL_MS if span > 0 else 1
    return min(max(1, math.ceil(span)), _MAX_TTL_MS)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shown_url(url: str) -> str:
    """``url`` without user, password or query (which may hold a password)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<invalid URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _client_url(client: Any) -> str:
    """A displayable URL for a client built elsewhere."""
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return "redis://<client>"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _state(request_json: Any, state: Any, by: Any) -> ApprovalState:
    return ApprovalState(
        ApprovalRequest.from_json(_text(request_json)),
        _text(state),
        None if by is None else _text(by),
    )


async def _close_with_loop(client: Any, owned: list[Any]) -> Any:
    """Suspended until its event loop shuts its async generators down, then closes
    ``client`` on that loop (so no connection outlives it)."""
    try:
        yield
    finally:
        if client in owned:
            owned.remove(client)
        closer = getattr(client, "aclose", None) or client.close
        await closer()


class RedisStore(Store):
    """Budgets and approvals in Redis, shared by every process that uses the same
    server and ``prefix``.

    Build it with :meth:`from_url` (what ``D2_STORE_URL=redis://...`` does) or pass
    ready clients: ``client`` (a ``redis.Redis``) for the sync methods and
    ``async_client`` (a ``redis.asyncio.Redis``) for the ``*_async`` ones. With
    ``url`` the clients are made here (the async one lazily, on first async use)
    and closed by :meth:`close` / :meth:`aclose`; clients passed in are left open.
    Without an async client the ``*_async`` methods run the sync ones in a worker
    thread. Every Redis failure raises :class:`StoreUnavailableError`.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        url: str | None = None,
        async_client: Any = None,
        prefix: str = "d2:",
        timeout: float = 0.5,
    ) -> None:
        redis = _redis()
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._url = url
        self._lock = threading.Lock()
        self._owned: list[Any] = []
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            OSError,
            asyncio.TimeoutError,
        )
        if client is None and url is not None:
            try:
                client = redis.Redis.from_url(url, **self._client_options(async_=False))
            except (ValueError, TypeError):
                raise self._bad_url(url) from None
            self._owned.append(client)
        if client is None and async_client is None:
            raise ConfigurationError("RedisStore needs a client, an async_client or a url")
        if url is not None:
            self._shown = _shown_url(url)
        else:
            self._shown = _client_url(client if client is not None else async_client)
        self._client = client
        self._async: Any = async_client
        self._per_loop: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._scripts = self._register(client) if client is not None else None
        self._async_scripts = self._register(async_client) if async_client is not None else None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "d2:", timeout: float = 0.5) -> RedisStore:
        """A store on ``url`` (``redis://[:password@]host:port/db``, ``rediss://``
        for TLS, ``unix:///path``), waiting at most ``timeout`` seconds to connect
        or for an answer."""
        return cls(url=url, prefix=prefix, timeout=timeout)

    # -- plumbing ------------------------------------------------------------

    def _client_options(self, *, async_: bool) -> dict[str, Any]:
        redis = self._redis
        # No automatic retry: a script that timed out may have run, and running it
        # again would count a call twice or use an approval up for nothing. A
        # dropped connection is replaced on the next call (health checks on idle
        # ones), so after a restart at most one call is denied budget_unavailable.
        retry_class = redis.asyncio.retry.Retry if async_ else redis.retry.Retry
        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": retry_class(redis.backoff.NoBackoff(), 0),
            "health_check_interval": 5,
        }

    def _bad_url(self, url: str) -> ConfigurationError:
        return ConfigurationError(
            f"D2_STORE_URL / store= {_shown_url(url)!r} is not a valid Redis URL: use "
            "redis://[:password@]host:port/db, rediss://... or unix:///path"
        )

    @staticmethod
    def _register(client: Any) -> dict[str, Any]:
        return {
            "take": client.register_script(_TAKE),
            "request": client.register_script(_REQUEST),
            "decide": client.register_script(_DECIDE),
        }

    def _fail(self, exc: BaseException) -> NoReturn:
        raise StoreUnavailableError(
            f"the Redis store at {self._shown} did not answer ({type(exc).__name__}: {exc}); "
            "check that Redis is running and reachable from this host, and the "
            "address, password and TLS settings in D2_STORE_URL"
        ) from exc

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailableError:
            raise
        except self._errors as exc:
            self._fail(exc)

    def _sync(self) -> tuple[Any, dict[str, Any]]:
        if self._client is None or self._scripts is None:
            raise ConfigurationError(
                "this RedisStore has only an async client: use the *_async methods"
            )
        return self._client, self._scripts

    async def _async_client(self) -> tuple[Any, dict[str, Any]] | None:
        """The async client and its scripts; ``None`` when there is neither (then
        the sync client runs in a thread). A store built from a URL makes one
        client per event loop (an asyncio client cannot outlive its loop: an app
        calling ``asyncio.run`` more than once gets a fresh one each time)."""
        if self._url is None:
            if self._async is None:
                return None
            assert self._async_scripts is not None
            return self._async, self._async_scripts
        import asyncio

        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            with self._lock:
                found = self._per_loop.get(loop)
                if found is None:
                    try:
                        made = self._redis.asyncio.Redis.from_url(
                            self._url, **self._client_options(async_=True)
                        )
                    except (ValueError, TypeError):
                        raise self._bad_url(self._url) from None
                    found = (made, self._register(made))
                    self._per_loop[loop] = found
                    self._owned.append(made)
            # closed with its loop: asyncio.run() finalizes live async generators
            # (loop.shutdown_asyncgens) before it closes the loop
            closer = _close_with_loop(found[0], self._owned)
            await closer.__anext__()
            self._closers[loop] = closer
        return found

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    @property
    def _pending_key(self) -> str:
        return f"{self._prefix}approvals:pending"

    def _take_call(
        self, counters: Sequence[Counter], approval: str | None, now: float
    ) -> tuple[list[str], list[str]]:
        keys = [self._key("count", c.key) for c in counters]
        args = [_num(now), str(len(counters)), approval if approval is not None else ""]
        for c in counters:
            args += [str(int(c.max)), _num(c.expires_at), str(_ttl_ms(c.expires_at, now))]
        if approval is not None:
            keys += [self._key("approval", approval), self._pending_key]
        return keys, args

    def _request_call(self, request: ApprovalRequest, now: float) -> tuple[list[str], list[str]]:
        keys = [self._key("approval", request.id), self._pending_key]
        args = [
            _num(now),
            request.to_json(),
            _num(request.expires_at),
            str(_ttl_ms(request.expires_at, now)),
            request.id,
        ]
        return keys, args

    def _decide_call(
        self, request_id: str, approve: bool, by: str, now: float
    ) -> tuple[list[str], list[str]]:
        keys = [self._key("approval", request_id), self._pending_key]
        args = [_num(now), "approved" if approve else "rejected", by, request_id]
        return keys, args

    @staticmethod
    def _approval_fields() -> tuple[str, ...]:
        return ("request", "state", "by", "exp")

    @staticmethod
    def _read_approval(found: Sequence[Any], now: float) -> ApprovalState | None:
        request, state, by, exp = found
        if request is None or exp is None or not now < float(_text(exp)):
            return None
        return _state(request, state, by)

    @staticmethod
    def _read_pending(found: Sequence[Sequence[Any]], now: float) -> list[ApprovalRequest]:
        requests = []
        for request, state, exp in found:
            if request is None or exp is None or state is None:
                continue
            if _text(state) == "pending" and now < float(_text(exp)):
                requests.append(ApprovalRequest.from_json(_text(request)))
        return sorted(requests, key=lambda r: (r.expires_at, r.id))

    # -- sync ----------------------------------------------------------------

    def take(self, counters: Sequence[Counter], approval: str | None, now: float) -> int:
        """See :meth:`Store.take`; one Lua script, atomic on the server."""
        if not counters and approval is None:
            return TAKEN
        _, scripts = self._sync()
        keys, args = self._take_call(counters, approval, now)
        with self._guard():
            return int(scripts["take"](keys=keys, args=args))

    def request_approval(self, request: ApprovalRequest, now: float) -> ApprovalState:
        """See :meth:`Store.request_approval`."""
        _, scripts = self._sync()
        keys, args = self._request_call(request, now)
        with self._guard():
            found = scripts["request"](keys=keys, args=args)
        return _state(*found)

    def get_approval(self, request_id: str, now: float) -> ApprovalState | None:
        """See :meth:`Store.get_approval`."""
        client, _ = self._sync()
        with self._guard():
            found = client.hmget(self._key("approval", request_id), self._approval_fields())
        return self._read_approval(found, now)

    def decide_approval(self, request_id: str, approve: bool, by: str, now: float) -> bool:
        """See :meth:`Store.decide_approval`."""
        _, scripts = self._sync()
        keys, args = self._decide_call(request_id, approve, by, now)
        with self._guard():
            return int(scripts["decide"](keys=keys, args=args)) == 1

    def pending_approvals(self, now: float) -> list[ApprovalRequest]:
        """See :meth:`Store.pending_approvals`; also drops expired ids from the
        pending index."""
        client, _ = self._sync()
        with self._guard():
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(self._pending_key, "-inf", _num(now))
            pipe.zrangebyscore(self._pending_key, "(" + _num(now), "+inf")
            _, ids = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for request_id in ids:
                pipe.hmget(self._key("approval", _text(request_id)), ("request", "state", "exp"))
            found = pipe.execute() if ids else []
        return self._read_pending(found, now)

    def close(self) -> None:
        """Close the sync client made from the URL (an async one needs
        :meth:`aclose`)."""
        for client in list(self._owned):
            if not isinstance(client, self._redis.asyncio.Redis):
                client.close()
                self._owned.remove(client)

    # -- async ---------------------------------------------------------------

    async def take_async(
        self, counters: Sequence[Counter], approval: str | None, now: float
    ) -> int:
        """Async twin of :meth:`take` (never blocks the event loop)."""
        if not counters and approval is None:
            return TAKEN
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.take, counters, approval, now)
        keys, args = self._take_call(counters, approval, now)
        with self._guard():
            return int(await made[1]["take"](keys=keys, args=args))

    async def request_approval_async(self, request: ApprovalRequest, now: float) -> ApprovalState:
        """Async twin of :meth:`request_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.request_approval, request, now)
        keys, args = self._request_call(request, now)
        with self._guard():
            found = await made[1]["request"](keys=keys, args=args)
        return _state(*found)

    async def get_approval_async(self, request_id: str, now: float) -> ApprovalState | None:
        """Async twin of :meth:`get_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.get_approval, request_id, now)
        with self._guard():
            found = await made[0].hmget(self._key("approval", request_id), self._approval_fields())
        return self._read_approval(found, now)

    async def decide_approval_async(
        self, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """Async twin of :meth:`decide_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.decide_approval, request_id, approve, by, now)
        keys, args = self._decide_call(request_id, approve, by, now)
        with self._guard():
            return int(await made[1]["decide"](keys=keys, args=args)) == 1

    async def pending_approvals_async(self, now: float) -> list[ApprovalRequest]:
        """Async twin of :meth:`pending_approvals`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.pending_approvals, now)
        client = made[0]
        with self._guard():
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(self._pending_key, "-inf", _num(now))
            pipe.zrangebyscore(self._pending_key, "(" + _num(now), "+inf")
            _, ids = await pipe.execute()
            found: list[Any] = []
            if ids:
                pipe = client.pipeline(transaction=False)
                for request_id in ids:
                    pipe.hmget(
                        self._key("approval", _text(request_id)), ("request", "state", "exp")
                    )
                found = await pipe.execute()
        return self._read_pending(found, now)

    async def aclose(self) -> None:
        """Close every client made from the URL (async clients of loops that have
        ended are dropped: their connections closed with their loop)."""
        import asyncio

        current = asyncio.get_running_loop()
        mine = self._per_loop.get(current)
        for client in list(self._owned):
            if isinstance(client, self._redis.asyncio.Redis):
                if mine is not None and client is mine[0]:
                    closer = getattr(client, "aclose", None) or client.close
                    await closer()
            else:
                client.close()
            self._owned.remove(client)
        self._per_loop = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<RedisStore {self._shown} prefix={self._prefix!r}>"
