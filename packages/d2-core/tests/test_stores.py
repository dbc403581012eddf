"""The store contract (MemoryStore and RedisStore, sync and async), a property test
of budget windows, and RedisStore against a real redis-server: races between
processes, the server going away and coming back, URLs and the missing extra."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from d2.core.approvals import ApprovalRequest
from d2.core.errors import ConfigurationError
from d2.core.stores import (
    APPROVAL_MISSING,
    TAKEN,
    ApprovalState,
    Counter,
    MemoryStore,
    Store,
    StoreUnavailableError,
    store_from_url,
)
from d2.core.testing import RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = 1_000_000.0  # the tests' clock: no real time passes

Call = Callable[..., Awaitable[Any]]


def req(request_id: str = "r1", expires_at: float = T0 + 60) -> ApprovalRequest:
    return ApprovalRequest(
        id=request_id,
        tool_id="tool.delete",
        user_id="alice",
        arguments={"path": "/tmp/x", "n": 1},
        policy_version="v1",
        expires_at=expires_at,
        approver_roles=("admin",),
    )


def prefix() -> str:
    return f"d2test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    from d2.core.stores.redis import RedisStore

    made = RedisStore.from_url(request.getfixturevalue("redis_url"), prefix=prefix())
    yield made
    await made.aclose()


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Call:
    """``await call(store, "take", ...)``: the sync method or its async twin."""

    async def _call(target: Store, name: str, *args: Any) -> Any:
        if request.param == "sync":
            return getattr(target, name)(*args)
        return await getattr(target, name + "_async")(*args)

    return _call


# -- the contract ----------------------------------------------------------


async def test_counter_admits_exactly_max(store: Store, call: Call) -> None:
    counter = Counter("tool:alice:0", 3, T0 + 60)
    results = [await call(store, "take", [counter], None, T0 + i) for i in range(5)]
    assert results == [TAKEN, TAKEN, TAKEN, 0, 0]


async def test_full_counter_returns_its_index_and_consumes_nothing(
    store: Store, call: Call
) -> None:
    a = Counter("a", 2, T0 + 60)
    b = Counter("b", 1, T0 + 60)
    c = Counter("c", 1, T0 + 60)
    assert await call(store, "take", [b], None, T0) == TAKEN  # b is now full
    assert await call(store, "take", [a, b, c], None, T0) == 1
    assert await call(store, "take", [a, c, b], None, T0) == 2
    # a and c were not consumed by the refused takes
    assert await call(store, "take", [a, c], None, T0) == TAKEN
    assert await call(store, "take", [c, a], None, T0) == 0
    assert await call(store, "take", [a], None, T0) == TAKEN
    assert await call(store, "take", [a], None, T0) == 0


async def test_empty_take_is_taken(store: Store, call: Call) -> None:
    assert await call(store, "take", [], None, T0) == TAKEN


async def test_counter_resets_after_its_window(store: Store, call: Call) -> None:
    counter = Counter("k", 2, T0 + 10)
    assert await call(store, "take", [counter, counter._replace(key="other")], None, T0) == TAKEN
    assert await call(store, "take", [counter], None, T0 + 1) == TAKEN
    assert await call(store, "take", [counter], None, T0 + 9.999) == 0
    # the window ended (expires_at <= now): the same key counts from zero again
    later = Counter("k", 2, T0 + 20)
    assert await call(store, "take", [later], None, T0 + 10) == TAKEN
    assert await call(store, "take", [later], None, T0 + 11) == TAKEN
    assert await call(store, "take", [later], None, T0 + 12) == 0


async def test_approval_lifecycle_used_once(store: Store, call: Call) -> None:
    counter = Counter("budget", 5, T0 + 60)
    state = await call(store, "request_approval", req(), T0)
    assert state == ApprovalState(req(), "pending", None)
    assert await call(store, "get_approval", "r1", T0) == state
    assert await call(store, "pending_approvals", T0) == [req()]
    # pending is not granted, and nothing was consumed
    assert await call(store, "take", [counter], "r1", T0) == APPROVAL_MISSING
    assert await call(store, "decide_approval", "r1", True, "bob", T0 + 1) is True
    assert await call(store, "get_approval", "r1", T0 + 1) == ApprovalState(
        req(), "approved", "bob"
    )
    assert await call(store, "pending_approvals", T0 + 1) == []
    assert await call(store, "decide_approval", "r1", False, "carol", T0 + 1) is False
    assert await call(store, "take", [counter], "r1", T0 + 2) == TAKEN
    assert await call(store, "take", [counter], "r1", T0 + 2) == APPROVAL_MISSING
    assert await call(store, "take", [], "r1", T0 + 2) == APPROVAL_MISSING
    assert await call(store, "get_approval", "r1", T0 + 2) is None
    # the counter moved once (by the approved take): 4 left
    results = [await call(store, "take", [counter], None, T0 + 3) for _ in range(5)]
    assert results == [TAKEN] * 4 + [0]


async def test_full_counter_does_not_use_the_approval(store: Store, call: Call) -> None:
    counter = Counter("one", 1, T0 + 60)
    await call(store, "request_approval", req(), T0)
    await call(store, "decide_approval", "r1", True, "bob", T0)
    assert await call(store, "take", [counter], None, T0) == TAKEN
    assert await call(store, "take", [counter], "r1", T0) == 0
    state = await call(store, "get_approval", "r1", T0)
    assert state is not None
    assert state.state == "approved"
    assert await call(store, "take", [], "r1", T0) == TAKEN


async def test_reject(store: Store, call: Call) -> None:
    await call(store, "request_approval", req(), T0)
    assert await call(store, "decide_approval", "r1", False, "bob", T0) is True
    assert await call(store, "get_approval", "r1", T0) == ApprovalState(req(), "rejected", "bob")
    assert await call(store, "take", [], "r1", T0) == APPROVAL_MISSING
    assert await call(store, "decide_approval", "r1", True, "bob", T0) is False
    assert await call(store, "pending_approvals", T0) == []


async def test_decide_unknown_or_expired_is_false(store: Store, call: Call) -> None:
    assert await call(store, "decide_approval", "nope", True, "bob", T0) is False
    await call(store, "request_approval", req(expires_at=T0 + 10), T0)
    assert await call(store, "decide_approval", "r1", True, "bob", T0 + 10) is False
    assert await call(store, "get_approval", "r1", T0 + 10) is None
    assert await call(store, "get_approval", "r1", T0 + 9) == ApprovalState(
        req(expires_at=T0 + 10), "pending", None
    )


async def test_request_again_returns_the_state_in_force(store: Store, call: Call) -> None:
    first = req(expires_at=T0 + 30)
    await call(store, "request_approval", first, T0)
    await call(store, "decide_approval", "r1", True, "bob", T0)
    again = await call(store, "request_approval", req(expires_at=T0 + 90), T0 + 5)
    assert again == ApprovalState(first, "approved", "bob")  # not reset to pending
    assert await call(store, "pending_approvals", T0 + 5) == []
    # once expired, asking again starts a new pending request
    fresh = req(expires_at=T0 + 90)
    assert await call(store, "request_approval", fresh, T0 + 30) == ApprovalState(
        fresh, "pending", None
    )
    assert await call(store, "pending_approvals", T0 + 30) == [fresh]


async def test_pending_listing_order_and_expiry(store: Store, call: Call) -> None:
    late = req("a-late", T0 + 30)
    b_soon = req("b-soon", T0 + 10)
    a_soon = req("a-soon", T0 + 10)
    decided = req("decided", T0 + 20)
    for r in (late, b_soon, decided, a_soon):
        await call(store, "request_approval", r, T0)
    await call(store, "decide_approval", "decided", True, "bob", T0)
    assert await call(store, "pending_approvals", T0) == [a_soon, b_soon, late]
    assert await call(store, "pending_approvals", T0 + 9.5) == [a_soon, b_soon, late]
    assert await call(store, "pending_approvals", T0 + 10) == [late]
    assert await call(store, "pending_approvals", T0 + 30) == []


async def test_approval_expired_at_take(store: Store, call: Call) -> None:
    counter = Counter("c", 1, T0 + 600)
    await call(store, "request_approval", req(expires_at=T0 + 10), T0)
    await call(store, "decide_approval", "r1", True, "bob", T0)
    assert await call(store, "take", [counter], "r1", T0 + 10) == APPROVAL_MISSING
    assert await call(store, "take", [counter], None, T0 + 10) == TAKEN  # not consumed


# -- property: fixed windows never admit more than max ---------------------

steps_st = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=25, allow_nan=False),  # clock advance
        st.sampled_from(["k1", "k2", "k3"]),
        st.booleans(),  # also take from the shared counter
    ),
    max_size=120,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=steps_st,
    window=st.sampled_from([1.0, 7.5, 10.0, 60.0]),
    maxima=st.fixed_dictionaries(
        {k: st.integers(min_value=1, max_value=4) for k in ("k1", "k2", "k3", "all")}
    ),
)
def test_memory_store_windows(
    steps: list[tuple[float, str, bool]], window: float, maxima: dict[str, int]
) -> None:
    store = MemoryStore()
    now = T0
    taken: dict[tuple[str, int], int] = {}
    for advance, name, shared in steps:
        now += advance
        epoch = math.floor(now / window)
        names = [name, "all"] if shared else [name]
        counters = [Counter(f"{n}:{epoch}", maxima[n], (epoch + 1) * window) for n in names]
        result = store.take(counters, None, now)
        full = [i for i, n in enumerate(names) if taken.get((n, epoch), 0) >= maxima[n]]
        if full:
            assert result == full[0]
        else:
            assert result == TAKEN
            for n in names:
                taken[(n, epoch)] = taken.get((n, epoch), 0) + 1
        assert all(taken[(n, e)] <= maxima[n] for n, e in taken)


# -- Redis: processes racing ------------------------------------------------

_RACER = textwrap.dedent(
    """
    import sys
    from d2.core.stores import Counter
    from d2.core.stores.redis import RedisStore

    url, prefix, mode, now = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = RedisStore.from_url(url, prefix=prefix, timeout=5)
    store.get_approval("warm-up", now)  # connected before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "budget":
        counter = Counter("shared", 100, now + 60)
        results = [store.take([counter], None, now) for _ in range(50)]
    else:
        results = [store.take([], "r1", now)]
    store.close()
    print(" ".join(map(str, results)), flush=True)
    """
)


def race(url: str, store_prefix: str, mode: str, processes: int = 8) -> list[int]:
    """Start ``processes`` racers, release them together, return every result."""
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, store_prefix, mode, repr(T0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        results: list[int] = []
        for racer in racers:
            out, _ = racer.communicate(timeout=30)
            assert racer.returncode == 0
            results += [int(x) for x in out.split()]
        return results
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.communicate()


def test_processes_share_one_budget(redis_url: str) -> None:
    results = race(redis_url, prefix(), "budget")
    assert len(results) == 400
    assert results.count(TAKEN) == 100
    assert results.count(0) == 300


def test_processes_use_an_approval_once(redis_url: str) -> None:
    from d2.core.stores.redis import RedisStore

    store_prefix = prefix()
    store = RedisStore.from_url(redis_url, prefix=store_prefix)
    try:
        store.request_approval(req(), T0)
        assert store.decide_approval("r1", True, "bob", T0)
        results = race(redis_url, store_prefix, "approval")
        assert sorted(results) == [APPROVAL_MISSING] * 7 + [TAKEN]
        assert store.get_approval("r1", T0) is None
    finally:
        store.close()


# -- Redis: keys, expiry, the server going away ------------------------------


def test_keys_are_prefixed_and_expire(redis_url: str) -> None:
    import redis
    from d2.core.stores.redis import RedisStore

    store_prefix = prefix()
    store = RedisStore.from_url(redis_url, prefix=store_prefix)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.take([Counter("c", 5, T0 + 2)], None, T0)
        store.request_approval(req(expires_at=T0 + 30), T0)
        keys = sorted(k.decode() for k in raw.keys(store_prefix + "*"))
        assert keys == [
            f"{store_prefix}approval:r1",
            f"{store_prefix}approvals:pending",
            f"{store_prefix}count:c",
        ]
        assert 0 < raw.pttl(f"{store_prefix}count:c") <= 2000
        assert 28_000 < raw.pttl(f"{store_prefix}approval:r1") <= 30_000
        # a window that already ended (expires_at <= now) still gets a TTL
        store.take([Counter("gone", 5, T0 - 5)], None, T0)
        assert raw.pttl(f"{store_prefix}count:gone") in (-2, 0, 1)
    finally:
        raw.close()
        store.close()


async def test_redis_down_then_back(redis_instance: RedisServer) -> None:
    from d2.core.stores.redis import RedisStore

    store = RedisStore.from_url(redis_instance.url, prefix=prefix(), timeout=0.5)
    counter = Counter("c", 10, T0 + 60)
    try:
        assert store.take([counter], None, T0) == TAKEN
        assert await store.take_async([counter], None, T0) == TAKEN
        redis_instance.stop()
        with pytest.raises(StoreUnavailableError) as sync_error:
            store.take([counter], None, T0)
        with pytest.raises(StoreUnavailableError) as async_error:
            await store.take_async([counter], None, T0)
        with pytest.raises(StoreUnavailableError):
            store.pending_approvals(T0)
        with pytest.raises(StoreUnavailableError):
            await store.request_approval_async(req(), T0)
        for error in (sync_error, async_error):
            assert redis_instance.url in str(error.value)
            assert "check that Redis is running" in str(error.value)
        redis_instance.start()
        # the server came back empty: the clients reconnect and count from zero
        assert store.take([counter], None, T0) == TAKEN
        assert await store.take_async([counter], None, T0) == TAKEN
        assert await store.request_approval_async(req(), T0) == ApprovalState(req(), "pending")
    finally:
        await store.aclose()


def test_unavailable_message_hides_the_password(redis_instance: RedisServer) -> None:
    from d2.core.stores.redis import RedisStore

    url = f"redis://:s3cret-pw@127.0.0.1:{redis_instance.port}/0?password=s3cret-pw"
    store = RedisStore.from_url(url, prefix=prefix())
    try:
        redis_instance.stop()
        with pytest.raises(StoreUnavailableError) as error:
            store.take([Counter("c", 1, T0 + 1)], None, T0)
        assert "s3cret" not in str(error.value)
        assert redis_instance.url in str(error.value)
        assert "s3cret" not in repr(store)
    finally:
        store.close()


async def test_clients_passed_in(redis_url: str) -> None:
    import redis
    import redis.asyncio
    from d2.core.stores.redis import RedisStore

    sync_client = redis.Redis.from_url(redis_url, decode_responses=True)
    async_client = redis.asyncio.Redis.from_url(redis_url)
    store_prefix = prefix()
    try:
        both = RedisStore(sync_client, async_client=async_client, prefix=store_prefix)
        only_sync = RedisStore(sync_client, prefix=store_prefix)
        assert both.request_approval(req(), T0).state == "pending"
        assert await both.decide_approval_async("r1", True, "bob", T0)
        assert await only_sync.get_approval_async("r1", T0) == ApprovalState(
            req(), "approved", "bob"
        )
        assert await only_sync.take_async([], "r1", T0) == TAKEN
        assert "127.0.0.1" in repr(both)
        both.close()  # leaves clients it did not make open
        await both.aclose()
        assert sync_client.ping()
    finally:
        sync_client.close()
        await async_client.aclose()


# -- URLs and the extra -------------------------------------------------------


def test_store_from_url(redis_url: str) -> None:
    from d2.core.stores.redis import RedisStore

    store = store_from_url(redis_url)
    try:
        assert isinstance(store, RedisStore)
        assert repr(store) == f"<RedisStore {redis_url} prefix='d2:'>"
    finally:
        store.close()
    assert isinstance(store_from_url("memory://"), MemoryStore)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@localhost:notaport/0",
        "redis://user:s3cret@localhost:99999999/0",
        "rediss://user:s3cret@[::1/0",
        "mysql://user:s3cret@localhost/0",
    ],
)
def test_bad_url_hides_the_password(url: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigurationError) as error:
        store_from_url(url)
    text = str(error.value)
    assert "s3cret" not in text
    assert error.value.__cause__ is None  # no chained error repeats the URL
    assert error.value.__context__ is None or error.value.__suppress_context__


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"d2-core\[redis\]") as error:
        store_from_url("redis://127.0.0.1:6379/0")
    assert "d2-sdk[redis]" in str(error.value)
