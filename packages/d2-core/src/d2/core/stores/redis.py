"""The Redis store: budgets and approvals shared by every process of an app.

Needs the ``redis`` package (``pip install "d2-core[redis]"``). Each operation that
reads and writes is one Lua script, so it is atomic on the server; times are the
caller's (``now``, ``expires_at`` in Unix seconds) and are stored next to the
values they bound, so expiry is decided by those stored times, never by the Redis
server's clock. Keys also get a relative ``PEXPIRE`` matching their window so Redis
drops them once they can no longer matter.

Keys (all under ``prefix``, default ``d2:``, then the app's namespace,
percent-encoded, and a colon):

* ``{prefix}{app}:count:{key}``: hash ``n`` (calls taken), ``exp`` (window end);
* ``{prefix}{app}:approval:{id}``: hash ``request`` (JSON), ``state``, ``by``,
  ``exp``, ``call`` (the call digest) and ``s:{holder}`` (snapshots; read by id
  with ``read_approval``);
* ``{prefix}{app}:call:{digest}``: the id of the live request of that call;
* ``{prefix}{app}:pending``: sorted set of pending request ids by expiry; the
  scripts that add or remove an id also drop the expired ones, and the key
  expires with the last request it holds.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

from ..approval_data import ApprovalRequest
from ..errors import ConfigurationError
from .base import TAKEN, ApprovalKey, ApprovalState, Counter, Store, StoreUnavailableError

__all__ = ["RedisStore"]

_MAX_TTL_MS = 10 * 365 * 86400 * 1000  # keys never live longer than ten years

# KEYS: the counters, then (with an approval) the request, the call and the pending
# index. ARGV: now, number of counters, "1" with an approval ("" without), then per
# counter: max, expires_at, ttl in ms; then the call digest and the request id.
# Returns a full counter's 0-based index, -2 (approval missing) or -1 (taken).
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
  local found = redis.call('HMGET', KEYS[n + 1], 'state', 'exp', 'call')
  if found[1] ~= 'approved' or not found[2] or tonumber(found[2]) <= now
      or found[3] ~= ARGV[4 + n * 3] then
    return -2
  end
  if redis.call('GET', KEYS[n + 2]) ~= ARGV[5 + n * 3] then
    return -2
  end
  redis.call('DEL', KEYS[n + 1])
  redis.call('DEL', KEYS[n + 2])
  redis.call('ZREM', KEYS[n + 3], ARGV[5 + n * 3])
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 3], '-inf', ARGV[1])
end
for i = 1, n do
  local base = 3 + (i - 1) * 3
  redis.call('HSET', KEYS[i], 'n', live(KEYS[i]) + 1, 'exp', ARGV[base + 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[base + 3])
end
return -1
"""

# KEYS: the call. ARGV: now, the prefix of request keys, the call digest.
# Returns false, or {request JSON, state, decided by or '', holder, snapshot, ...}.
_FIND = """
local id = redis.call('GET', KEYS[1])
if not id then
  return false
end
local flat = redis.call('HGETALL', ARGV[2] .. id)
local fields = {}
local snapshots = {}
for i = 1, #flat, 2 do
  local name = flat[i]
  if string.sub(name, 1, 2) == 's:' then
    table.insert(snapshots, string.sub(name, 3))
    table.insert(snapshots, flat[i + 1])
  else
    fields[name] = flat[i + 1]
  end
end
if not fields['request'] or not fields['exp'] or tonumber(fields['exp']) <= tonumber(ARGV[1])
    or fields['call'] ~= ARGV[3] then
  return false
end
local out = {fields['request'], fields['state'], fields['by'] or ''}
for i = 1, #snapshots do
  table.insert(out, snapshots[i])
end
return out
"""

