"""Usage-event retention on a real database (a SQLite file, PostgreSQL): expired
events and events beyond an app's cap are deleted, in batches, through indexes, by a
background pruner."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from d2.server import ControlPlane, Quotas, ServerConfig, SQLStorage
from d2.server.database import WRITE
from d2.server.retention import EventPruner, PruneReport
from d2.server.storage import App, EventCap, Principal
from d2.server.store import event_bytes
from d2.server.tables import events
from d2.server.testing import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DAY = 86400.0
EVENT = ("decision", '{"tool":"t"}', "2025-01-01T00:00:00Z")
EVENT_BYTES = len("decision") + len('{"tool":"t"}') + len("2025-01-01T00:00:00Z")


def _plane(storage: SQLStorage, clock: FakeClock, **settings: object) -> ControlPlane:
    return ControlPlane(storage, ServerConfig(clock=clock, **settings))  # type: ignore[arg-type]


def _apps(plane: ControlPlane, *names: str) -> list[App]:
    account, first = plane.create_account(names[0], Quotas(event_batch=1000))
    return [first, *(plane.app(account.id, n) for n in names[1:])]


def _add(
    storage: SQLStorage, app: App, n: int, at: float, event: tuple[str, str, str] = EVENT
) -> None:
    storage.add_events(app.id, "h", [event] * n, at)


def _principal(plane: ControlPlane, app: App) -> Principal:
    return plane.authenticate(f"Bearer {plane.create_token(app, 'runtime')}")


def _stored(storage: SQLStorage, app: App) -> list[float]:
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events.c.received_at).where(events.c.app_id == app.id).order_by(events.c.id)
        )
        return [r[0] for r in rows]


class _Statements:
    """The SQL statements the storage sends, and its write transactions."""

    def __init__(self, storage: SQLStorage) -> None:
        self.engine = storage.engine
        self.sent: list[tuple[str, Any]] = []
        self.writes = 0

    def _sent(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.sent.append((statement, parameters))

    def _begin(self, conn: sa.Connection) -> None:
        self.writes += bool(conn.get_execution_options().get(WRITE))

    def __enter__(self) -> _Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._sent)
        sa.event.listen(self.engine, "begin", self._begin)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._sent)
        sa.event.remove(self.engine, "begin", self._begin)


def _body(n: int, tag: str = "t") -> bytes:
    item = f'{{"event_type":"decision","payload":{{"tool":"{tag}"}},"occurred_at":"{EVENT[2]}"}}'
    return ('{"events":[' + ",".join([item] * n) + "]}").encode()


# retention by age


def test_events_older_than_the_retention_are_deleted_and_recent_ones_kept(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock, events_retention_days=30)
    shop, blog = _apps(plane, "shop", "blog")
    start = clock()
    _add(storage, shop, 5, start - 40 * DAY)
    _add(storage, blog, 3, start - 30 * DAY - 1)  # just past the retention
    _add(storage, shop, 2, start - 30 * DAY + 1)  # just inside it
    _add(storage, blog, 4, start)
    report = EventPruner(plane).prune()
    assert report == PruneReport(expired=8, over_cap=0, batches=1)
    assert _stored(storage, shop) == [start - 30 * DAY + 1] * 2
    assert _stored(storage, blog) == [start] * 4
    assert storage.event_usage(shop.id).events == 2 and storage.event_usage(blog.id).events == 4
    # time passes: what was recent expires in its turn
    clock.advance(30 * DAY)
    assert EventPruner(plane).prune().expired == 2  # blog's are exactly 30 days old: kept
    clock.advance(1)
    assert EventPruner(plane).prune().expired == 4
    assert storage.event_usage(shop.id).events == storage.event_usage(blog.id).events == 0


def test_a_large_backlog_is_pruned_in_batches_of_the_configured_size(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock, events_prune_batch=100)
    (app,) = _apps(plane, "shop")
    _add(storage, app, 1050, clock() - 365 * DAY)
    _add(storage, app, 7, clock())
    with _Statements(storage) as statements:
        report = EventPruner(plane, pause=0).prune()
    assert report == PruneReport(expired=1050, over_cap=0, batches=11)
    assert statements.writes == 11  # one write transaction per batch
    deletes = [s for s, _ in statements.sent if s.startswith("DELETE FROM events")]
    assert len(deletes) == 11
    assert storage.event_usage(app.id).events == len(_stored(storage, app)) == 7


def test_one_batch_deletes_at_most_its_limit_oldest_first(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock)
    (app,) = _apps(plane, "shop")
    for age in (50, 40, 60):  # inserted out of order: received_at decides
        _add(storage, app, 3, clock() - age * DAY)
    assert storage.delete_events_before(clock() - 31 * DAY, 4) == 4
    assert sorted(_stored(storage, app)) == [clock() - 50 * DAY] * 2 + [clock() - 40 * DAY] * 3


# the per-app cap


def test_ingest_beyond_the_cap_keeps_the_newest_events_of_that_app_only(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock, events_max_per_app=10)
    shop, blog = _apps(plane, "shop", "blog")
    shop_token, blog_token = _principal(plane, shop), _principal(plane, blog)
    assert plane.ingest(blog_token, _body(6)) == 6
    for second in range(4):  # 4 uploads of 4 events: 16 accepted, the newest 10 kept
        clock.set(1_700_000_000.0 + second)
        assert plane.ingest(shop_token, _body(4)) == 4
    assert (
        _stored(storage, shop)
        == [1_700_000_001.0] * 2 + [1_700_000_002.0] * 4 + [1_700_000_003.0] * 4
    )
    assert storage.event_usage(shop.id).events == 10
    assert storage.event_usage(blog.id).events == len(_stored(storage, blog)) == 6


def test_one_upload_larger_than_the_cap_keeps_its_newest_events(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock, events_max_per_app=3)
    (shop,) = _apps(plane, "shop")
    items = [{"event_type": f"e{i}", "payload": {}, "occurred_at": EVENT[2]} for i in range(8)]
    body = json.dumps({"events": items}).encode()
    assert plane.ingest(_principal(plane, shop), body) == 8  # accepted: 202
    assert [e.event_type for e in storage.events(shop.id)] == ["e5", "e6", "e7"]


def test_the_byte_cap_drops_the_oldest_events_until_the_app_fits(
    storage: SQLStorage, clock: FakeClock
) -> None:
    cap = 64 * 1024
    plane = _plane(storage, clock, events_max_bytes_per_app=cap)
    shop, blog = _apps(plane, "shop", "blog")
    small = _principal(plane, blog)
    plane.ingest(small, _body(10))
    fat = _principal(plane, shop)
    filler = "x" * 30_000
    for _ in range(5):  # 5 uploads of one ~30 KB event: only two fit in 64 KiB
        plane.ingest(fat, _body(1, filler))
    usage = storage.event_usage(shop.id)
    assert usage.events == 2 and usage.bytes <= cap
    assert storage.event_usage(blog.id).events == 10


def test_small_events_are_dropped_to_make_room_for_a_large_one(
    storage: SQLStorage, clock: FakeClock
) -> None:
    cap = 40 * 1024
    plane = _plane(storage, clock, events_max_bytes_per_app=cap)
    (shop,) = _apps(plane, "shop")
    token = _principal(plane, shop)
    for _ in range(4):
        plane.ingest(token, _body(500))  # 500 small events, ~20 KB per upload
    assert storage.event_usage(shop.id).bytes <= cap
    plane.ingest(token, _body(1, "x" * 30_000))  # frees ~1,400 small events at once
    usage = storage.event_usage(shop.id)
    assert usage.bytes <= cap and storage.events(shop.id)[-1].payload.startswith('{"tool":"xx')


def test_lowering_the_cap_is_caught_up_by_the_pruner_in_batches(
    storage: SQLStorage, clock: FakeClock
) -> None:
    (shop, blog) = _apps(_plane(storage, clock), "shop", "blog")
    _add(storage, shop, 950, clock())
    _add(storage, blog, 40, clock())
    plane = _plane(storage, clock, events_max_per_app=50, events_prune_batch=100)
    assert storage.apps_over_event_cap(plane.event_cap) == [shop.id]
    report = EventPruner(plane, pause=0).prune()
    # 1 expiry batch (nothing to do), 9 full trims, 1 that finds the app within its cap
    assert report == PruneReport(expired=0, over_cap=900, batches=1 + 9 + 1)
    assert storage.event_usage(shop.id).events == 50 and storage.event_usage(blog.id).events == 40
    assert storage.apps_over_event_cap(plane.event_cap) == []


def test_an_ingest_on_an_app_far_over_a_lowered_cap_trims_a_bounded_batch(
    storage: SQLStorage, clock: FakeClock
) -> None:
    (shop,) = _apps(_plane(storage, clock), "shop")
    _add(storage, shop, 5000, clock())
    plane = _plane(storage, clock, events_max_per_app=10, events_prune_batch=100)
    plane.ingest(_principal(plane, shop), _body(3))
    # the request deleted at most its bound (a prune batch, 100 here, as the upload
    # itself needs fewer), not the whole 4,993 excess
    assert storage.event_usage(shop.id).events == 5003 - 100
    EventPruner(plane, pause=0).prune()
    assert storage.event_usage(shop.id).events == 10


# indexes and counters


def _plans(storage: SQLStorage, statements: list[tuple[str, Any]]) -> list[str]:
    """The query plan of each statement (PostgreSQL: with sequential scans priced
    out, so a plan still scanning the table means no index can serve it)."""
    plans = []
    with storage.engine.connect() as conn:
        if storage.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            explain, column = "EXPLAIN", 0
        else:
            explain, column = "EXPLAIN QUERY PLAN", 3
        for sql, parameters in statements:
            rows = conn.exec_driver_sql(f"{explain} {sql}", parameters)
            plans.append(" | ".join(str(r[column]) for r in rows))
        conn.rollback()
    return plans


def test_every_pruning_statement_uses_an_index(storage: SQLStorage, clock: FakeClock) -> None:
    plane = _plane(storage, clock, events_max_per_app=5, events_max_bytes_per_app=64 * 1024)
    shop, blog = _apps(plane, "shop", "blog")
    _add(storage, shop, 20, clock() - 60 * DAY)
    _add(storage, shop, 20, clock())
    _add(storage, blog, 20, clock())
    with _Statements(storage) as statements:
        report = EventPruner(plane, pause=0).prune()
        plane.ingest(_principal(plane, blog), _body(1, "x" * 30_000))  # a trim by bytes
    assert report.expired == 20 and report.over_cap == 30
    on_events = [
        (sql, parameters)
        for sql, parameters in statements.sent
        if "FROM events" in sql and sql.startswith(("SELECT", "DELETE"))
    ]
    assert {sql.split()[0] for sql, _ in on_events} == {"SELECT", "DELETE"}
    for (sql, _), plan in zip(on_events, _plans(storage, on_events), strict=True):
        assert "SCAN events" not in plan and "Seq Scan on events" not in plan, (sql, plan)
        indexed = ("events_by_received", "events_by_app", "PRIMARY KEY", "events_pkey")
        assert any(name in plan for name in indexed), (sql, plan)  # the ids chosen: by key


def _true_usage(storage: SQLStorage) -> dict[int, tuple[int, int]]:
    """Each app's events and bytes, counted here from the rows themselves."""
    usage: dict[int, tuple[int, int]] = {}
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events.c.app_id, events.c.event_type, events.c.payload, events.c.occurred_at)
        )
        for app_id, *event in rows:
            n, b = usage.get(app_id, (0, 0))
            usage[app_id] = (n + 1, b + event_bytes(*event))
    return usage


