"""Rollout features (POLICY.md "Rollout and human control (v1.1)"): what budgets, the
decision log and audit mode cost an allowed call, and what a Redis-backed budget
costs next to a bare Redis round trip.

In-process, one round robin with the bare call (each configuration its own instance,
``bench-rollout-<config>``):

- a grant with one ``per: request`` limit that is never reached (``max: 10**12``) vs
  the same tool in a policy without limits; a ``per: user`` limit on the default
  in-process store as a reference;
- the decision log on (a JSON Lines file in a temporary directory) vs off. The
  guarded call only appends to a queue; the queue is flushed before each batch
  (untimed), so it never fills; a second series also times the flush at the end of
  its batch (the caller's cost plus formatting and writing the records);
- ``metadata: {mode: audit}`` vs the identical policy in ``enforce``, for a grant
  with an input rule and for plain RBAC.

Redis (a throwaway ``redis-server`` from :func:`d2.core.testing.redis_server`, its
own round robin): a ``per: user`` limit on a :class:`RedisStore`, sync and async
tools, next to bare ``INCR`` round trips of a ``redis.Redis`` / ``redis.asyncio``
client on the same server. Skipped, with a note, when ``redis-server`` or the
``redis`` package is missing.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2 import (
    InMemorySource,
    Limits,
    PermissionDeniedError,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_rbac,
)
from d2.core.decisionlog import DecisionLog, dropped_total
from d2.core.evaluate import evaluator_for

from benchmarks.common import (
    Batch,
    Pair,
    Settings,
    Table,
    Target,
    async_batch,
    expires_soon,
    interleaved,
    ns,
    progress,
    ratio,
    sync_batch,
)

INSTANCE = "bench-rollout"  # instances bench-rollout-<config>
USER, ROLES = "agent-7", ["agent"]
HUGE = 10**12  # a limit the benchmark never reaches
SEARCH, LOOKUP, CAPPED = "rollout.search", "rollout.lookup", "rollout.capped"
PER_USER, SEARCH_ASYNC, ONCE = "rollout.per_user", "rollout.search_async", "rollout.once"
REDIS_PREFIX = "d2-bench:"

TARGET_LIMIT_NS = 1_000
TARGET_LOG_NS = 2_000
TARGET_AUDIT = 1.05  # audit / enforce, guarded call (5% for noise)


def bare_sync(x: Any) -> Any:
    return x


async def bare_async(x: Any) -> Any:
    return x


def lookup(x: Any) -> Any:
    """The tool with an input rule on ``x`` (called with 1)."""
    return x


# -- policies ----------------------------------------------------------------------------


def document(name: str, permissions: list[Any], **metadata: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "expires": expires_soon(), **metadata},
        "policies": [{"role": ROLES[0], "permissions": permissions}],
    }


def plain_document() -> dict[str, Any]:
    return document("bench-rollout-plain", [SEARCH])


def limits_document() -> dict[str, Any]:
    return document(
        "bench-rollout-limits",
        [
            {"tool": SEARCH, "limits": [{"max": HUGE, "per": "request"}]},
            {"tool": CAPPED, "limits": [{"max": 2, "per": "request"}]},  # checks the limit acts
            {"tool": PER_USER, "limits": [{"max": HUGE, "per": "user", "window": "1d"}]},
        ],
    )


def mode_document(mode: str) -> dict[str, Any]:
    """One grant with an input rule, one plain: identical but for ``mode``."""
    return document(
        f"bench-rollout-{mode}",
        [{"tool": LOOKUP, "conditions": {"input": {"x": {"type": "int", "min": 0}}}}, SEARCH],
        mode=mode,
    )


def redis_document() -> dict[str, Any]:
    per_user = [{"max": HUGE, "per": "user", "window": "1d"}]
    return document(
        "bench-rollout-redis",
        [
            {"tool": SEARCH, "limits": per_user},
            {"tool": SEARCH_ASYNC, "limits": per_user},
            {"tool": ONCE, "limits": [{"max": 1, "per": "user", "window": "1d"}]},
        ],
    )


def configure(config: str, doc: dict[str, Any], **options: Any) -> str:
    instance = f"{INSTANCE}-{config}"
    configure_rbac_sync(
        instance_name=instance,
        source=InMemorySource(doc, name=f"<{instance}>"),
        limits=Limits.unlimited(),
        **options,
    )
    return instance


def guard(tool_id: str, instance: str, fn: Callable[..., Any] = bare_sync) -> Callable[..., Any]:
    return d2_guard(tool_id, instance_name=instance)(fn)


def denial(call: Callable[[], Any]) -> str:
    """The reason ``call()`` is denied with (it must be)."""
    try:
        call()
    except PermissionDeniedError as err:
        return err.reason
    raise AssertionError(f"{call} was allowed")


# -- batches -----------------------------------------------------------------------------


def request_batch(
    fn: Callable[[Any], Any],
    n: int,
    flush: Callable[[], Any] | None = None,
    timed_flush: bool = False,
) -> int:
    """A new request (``set_user``), then ``n`` calls of ``fn(1)``, timed. With
    ``flush`` (a decision log's): also called before and after the calls, so no
    record is left for the writer thread to format during another series' batch;
    the one after is timed with ``timed_flush``."""
    set_user(USER, roles=ROLES)
    if flush is not None:
        flush()
    clock = time.perf_counter_ns
    t0 = clock()
    elapsed = sync_batch(fn, 1, n)
    if flush is not None:
        flush()
        if timed_flush:
            elapsed = clock() - t0
    return elapsed


# -- in-process --------------------------------------------------------------------------

CONFIGS = ("plain", "limits", "log", "enforce", "audit")
SERIES = (
    "bare",
    "plain",
    "request_limit",
    "user_limit",
    "log",
    "log_write",
    "enforce_input",
    "audit_input",
    "enforce_rbac",
    "audit_rbac",
)


@dataclass(frozen=True)
class InProcess:
    med: dict[str, float]
    records: int  # lines the decision log wrote
    dropped: int


def measure_in_process(settings: Settings) -> InProcess:
    instances: list[str] = []
    with tempfile.TemporaryDirectory(prefix="d2-bench-log-") as directory:
        path = Path(directory) / "decisions.jsonl"
        try:
            plain = configure("plain", plain_document())
            limited = configure("limits", limits_document())
            logged = configure("log", plain_document(), decision_log=str(path))
            enforce = configure("enforce", mode_document("enforce"))
            audit = configure("audit", mode_document("audit"))
            instances += [plain, limited, logged, enforce, audit]
            log = evaluator_for(logged).log
            assert isinstance(log, DecisionLog), log
            fns = {
                "plain": guard(SEARCH, plain),
                "request_limit": guard(SEARCH, limited),
                "user_limit": guard(PER_USER, limited),
                "log": guard(SEARCH, logged),
                "enforce_input": guard(LOOKUP, enforce, lookup),
                "audit_input": guard(LOOKUP, audit, lookup),
                "enforce_rbac": guard(SEARCH, enforce),
                "audit_rbac": guard(SEARCH, audit),
            }
            set_user(USER, roles=ROLES)
            for fn in fns.values():
                assert fn(1) == 1
            # every feature acts: the per-request limit, the input rule, audit mode
            capped = guard(CAPPED, limited)
            capped(1), capped(1)
            assert denial(functools.partial(capped, 1)) == "budget_exceeded"
            assert denial(functools.partial(fns["enforce_input"], -1)) == "input_validation"
            assert fns["audit_input"](-1) == -1  # would_deny: runs anyway
            log.flush()
            assert path.read_text().count("\n") == 1, "decision log: one record expected"

            partial = functools.partial
            batches: dict[Any, Batch] = {"bare": partial(request_batch, bare_sync)}
            for key, fn in fns.items():
                batches[key] = partial(request_batch, fn)
            batches["log"] = partial(request_batch, fns["log"], flush=log.flush)
            batches["log_write"] = partial(
                request_batch, fns["log"], flush=log.flush, timed_flush=True
            )
            assert set(batches) == set(SERIES)
            dropped = dropped_total()
            gc.collect()
            progress(f"rollout: {len(batches)} call kinds x {settings.batches} rounds, interleaved")
            times = interleaved(batches, settings)
            dropped = dropped_total() - dropped
        finally:
            for instance in instances:
                shutdown_rbac(instance)  # closes the decision log: the rest is written
            evaluator_for(f"{INSTANCE}-limits").store = None
            clear_user_context()
        with path.open() as fh:
            records = sum(1 for _ in fh)
    med = {key: statistics.median(values) for key, values in times.items()}
    return InProcess(med, records, dropped)


# -- Redis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisRun:
    med: dict[str, float]
    keys: int  # counters the store holds after the run


def redis_skipped() -> str | None:
    if importlib.util.find_spec("redis") is None:
        return "skipped: the redis package is not installed"
    if shutil.which("redis-server") is None:
        return "skipped: redis-server not installed"
    return None


def measure_redis(settings: Settings) -> RedisRun:
    import redis
    import redis.asyncio as aioredis
    from d2.core.stores.base import TAKEN, Counter
    from d2.core.stores.redis import RedisStore
    from d2.core.testing import redis_server

    loop = asyncio.new_event_loop()
    instance = f"{INSTANCE}-redis"
    with ExitStack() as stack:
        stack.callback(loop.close)
        server = stack.enter_context(redis_server())
        store = RedisStore.from_url(server.url, prefix=REDIS_PREFIX)
        stack.callback(lambda: loop.run_until_complete(store.aclose()))
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        aclient = aioredis.Redis.from_url(server.url)
        closer = getattr(aclient, "aclose", None) or aclient.close
        stack.callback(lambda: loop.run_until_complete(closer()))
        try:
            configure("redis", redis_document(), store=store)
            sync_tool = guard(SEARCH, instance)
            async_tool: Callable[[Any], Awaitable[Any]] = guard(SEARCH_ASYNC, instance, bare_async)
            once = guard(ONCE, instance)
            set_user(USER, roles=ROLES)
            assert sync_tool(1) == 1
            assert loop.run_until_complete(async_tool(1)) == 1
            assert once(1) == 1
            assert denial(functools.partial(once, 1)) == "budget_exceeded"
            assert evaluator_for(instance).store is store

            def incr(_: Any) -> Any:
                return client.incr("bench:incr")

            async def aincr(_: Any) -> Any:
                return await aclient.incr("bench:aincr")

            window_end = (time.time() // 86400 + 1) * 86400
            counters = [Counter("bench-take", HUGE, window_end)]

            def take(_: Any) -> Any:
                return store.take("bench-rollout", counters, None, time.time())

            assert incr(1) == 1 and loop.run_until_complete(aincr(1)) == 1
            assert take(1) == TAKEN
            partial = functools.partial
            batches: dict[Any, Batch] = {
                "incr": partial(sync_batch, incr, 1),
                "take": partial(sync_batch, take, 1),
                "sync": partial(sync_batch, sync_tool, 1),
                "aincr": partial(async_batch, loop, aincr),
                "async": partial(async_batch, loop, async_tool),
            }
            gc.collect()
            progress(
                f"rollout: Redis, {len(batches)} call kinds x {settings.batches} rounds, "
                "interleaved"
            )
            times = interleaved(batches, settings)
            keys = len(client.keys(f"{REDIS_PREFIX}*"))
        finally:
            shutdown_rbac(instance)
            evaluator_for(instance).store = None
            clear_user_context()
    med = {key: statistics.median(values) for key, values in times.items()}
    return RedisRun(med, keys)


# -- the section -------------------------------------------------------------------------


def rollout_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    inproc = measure_in_process(settings)
    med = inproc.med
    bare = med["bare"]

    def pair(key: str) -> Pair:
        return Pair(bare, med[key])

    calls = Table(
        "Rollout features per call, sync allowed (medians)",
        ["configuration", "bare", "guarded", "overhead", "against", "added", "ratio"],
        align="lrrrlrr",
    )
    rows = [
        ("RBAC only, no limits", "plain", None),
        ("per: request limit (never reached)", "request_limit", "plain"),
        ("per: user limit, in-process store (reference)", "user_limit", "plain"),
        ("decision log on, file (caller's side)", "log", "plain"),
        ("decision log on, file (caller + writing)", "log_write", "plain"),
        ("enforce, input rule (1)", "enforce_input", None),
        ("audit, input rule (1)", "audit_input", "enforce_input"),
        ("enforce, RBAC only", "enforce_rbac", None),
        ("audit, RBAC only", "audit_rbac", "enforce_rbac"),
    ]
    names = {key: label for label, key, _ in rows}
    for label, key, ref in rows:
        p = pair(key)
        if ref is None:
            against = added = versus = "-"
        else:
            against = names[ref]
            added = f"{med[key] - med[ref]:+,.0f} ns"
            versus = ratio(med[key] / med[ref])
        calls.add(label, ns(p.bare), ns(p.guarded), ns(p.overhead), against, added, versus)
    calls.notes += [
        f"one role, tool {SEARCH!r} called with one argument; each configuration its own "
        f"instance ({INSTANCE}-*); bare: the same function undecorated; a new request "
        "(`set_user`) before each batch, untimed. added/ratio: guarded call against the "
        "named row's guarded call in the same round robin.",
        "limits: `{max: 10**12, per: request}` (never reached; a second tool with "
        "`max: 2` is denied `budget_exceeded` on its third call, checked first); the "
        "reference row `{max: 10**12, per: user, window: 1d}` on the default MemoryStore "
        "(takes the store's lock and hashes a counter key per call).",
        "decision log: `configure_rbac_sync(decision_log=<tmp>/decisions.jsonl)`; the "
        "queue is flushed (`log.flush()`) before and after each batch, untimed, so it "
        "never fills (capacity 100,000) and no other series pays for writing its records "
        "(the background writer, waking every 0.2 s, finds little to do). (caller + "
        "writing) times the flush after its batch: formatting and writing the records in "
        "the caller's thread, the cost the writer thread adds per decision. A batch "
        f"queues ~{settings.batch_ns / med['log']:,.0f} records (the caller's cost grows "
        "a little with the queue's depth: every queued record is a GC-tracked tuple). "
        f"The run wrote {inproc.records:,} records; {inproc.dropped:,} dropped.",
        f"audit vs enforce: identical policies but `metadata.mode`; input rule "
        f"`x: {{type: int, min: 0}}`, called with x=1 (allowed in both). Target: audit no "
        f"slower than enforce, ratio <= {TARGET_AUDIT} (5% for noise).",
    ]

    tables = [calls]
    limit_added = med["request_limit"] - med["plain"]
    log_added = med["log"] - med["plain"]
    audit_input = med["audit_input"] / med["enforce_input"]
    audit_rbac = med["audit_rbac"] / med["enforce_rbac"]
    targets = [
        Target(
            "per: request limit, added per allowed call",
            ns(limit_added),
            f"<= {TARGET_LIMIT_NS:,} ns",
            limit_added <= TARGET_LIMIT_NS,
        ),
        Target(
            "decision log on (file), added per call (caller)",
            ns(log_added),
            f"<= {TARGET_LOG_NS:,} ns",
            log_added <= TARGET_LOG_NS,
        ),
        Target(
            "audit vs enforce, input rule",
            ratio(audit_input),
            f"<= {TARGET_AUDIT}x",
            audit_input <= TARGET_AUDIT,
        ),
        Target(
            "audit vs enforce, RBAC only",
            ratio(audit_rbac),
            f"<= {TARGET_AUDIT}x",
            audit_rbac <= TARGET_AUDIT,
        ),
    ]

    store = Table(
        "Redis store, per: user limit per call (medians)",
        ["call", "client", "median", "vs bare INCR", "added"],
        align="llrrr",
    )
    skipped = redis_skipped()
    if skipped is None:
        run = measure_redis(settings)
        r = run.med
        store.add("bare INCR", "redis.Redis", ns(r["incr"]), "-", "-")
        store.add(
            "RedisStore.take() alone",
            "RedisStore (sync)",
            ns(r["take"]),
            ratio(r["take"] / r["incr"]),
            f"{r['take'] - r['incr']:+,.0f} ns",
        )
        store.add(
            "guarded sync tool",
            "RedisStore (sync)",
            ns(r["sync"]),
            ratio(r["sync"] / r["incr"]),
            f"{r['sync'] - r['incr']:+,.0f} ns",
        )
        store.add("bare await INCR", "redis.asyncio.Redis", ns(r["aincr"]), "-", "-")
        store.add(
            "guarded async tool (await)",
            "RedisStore (async)",
            ns(r["async"]),
            ratio(r["async"] / r["aincr"]),
            f"{r['async'] - r['aincr']:+,.0f} ns",
        )
        store.notes += [
            "a throwaway redis-server on 127.0.0.1 (d2.core.testing.redis_server, no "
            "persistence); limit `{max: 10**12, per: user, window: 1d}` on "
            f"`RedisStore.from_url(url, prefix={REDIS_PREFIX!r})`; each guarded call runs "
            "one Lua script (HMGET, HSET, PEXPIRE on one counter); the bare rows INCR one "
            "key on the same server with a client of their own; `RedisStore.take()` alone: "
            "the store's call for one counter without the guard. All five in one round "
            "robin; async rows awaited inside a task of one event loop.",
            f"a second tool with `max: 1` is denied `budget_exceeded` on its second call "
            f"(checked first); the store held {run.keys} counter key(s) after the run. "
            "No target: the round trip dominates.",
        ]
    else:
        store.add(skipped, "-", "-", "-", "-")
        store.notes.append("install redis-server (and the redis package) to measure it.")
    tables.append(store)
    return tables, targets
