"""The store contract (MemoryStore and RedisStore, sync and async), a property test
of budget windows, and RedisStore against a real redis-server: races between
processes, the server going away and coming back, URLs and the missing extra."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from d2.core.approval_data import ApprovalRequest
from d2.core.errors import ConfigurationError
from d2.core.stores import (
    APPROVAL_MISSING,
    TAKEN,
    ApprovalKey,
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


APP = "app-a"
CALL = "c" * 64  # a call digest


def key(request_id: str = "r1", call: str = CALL) -> ApprovalKey:
    return ApprovalKey(call, request_id)


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


async def ask(
    store: Store,
    call: Call,
    request: ApprovalRequest | None = None,
    now: float = T0,
    *,
    namespace: str = APP,
    digest: str = CALL,
    holder: str = "h1",
    snapshot: str = "{}",
    replaces: tuple[tuple[str, str], ...] = (),
) -> ApprovalState:
    request = request if request is not None else req()
    return await call(
        store, "request_approval", namespace, request, digest, holder, snapshot, replaces, now
    )


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# -- the contract ----------------------------------------------------------


async def test_counter_admits_exactly_max(store: Store, call: Call) -> None:
    counter = Counter("tool:alice:0", 3, T0 + 60)
    results = [await call(store, "take", APP, [counter], None, T0 + i) for i in range(5)]
    assert results == [TAKEN, TAKEN, TAKEN, 0, 0]


async def test_full_counter_returns_its_index_and_consumes_nothing(
    store: Store, call: Call
) -> None:
    a = Counter("a", 2, T0 + 60)
    b = Counter("b", 1, T0 + 60)
    c = Counter("c", 1, T0 + 60)
    assert await call(store, "take", APP, [b], None, T0) == TAKEN  # b is now full
    assert await call(store, "take", APP, [a, b, c], None, T0) == 1
    assert await call(store, "take", APP, [a, c, b], None, T0) == 2
    # a and c were not consumed by the refused takes
    assert await call(store, "take", APP, [a, c], None, T0) == TAKEN
    assert await call(store, "take", APP, [c, a], None, T0) == 0
    assert await call(store, "take", APP, [a], None, T0) == TAKEN
    assert await call(store, "take", APP, [a], None, T0) == 0


async def test_empty_take_is_taken(store: Store, call: Call) -> None:
    assert await call(store, "take", APP, [], None, T0) == TAKEN


async def test_counter_resets_after_its_window(store: Store, call: Call) -> None:
    counter = Counter("k", 2, T0 + 10)
    other = counter._replace(key="other")
    assert await call(store, "take", APP, [counter, other], None, T0) == TAKEN
    assert await call(store, "take", APP, [counter], None, T0 + 1) == TAKEN
    assert await call(store, "take", APP, [counter], None, T0 + 9.999) == 0
    # the window ended (expires_at <= now): the same key counts from zero again
    later = Counter("k", 2, T0 + 20)
    assert await call(store, "take", APP, [later], None, T0 + 10) == TAKEN
    assert await call(store, "take", APP, [later], None, T0 + 11) == TAKEN
    assert await call(store, "take", APP, [later], None, T0 + 12) == 0


async def test_approval_lifecycle_used_once_then_dead(store: Store, call: Call) -> None:
    counter = Counter("budget", 5, T0 + 60)
    state = await ask(store, call, snapshot='{"s":1}')
    assert state == ApprovalState(req(), "pending", None)
    assert await call(store, "get_approval", APP, "r1", T0) == state
    found = await call(store, "find_approval", APP, CALL, T0)
    assert found == ApprovalState(req(), "pending", None, (("h1", '{"s":1}'),))
    assert await call(store, "pending_approvals", APP, T0) == [req()]
    # pending is not granted, and nothing was consumed
    assert await call(store, "take", APP, [counter], key(), T0) == APPROVAL_MISSING
    assert await call(store, "decide_approval", APP, "r1", True, "bob", T0 + 1) is True
    assert await call(store, "get_approval", APP, "r1", T0 + 1) == ApprovalState(
        req(), "approved", "bob"
    )
    assert await call(store, "pending_approvals", APP, T0 + 1) == []
    assert await call(store, "decide_approval", APP, "r1", False, "carol", T0 + 1) is False
    # the approval is for this call's live request only
    assert await call(store, "take", APP, [], key("r1", "d" * 64), T0 + 2) == APPROVAL_MISSING
    assert await call(store, "take", APP, [], key("other"), T0 + 2) == APPROVAL_MISSING
    assert await call(store, "take", APP, [counter], key(""), T0 + 2) == APPROVAL_MISSING
    assert await call(store, "take", APP, [counter], key(), T0 + 2) == TAKEN
    assert await call(store, "take", APP, [counter], key(), T0 + 2) == APPROVAL_MISSING
    assert await call(store, "take", APP, [], key(), T0 + 2) == APPROVAL_MISSING
    # used: the id is dead for good, and the call has no live request
    assert await call(store, "get_approval", APP, "r1", T0 + 2) is None
    assert await call(store, "find_approval", APP, CALL, T0 + 2) is None
    assert await call(store, "decide_approval", APP, "r1", True, "bob", T0 + 2) is False
    # the next identical call opens a new request with its own id
    fresh = await ask(store, call, req("r2"), T0 + 3)
    assert fresh == ApprovalState(req("r2"), "pending", None)
    assert await call(store, "decide_approval", APP, "r1", True, "bob", T0 + 3) is False
    assert await call(store, "take", APP, [], key("r1"), T0 + 3) == APPROVAL_MISSING
    # the counter moved once (by the approved take): 4 left
    results = [await call(store, "take", APP, [counter], None, T0 + 3) for _ in range(5)]
    assert results == [TAKEN] * 4 + [0]


async def test_a_call_without_a_live_request_takes_nothing(store: Store, call: Call) -> None:
    counter = Counter("once", 1, T0 + 60)
    for request_id in ("", "r1"):
        assert await call(store, "take", APP, [counter], key(request_id), T0) == APPROVAL_MISSING
    assert await call(store, "take", APP, [counter], None, T0) == TAKEN  # it had room


async def test_full_counter_does_not_use_the_approval(store: Store, call: Call) -> None:
    counter = Counter("one", 1, T0 + 60)
    await ask(store, call)
    await call(store, "decide_approval", APP, "r1", True, "bob", T0)
    assert await call(store, "take", APP, [counter], None, T0) == TAKEN
    assert await call(store, "take", APP, [counter], key(), T0) == 0
    state = await call(store, "get_approval", APP, "r1", T0)
    assert state is not None
    assert state.state == "approved"
    assert await call(store, "take", APP, [], key(), T0) == TAKEN


async def test_a_rejection_is_told_once_then_the_call_asks_anew(store: Store, call: Call) -> None:
    await ask(store, call)
    assert await call(store, "decide_approval", APP, "r1", False, "bob", T0) is True
    assert await call(store, "get_approval", APP, "r1", T0) == ApprovalState(
        req(), "rejected", "bob"
    )
    assert await call(store, "take", APP, [], key(), T0) == APPROVAL_MISSING
    assert await call(store, "decide_approval", APP, "r1", True, "bob", T0) is False
    assert await call(store, "pending_approvals", APP, T0) == []
    # asking again reports the rejection, and closes the request
    told = await ask(store, call, req("r2"), T0 + 1)
    assert told == ApprovalState(req(), "rejected", "bob")
    assert await call(store, "get_approval", APP, "r1", T0 + 1) is None
    assert await call(store, "find_approval", APP, CALL, T0 + 1) is None
    # the next ask opens a new request
    assert await ask(store, call, req("r2"), T0 + 2) == ApprovalState(req("r2"), "pending")
    assert await call(store, "pending_approvals", APP, T0 + 2) == [req("r2")]


async def test_decide_unknown_or_expired_is_false(store: Store, call: Call) -> None:
    assert await call(store, "decide_approval", APP, "nope", True, "bob", T0) is False
    await ask(store, call, req(expires_at=T0 + 10))
    assert await call(store, "decide_approval", APP, "r1", True, "bob", T0 + 10) is False
    assert await call(store, "get_approval", APP, "r1", T0 + 10) is None
    assert await call(store, "find_approval", APP, CALL, T0 + 10) is None
    assert await call(store, "get_approval", APP, "r1", T0 + 9) == ApprovalState(
        req(expires_at=T0 + 10), "pending", None
    )


async def test_asking_again_returns_the_live_request(store: Store, call: Call) -> None:
    first = req(expires_at=T0 + 30)
    await ask(store, call, first)
    again = await ask(store, call, req("other", T0 + 90), T0 + 1)
    assert again == ApprovalState(first, "pending")  # the same request, not a second
    await call(store, "decide_approval", APP, "r1", True, "bob", T0)
    again = await ask(store, call, req("other", T0 + 90), T0 + 5)
    assert again == ApprovalState(first, "approved", "bob")  # not reset to pending
    assert await call(store, "pending_approvals", APP, T0 + 5) == []
    # once expired, asking again starts a new pending request
    fresh = req("r2", T0 + 90)
    assert await ask(store, call, fresh, T0 + 30) == ApprovalState(fresh, "pending", None)
    assert await call(store, "pending_approvals", APP, T0 + 30) == [fresh]
    assert await call(store, "get_approval", APP, "r1", T0 + 30) is None


async def test_pending_listing_order_and_expiry(store: Store, call: Call) -> None:
    late = req("a-late", T0 + 30)
    b_soon = req("b-soon", T0 + 10)
    a_soon = req("a-soon", T0 + 10)
    decided = req("decided", T0 + 20)
    for r in (late, b_soon, decided, a_soon):
        await ask(store, call, r, digest=r.id)  # one call each
    await call(store, "decide_approval", APP, "decided", True, "bob", T0)
    assert await call(store, "pending_approvals", APP, T0) == [a_soon, b_soon, late]
    assert await call(store, "pending_approvals", APP, T0 + 9.5) == [a_soon, b_soon, late]
    assert await call(store, "pending_approvals", APP, T0 + 10) == [late]
    assert await call(store, "pending_approvals", APP, T0 + 30) == []


async def test_approval_expired_at_take(store: Store, call: Call) -> None:
    counter = Counter("c", 1, T0 + 600)
    await ask(store, call, req(expires_at=T0 + 10))
    await call(store, "decide_approval", APP, "r1", True, "bob", T0)
    assert await call(store, "take", APP, [counter], key(), T0 + 10) == APPROVAL_MISSING
    assert await call(store, "take", APP, [counter], None, T0 + 10) == TAKEN  # not consumed


async def test_namespaces_never_meet(store: Store, call: Call) -> None:
    """Two apps in one store: each sees, counts and decides only its own."""
    counter = Counter("same-key", 1, T0 + 60)
    assert await call(store, "take", "app-a", [counter], None, T0) == TAKEN
    assert await call(store, "take", "app-b", [counter], None, T0) == TAKEN  # its own count
    assert await call(store, "take", "app-a", [counter], None, T0) == 0
    await ask(store, call, req("ra"), namespace="app-a")
    assert await call(store, "pending_approvals", "app-b", T0) == []
    assert await call(store, "get_approval", "app-b", "ra", T0) is None
    assert await call(store, "find_approval", "app-b", CALL, T0) is None
    assert await call(store, "decide_approval", "app-b", "ra", True, "bob", T0) is False
    # the same call digest in app-b is app-b's own request
    assert (await ask(store, call, req("rb"), namespace="app-b")).request.id == "rb"
    assert await call(store, "decide_approval", "app-a", "ra", True, "bob", T0) is True
    assert await call(store, "take", "app-b", [], key("ra"), T0) == APPROVAL_MISSING
    assert await call(store, "take", "app-b", [], key("rb"), T0) == APPROVAL_MISSING
    assert await call(store, "take", "app-a", [], key("ra"), T0) == TAKEN
    assert await call(store, "pending_approvals", "app-b", T0) == [req("rb")]


async def test_snapshots_are_kept_per_holder_and_replaced_only_unchanged(
    store: Store, call: Call
) -> None:
    await ask(store, call, holder="h1", snapshot="one")
    await ask(store, call, req("x"), holder="h2", snapshot="two")
    found = await call(store, "find_approval", APP, CALL, T0)
    assert sorted(found.snapshots) == [("h1", "one"), ("h2", "two")]
    # a holder saves again: its snapshot moves on; only live requests of the call
    saved = await call(store, "save_snapshot", APP, [key(), key("dead")], "h1", "one+", T0)
    assert saved == [True, False]
    # h3 restored h1 (as it is now) and h2 (as it was): only h1's is replaced
    replaces = (("h1", sha1("one+")), ("h2", sha1("stale")))
    await ask(store, call, req("y"), holder="h3", snapshot="three", replaces=replaces)
    found = await call(store, "find_approval", APP, CALL, T0)
    assert sorted(found.snapshots) == [("h2", "two"), ("h3", "three")]
    # used: nothing is saved with it any more
    await call(store, "decide_approval", APP, "r1", True, "bob", T0)
    assert await call(store, "take", APP, [], key(), T0) == TAKEN
    assert await call(store, "save_snapshot", APP, [key()], "h1", "late", T0) == [False]
    assert await call(store, "find_approval", APP, CALL, T0) is None


async def test_a_rejected_request_takes_no_more_snapshots(store: Store, call: Call) -> None:
    await ask(store, call)
    await call(store, "decide_approval", APP, "r1", False, "bob", T0)
    assert await call(store, "save_snapshot", APP, [key()], "h1", "late", T0) == [False]


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
        result = store.take(APP, counters, None, now)
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
    from d2.core.stores import ApprovalKey, Counter
    from d2.core.stores.redis import RedisStore

    url, prefix, mode, now = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = RedisStore.from_url(url, prefix=prefix, timeout=5)
    store.get_approval("app-a", "warm-up", now)  # connected before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "budget":
        counter = Counter("shared", 100, now + 60)
        results = [store.take("app-a", [counter], None, now) for _ in range(50)]
    else:
        results = [store.take("app-a", [], ApprovalKey("c" * 64, "r1"), now)]
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
        store.request_approval(APP, req(), CALL, "h1", "{}", (), T0)
        assert store.decide_approval(APP, "r1", True, "bob", T0)
        results = race(redis_url, store_prefix, "approval")
        assert sorted(results) == [APPROVAL_MISSING] * 7 + [TAKEN]
        assert store.get_approval(APP, "r1", T0) is None
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
        store.take("app:one", [Counter("c", 5, T0 + 2)], None, T0)
        store.request_approval("app:one", req(expires_at=T0 + 30), CALL, "h1", "{}", (), T0)
        keys = sorted(k.decode() for k in raw.keys(store_prefix + "*"))
        app = f"{store_prefix}app%3Aone:"  # the namespace, percent-encoded: no ':' inside
        assert keys == [
            f"{app}approval:r1",
            f"{app}call:{CALL}",
            f"{app}count:c",
            f"{app}pending",
        ]
        assert 0 < raw.pttl(f"{app}count:c") <= 2000
        assert 28_000 < raw.pttl(f"{app}approval:r1") <= 30_000
        assert 28_000 < raw.pttl(f"{app}call:{CALL}") <= 30_000
        # a window that already ended (expires_at <= now) still gets a TTL
        store.take("app:one", [Counter("gone", 5, T0 - 5)], None, T0)
        assert raw.pttl(f"{app}count:gone") in (-2, 0, 1)
        with pytest.raises(StoreUnavailableError, match=r"metadata\.name"):
            store.take("", [Counter("c", 5, T0 + 2)], None, T0)  # never unscoped
    finally:
        raw.close()
        store.close()


async def test_redis_down_then_back(redis_instance: RedisServer) -> None:
    from d2.core.stores.redis import RedisStore

    store = RedisStore.from_url(redis_instance.url, prefix=prefix(), timeout=0.5)
    counter = Counter("c", 10, T0 + 60)
    try:
        assert store.take(APP, [counter], None, T0) == TAKEN
        assert await store.take_async(APP, [counter], None, T0) == TAKEN
        redis_instance.stop()
        with pytest.raises(StoreUnavailableError) as sync_error:
            store.take(APP, [counter], None, T0)
        with pytest.raises(StoreUnavailableError) as async_error:
            await store.take_async(APP, [counter], None, T0)
        with pytest.raises(StoreUnavailableError):
            store.pending_approvals(APP, T0)
        with pytest.raises(StoreUnavailableError):
            await store.request_approval_async(APP, req(), CALL, "h", "{}", (), T0)
        for error in (sync_error, async_error):
            assert redis_instance.url in str(error.value)
            assert "check that Redis is running" in str(error.value)
        redis_instance.start()
        # the server came back empty: the clients reconnect and count from zero
        assert store.take(APP, [counter], None, T0) == TAKEN
        assert await store.take_async(APP, [counter], None, T0) == TAKEN
        assert await store.request_approval_async(
            APP, req(), CALL, "h", "{}", (), T0
        ) == ApprovalState(req(), "pending")
    finally:
        await store.aclose()


def test_unavailable_message_hides_the_password(redis_instance: RedisServer) -> None:
    from d2.core.stores.redis import RedisStore

    url = f"redis://:s3cret-pw@127.0.0.1:{redis_instance.port}/0?password=s3cret-pw"
    store = RedisStore.from_url(url, prefix=prefix())
    try:
        redis_instance.stop()
        with pytest.raises(StoreUnavailableError) as error:
            store.take(APP, [Counter("c", 1, T0 + 1)], None, T0)
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
        assert both.request_approval(APP, req(), CALL, "h", "{}", (), T0).state == "pending"
        assert await both.decide_approval_async(APP, "r1", True, "bob", T0)
        assert await only_sync.get_approval_async(APP, "r1", T0) == ApprovalState(
            req(), "approved", "bob"
        )
        assert await only_sync.take_async(APP, [], key(), T0) == TAKEN
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