# KEYS: the call, the pending index. ARGV: now, the prefix of request keys, the new
# id, the request JSON, expires_at, ttl in ms, holder, snapshot, call digest, then
# (holder, sha1) pairs of snapshots to replace. Returns {request JSON, state, by or ''}.
_REQUEST = """
local now = tonumber(ARGV[1])
local id = redis.call('GET', KEYS[1])
if id then
  local key = ARGV[2] .. id
  local found = redis.call('HMGET', key, 'request', 'state', 'by', 'exp', 'call')
  if found[1] and found[4] and tonumber(found[4]) > now and found[5] == ARGV[9] then
    if found[2] == 'rejected' then
      redis.call('DEL', key)
      redis.call('DEL', KEYS[1])
      return {found[1], found[2], found[3] or ''}
    end
    for i = 10, #ARGV - 1, 2 do
      local old = redis.call('HGET', key, 's:' .. ARGV[i])
      if old and redis.sha1hex(old) == ARGV[i + 1] then
        redis.call('HDEL', key, 's:' .. ARGV[i])
      end
    end
    redis.call('HSET', key, 's:' .. ARGV[7], ARGV[8])
    return {found[1], found[2], found[3] or ''}
  end
end
local key = ARGV[2] .. ARGV[3]
redis.call('DEL', key)
redis.call('HSET', key, 'request', ARGV[4], 'state', 'pending', 'exp', ARGV[5],
  'call', ARGV[9], 's:' .. ARGV[7], ARGV[8])
redis.call('PEXPIRE', key, ARGV[6])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
local left = redis.call('PTTL', KEYS[2])
if left < tonumber(ARGV[6]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return {ARGV[4], 'pending', ''}
"""

# KEYS: per held request, its key and its call's key. ARGV: now, holder, snapshot,
# then per held request its id and its call digest. Returns 1 (saved) or 0 (not the
# live request of its call any more) per request.
_SAVE = """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local key = KEYS[i * 2 - 1]
  local found = redis.call('HMGET', key, 'state', 'exp', 'call')
  if found[1] and found[1] ~= 'rejected' and found[2] and tonumber(found[2]) > now
      and found[3] == ARGV[3 + i * 2] and redis.call('GET', KEYS[i * 2]) == ARGV[2 + i * 2] then
    redis.call('HSET', key, 's:' .. ARGV[2], ARGV[3])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: the request, the pending index. ARGV: now, new state, decided by, id.
_DECIDE = """
local found = redis.call('HMGET', KEYS[1], 'state', 'exp')
if found[1] ~= 'pending' or not found[2] or tonumber(found[2]) <= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'by', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
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