def _counted(storage: SQLStorage) -> dict[int, tuple[int, int]]:
    with storage.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT app_id, events, bytes FROM event_counts")
        return {r[0]: (r[1], r[2]) for r in rows if r[1]}


# what the API lets through: no lone surrogate anywhere (strictjson refuses one,
# as UTF-8 cannot hold it), no NUL in an event_type (PostgreSQL cannot store it)
_chars = st.characters(exclude_categories=("Cs",))
_events = st.lists(
    st.tuples(
        st.text(
            st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
            min_size=1,
            max_size=5,
        ),
        st.dictionaries(st.text(_chars, max_size=3), st.text(_chars, max_size=6), max_size=2),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 2), _events, st.integers(0, 3)),
            st.tuples(st.just("expire"), st.integers(0, 3), st.integers(1, 4)),
            st.tuples(st.just("trim"), st.integers(0, 2), st.integers(1, 6), st.integers(1, 300)),
        ),
        max_size=12,
    )
)
def test_the_stored_counts_always_equal_the_events_table(
    new_storage: Callable[[], SQLStorage], steps: list[tuple[object, ...]]
) -> None:
    store = new_storage()
    try:
        store.create_account("acc", Quotas(), 0.0)
        apps = [store.ensure_app("acc", f"a{i}", 0.0) for i in range(3)]
        for step in steps:
            if step[0] == "add":
                _, i, items, day = step
                assert isinstance(items, list) and isinstance(i, int) and isinstance(day, int)
                events = [(t, json.dumps(p, ensure_ascii=False), EVENT[2]) for t, p in items]
                store.add_events(apps[i].id, "h", events, day * DAY, cap=EventCap(8, 200))
                usage = store.event_usage(apps[i].id)
                assert usage.events <= 8 and usage.bytes <= 200
            elif step[0] == "expire":
                _, day, limit = step
                assert isinstance(day, int) and isinstance(limit, int)
                store.delete_events_before(day * DAY, limit)
            else:
                _, i, n, b = step
                assert isinstance(i, int) and isinstance(n, int) and isinstance(b, int)
                store.trim_events(apps[i].id, EventCap(n, b), 3)
            assert _counted(store) == _true_usage(store)
    finally:
        store.close()