def _state(found: Sequence[Any]) -> ApprovalState:
    """An ApprovalState from a script's answer: request JSON, state, decided by
    (``''`` for nobody), then holder and snapshot pairs."""
    request_json, state, by = found[0], found[1], found[2]
    by_text = None if by is None else _text(by)
    rest = [_text(v) for v in found[3:]]
    return ApprovalState(
        ApprovalRequest.from_json(_text(request_json)),
        _text(state),
        by_text or None,
        tuple(zip(rest[0::2], rest[1::2], strict=True)),
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
            "find": client.register_script(_FIND),
            "request": client.register_script(_REQUEST),
            "save": client.register_script(_SAVE),
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

    def _base(self, namespace: str) -> str:
        """The key prefix of one app: ``{prefix}{namespace, percent-encoded}:``."""
        if not namespace:
            raise StoreUnavailableError(
                "the Redis store needs the app's namespace (the policy's metadata.name): "
                "give the policy a metadata.name"
            )
        return f"{self._prefix}{quote(namespace, safe='')}:"

    def _take_call(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> tuple[list[str], list[str]]:
        base = self._base(namespace)
        keys = [f"{base}count:{c.key}" for c in counters]
        args = [_num(now), str(len(counters)), "1" if approval is not None else ""]
        for c in counters:
            args += [str(int(c.max)), _num(c.expires_at), str(_ttl_ms(c.expires_at, now))]
        if approval is not None:
            keys += [
                f"{base}approval:{approval.request_id}",
                f"{base}call:{approval.call}",
                f"{base}pending",
            ]
            args += [approval.call, approval.request_id]
        return keys, args

    def _find_call(self, namespace: str, call: str, now: float) -> tuple[list[str], list[str]]:
        base = self._base(namespace)
        return [f"{base}call:{call}"], [_num(now), f"{base}approval:", call]

    def _request_call(
        self,
        namespace: str,
        request: ApprovalRequest,
        call: str,
        holder: str,
        snapshot: str,
        replaces: Sequence[tuple[str, str]],
        now: float,
    ) -> tuple[list[str], list[str]]:
        base = self._base(namespace)
        keys = [f"{base}call:{call}", f"{base}pending"]
        args = [
            _num(now),
            f"{base}approval:",
            request.id,
            request.to_json(),
            _num(request.expires_at),
            str(_ttl_ms(request.expires_at, now)),
            holder,
            snapshot,
            call,
        ]
        for other, digest in replaces:
            args += [other, digest]
        return keys, args

    def _save_call(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> tuple[list[str], list[str]]:
        base = self._base(namespace)
        keys: list[str] = []
        args = [_num(now), holder, snapshot]
        for key in held:
            keys += [f"{base}approval:{key.request_id}", f"{base}call:{key.call}"]
            args += [key.request_id, key.call]
        return keys, args

    def _decide_call(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> tuple[list[str], list[str]]:
        base = self._base(namespace)
        keys = [f"{base}approval:{request_id}", f"{base}pending"]
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
        return _state((request, state, by))

    @staticmethod
    def _read_whole(found: Any, request_id: str, now: float) -> ApprovalState | None:
        """A request's hash (``HGETALL``) as an ApprovalState with its snapshots;
        ``None`` when it is missing or expired."""
        fields = {_text(name): value for name, value in (found or {}).items()}
        request, state, exp = fields.get("request"), fields.get("state"), fields.get("exp")
        if request is None or state is None or exp is None or not now < float(_text(exp)):
            return None
        by = fields.get("by")
        snapshots = sorted(
            (name[2:], _text(value)) for name, value in fields.items() if name.startswith("s:")
        )
        read = ApprovalState(
            ApprovalRequest.from_json(_text(request)),
            _text(state),
            _text(by) or None if by is not None else None,
            tuple(snapshots),
        )
        if read.request.id != request_id:
            raise ValueError(f"the approval stored under {request_id[:12]} names another id")
        return read

    @staticmethod
    def _read_found(found: Any) -> ApprovalState | None:
        return _state(found) if found else None

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

    def _script(self, name: str, keys: list[str], args: list[str]) -> Any:
        _, scripts = self._sync()
        with self._guard():
            return scripts[name](keys=keys, args=args)

    def take(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        """See :meth:`Store.take`; one Lua script, atomic on the server."""
        if not counters and approval is None:
            return TAKEN
        return int(self._script("take", *self._take_call(namespace, counters, approval, now)))

    def find_approval(self, namespace: str, call: str, now: float) -> ApprovalState | None:
        """See :meth:`Store.find_approval`."""
        return self._read_found(self._script("find", *self._find_call(namespace, call, now)))

    def request_approval(
        self,
        namespace: str,
        request: ApprovalRequest,
        call: str,
        holder: str,
        snapshot: str,
        replaces: Sequence[tuple[str, str]],
        now: float,
    ) -> ApprovalState:
        """See :meth:`Store.request_approval`."""
        plan = self._request_call(namespace, request, call, holder, snapshot, replaces, now)
        return _state(self._script("request", *plan))

    def save_snapshot(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        """See :meth:`Store.save_snapshot`."""
        if not held:
            return []
        found = self._script("save", *self._save_call(namespace, held, holder, snapshot, now))
        return [int(x) == 1 for x in found]

    def get_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        """See :meth:`Store.get_approval`."""
        client, _ = self._sync()
        key = f"{self._base(namespace)}approval:{request_id}"
        with self._guard():
            found = client.hmget(key, self._approval_fields())
        return self._read_approval(found, now)

    def read_approval(self, namespace: str, request_id: str, now: float) -> ApprovalState | None:
        """See :meth:`Store.read_approval` (one ``HGETALL``)."""
        client, _ = self._sync()
        key = f"{self._base(namespace)}approval:{request_id}"
        with self._guard():
            found = client.hgetall(key)
        return self._read_whole(found, request_id, now)

    def decide_approval(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """See :meth:`Store.decide_approval`."""
        plan = self._decide_call(namespace, request_id, approve, by, now)
        return int(self._script("decide", *plan)) == 1

    def pending_approvals(self, namespace: str, now: float) -> list[ApprovalRequest]:
        """See :meth:`Store.pending_approvals`; also drops expired ids from the
        pending index."""
        client, _ = self._sync()
        base = self._base(namespace)
        with self._guard():
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(f"{base}pending", "-inf", _num(now))
            pipe.zrangebyscore(f"{base}pending", "(" + _num(now), "+inf")
            _, ids = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for request_id in ids:
                pipe.hmget(f"{base}approval:{_text(request_id)}", ("request", "state", "exp"))
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

    async def _script_async(self, made: tuple[Any, dict[str, Any]], name: str, plan: Any) -> Any:
        keys, args = plan
        with self._guard():
            return await made[1][name](keys=keys, args=args)

    async def take_async(
        self,
        namespace: str,
        counters: Sequence[Counter],
        approval: ApprovalKey | None,
        now: float,
    ) -> int:
        """Async twin of :meth:`take` (never blocks the event loop)."""
        if not counters and approval is None:
            return TAKEN
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.take, namespace, counters, approval, now)
        plan = self._take_call(namespace, counters, approval, now)
        return int(await self._script_async(made, "take", plan))

    async def find_approval_async(
        self, namespace: str, call: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`find_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.find_approval, namespace, call, now)
        plan = self._find_call(namespace, call, now)
        return self._read_found(await self._script_async(made, "find", plan))

    async def request_approval_async(
        self,
        namespace: str,
        request: ApprovalRequest,
        call: str,
        holder: str,
        snapshot: str,
        replaces: Sequence[tuple[str, str]],
        now: float,
    ) -> ApprovalState:
        """Async twin of :meth:`request_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(
                self.request_approval, namespace, request, call, holder, snapshot, replaces, now
            )
        plan = self._request_call(namespace, request, call, holder, snapshot, replaces, now)
        return _state(await self._script_async(made, "request", plan))

    async def save_snapshot_async(
        self,
        namespace: str,
        held: Sequence[ApprovalKey],
        holder: str,
        snapshot: str,
        now: float,
    ) -> list[bool]:
        """Async twin of :meth:`save_snapshot`."""
        if not held:
            return []
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(
                self.save_snapshot, namespace, held, holder, snapshot, now
            )
        plan = self._save_call(namespace, held, holder, snapshot, now)
        return [int(x) == 1 for x in await self._script_async(made, "save", plan)]

    async def get_approval_async(
        self, namespace: str, request_id: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`get_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.get_approval, namespace, request_id, now)
        key = f"{self._base(namespace)}approval:{request_id}"
        with self._guard():
            found = await made[0].hmget(key, self._approval_fields())
        return self._read_approval(found, now)

    async def read_approval_async(
        self, namespace: str, request_id: str, now: float
    ) -> ApprovalState | None:
        """Async twin of :meth:`read_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.read_approval, namespace, request_id, now)
        key = f"{self._base(namespace)}approval:{request_id}"
        with self._guard():
            found = await made[0].hgetall(key)
        return self._read_whole(found, request_id, now)

    async def decide_approval_async(
        self, namespace: str, request_id: str, approve: bool, by: str, now: float
    ) -> bool:
        """Async twin of :meth:`decide_approval`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(
                self.decide_approval, namespace, request_id, approve, by, now
            )
        plan = self._decide_call(namespace, request_id, approve, by, now)
        return int(await self._script_async(made, "decide", plan)) == 1

    async def pending_approvals_async(self, namespace: str, now: float) -> list[ApprovalRequest]:
        """Async twin of :meth:`pending_approvals`."""
        made = await self._async_client()
        if made is None:
            return await asyncio.to_thread(self.pending_approvals, namespace, now)
        client = made[0]
        base = self._base(namespace)
        with self._guard():
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(f"{base}pending", "-inf", _num(now))
            pipe.zrangebyscore(f"{base}pending", "(" + _num(now), "+inf")
            _, ids = await pipe.execute()
            found: list[Any] = []
            if ids:
                pipe = client.pipeline(transaction=False)
                for request_id in ids:
                    pipe.hmget(f"{base}approval:{_text(request_id)}", ("request", "state", "exp"))
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