def test_counts_follow_an_operator_deleting_or_moving_events_by_hand(
    storage: SQLStorage, clock: FakeClock
) -> None:
    plane = _plane(storage, clock)
    shop, blog = _apps(plane, "shop", "blog")
    _add(storage, shop, 5, clock())
    with storage.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM events WHERE id = (SELECT MIN(id) FROM events)"))
        conn.execute(
            sa.text(
                "UPDATE events SET app_id = :blog, payload = '{}' "
                "WHERE id = (SELECT MAX(id) FROM events)"
            ),
            {"blog": blog.id},
        )
    assert _counted(storage) == _true_usage(storage)
    assert storage.event_usage(shop.id).events == 3 and storage.event_usage(blog.id).events == 1


# the background pruner


@pytest.fixture
def running() -> Iterator[list[EventPruner]]:
    pruners: list[EventPruner] = []
    yield pruners
    for pruner in pruners:
        pruner.stop()


def _wait(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_background_pruner_runs_at_start_then_every_interval(
    storage: SQLStorage, clock: FakeClock, running: list[EventPruner]
) -> None:
    plane = _plane(storage, clock, events_prune_interval=0.2)
    (app,) = _apps(plane, "shop")
    _add(storage, app, 4, clock() - 31 * DAY)
    pruner = EventPruner(plane)
    running.append(pruner)
    pruner.start()
    _wait(lambda: storage.event_usage(app.id).events == 0)  # the startup pass
    _add(storage, app, 2, clock())
    clock.advance(31 * DAY)
    _wait(lambda: storage.event_usage(app.id).events == 0)  # a later pass, unprompted
    # its report is recorded once the pass returns, just after its last delete
    _wait(lambda: pruner.last is not None and pruner.last.expired == 2)
    pruner.stop()
    _add(storage, app, 1, clock() - 31 * DAY)
    time.sleep(0.5)
    assert storage.event_usage(app.id).events == 1  # stopped: no more passes


def test_a_failed_pass_is_logged_and_the_next_one_runs(
    storage: SQLStorage,
    clock: FakeClock,
    running: list[EventPruner],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plane = _plane(storage, clock, events_prune_interval=0.1)
    (app,) = _apps(plane, "shop")
    _add(storage, app, 3, clock() - 31 * DAY)
    real = storage.delete_events_before
    failures = [sa.exc.OperationalError("DELETE", None, OSError("database or disk is full"))]

    def flaky(cutoff: float, limit: int) -> int:
        if failures:
            raise failures.pop()
        return real(cutoff, limit)

    monkeypatch.setattr(storage, "delete_events_before", flaky)
    pruner = EventPruner(plane)
    running.append(pruner)
    with caplog.at_level(logging.INFO, logger="d2.server"):
        pruner.start()
        _wait(lambda: storage.event_usage(app.id).events == 0)
        _wait(lambda: any("pruned 3 expired" in r.getMessage() for r in caplog.records))
    assert any(
        r.levelno == logging.ERROR and "pruning usage events failed" in r.getMessage()
        for r in caplog.records
    )


def test_stop_ends_a_long_pass_between_batches(storage: SQLStorage, clock: FakeClock) -> None:
    plane = _plane(storage, clock, events_prune_batch=10)
    (app,) = _apps(plane, "shop")
    _add(storage, app, 5000, clock() - 31 * DAY)
    pruner = EventPruner(plane, pause=0.05)  # 500 batches: ~25 s if left alone
    pruner.start()
    _wait(lambda: storage.event_usage(app.id).events < 5000)
    began = time.monotonic()
    pruner.stop()
    assert time.monotonic() - began < 2
    assert storage.event_usage(app.id).events > 0
    with pytest.raises(RuntimeError, match="already started"):
        pruner.start()


def test_ingest_and_pruning_running_at_once_never_deadlock_and_keep_the_counts(
    storage: SQLStorage, clock: FakeClock
) -> None:
    # Uploads trim their app (its counts locked, then its oldest events) while the
    # pruner deletes expired events of the same apps: on PostgreSQL both lock the
    # counts first, so they queue instead of deadlocking (a deadlock aborts one).
    plane = _plane(storage, clock, events_max_per_app=300, events_prune_batch=50)
    shop, blog = _apps(plane, "shop", "blog")
    for app in (shop, blog):
        _add(storage, app, 600, clock() - 60 * DAY)  # expired, and over the cap
    tokens = [_principal(plane, app) for app in (shop, blog)]
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def upload(principal: Principal) -> None:
        start.wait()
        try:
            for _ in range(15):
                plane.ingest(principal, _body(20))
        except BaseException as exc:
            errors.append(exc)

    def prune() -> None:
        start.wait()
        try:
            for _ in range(3):
                EventPruner(plane, pause=0).prune()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(t,)) for t in tokens * 2]
    threads.append(threading.Thread(target=prune))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _counted(storage) == _true_usage(storage)
    for app in (shop, blog):
        assert storage.event_usage(app.id).events <= 600 + 2 * 15 * 20
    EventPruner(plane, pause=0).prune()
    assert storage.apps_over_event_cap(plane.event_cap) == []
