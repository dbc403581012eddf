"""The poll cache's two halves: the coalesced epoch reads (no request is answered
from an epoch read that began before it arrived) and the poll epoch itself (every
change of what a poll reads replaces it, on both databases, whoever writes)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import time

import pytest
import sqlalchemy as sa
from d2.server import ControlPlane, SQLStorage
from d2.server.database import open_engine
from d2.server.pollcache import EpochReader, PollCache
from d2.server.storage import App, Principal
from d2.server.testing import DeviceKey
from hypothesis import given
from hypothesis import strategies as st

from .conftest import Databases


class _Fetches:
    """A fetch the test finishes by hand: fetch ``n`` returns ``"v<n>"``."""

    def __init__(self) -> None:
        self.started = 0
        self.gates: list[asyncio.Future[None]] = []
        self.fail: set[int] = set()

    async def __call__(self) -> str:
        self.started += 1
        n = self.started
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        if n in self.fail:
            raise ConnectionError(f"fetch {n} failed")
        return f"v{n}"

    def finish(self) -> None:
        self.gates.pop(0).set_result(None)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_read_that_begins_during_a_fetch_waits_for_the_next_one() -> None:
    async def scenario() -> None:
        fetches = _Fetches()
        reader = EpochReader(fetches)
        first = asyncio.create_task(reader.read())
        await _settle()
        assert fetches.started == 1
        late = [asyncio.create_task(reader.read()) for _ in range(3)]
        await _settle()
        assert fetches.started == 1  # no second fetch while the first is in flight
        fetches.finish()
        assert await first == "v1"
        await _settle()
        assert fetches.started == 2  # one fetch answers all three late readers
        assert not any(t.done() for t in late)
        fetches.finish()
        assert [await t for t in late] == ["v2", "v2", "v2"]
        await _settle()
        assert fetches.started == 2  # nobody waiting: no fetch

    asyncio.run(scenario())


@given(st.lists(st.sampled_from(["read", "finish"]), max_size=30))
def test_every_read_is_answered_by_a_fetch_that_began_after_it(ops: list[str]) -> None:
    async def scenario() -> None:
        fetches = _Fetches()
        reader = EpochReader(fetches)
        calls: list[tuple[int, asyncio.Task[str]]] = []
        for op in ops:
            if op == "read":
                calls.append((fetches.started, asyncio.create_task(reader.read())))
            elif fetches.gates:
                fetches.finish()
            await _settle()
        while fetches.gates:
            fetches.finish()
            await _settle()
        for started_before, task in calls:
            assert int((await task)[1:]) > started_before

    asyncio.run(scenario())


def test_a_failed_fetch_fails_its_readers_and_the_next_read_fetches_again() -> None:
    async def scenario() -> None:
        fetches = _Fetches()
        fetches.fail.add(1)
        reader = EpochReader(fetches)
        waiting = [asyncio.create_task(reader.read()) for _ in range(2)]
        await _settle()
        fetches.finish()
        for task in waiting:
            with pytest.raises(ConnectionError, match="fetch 1 failed"):
                await task
        again = asyncio.create_task(reader.read())
        await _settle()
        fetches.finish()
        assert await again == "v2"

    asyncio.run(scenario())


def test_a_reader_that_goes_away_does_not_cancel_the_others() -> None:
    async def scenario() -> None:
        fetches = _Fetches()
        reader = EpochReader(fetches)
        gone, stays = asyncio.create_task(reader.read()), asyncio.create_task(reader.read())
        await _settle()
        gone.cancel()
        await _settle()
        fetches.finish()
        assert await stays == "v1"

    asyncio.run(scenario())


def test_a_new_event_loop_gets_a_working_reader() -> None:
    fetches = _Fetches()
    reader = EpochReader(fetches)

    async def one_read() -> str:
        task = asyncio.create_task(reader.read())
        await _settle()
        fetches.finish()
        return await task

    assert asyncio.run(one_read()) == "v1"
    assert asyncio.run(one_read()) == "v2"  # e.g. a second test client


# the poll epoch, on both databases


def _publishing(plane: ControlPlane, app: App) -> tuple[DeviceKey, Principal]:
    developer = plane.authenticate("Bearer " + plane.create_token(app, "developer"))
    key = DeviceKey()
    plane.register_key(developer, key.registration)
    return key, developer


def _publish_first(plane: ControlPlane, key: DeviceKey, developer: Principal) -> None:
    body = json.dumps({"metadata": {"name": "acme"}, "policies": []}).encode()
    plane.publish(
        developer,
        body,
        key_id=key.key_id,
        signature=key.sign(body),
        if_match=None,
        if_none_match="*",
    )


def test_every_write_a_poll_reads_replaces_the_epoch_and_usage_events_do_not(
    plane: ControlPlane, storage: SQLStorage
) -> None:
    seen = {storage.poll_epoch()}

    def changed() -> bool:
        epoch = storage.poll_epoch()
        new = epoch not in seen
        seen.add(epoch)
        return new

    assert storage.poll_epoch() in seen  # reading does not change it
    plane.ensure_signing_key()
    assert changed()
    _, app = plane.create_account("acme")
    assert changed()
    runtime = plane.create_token(app, "runtime")
    assert changed()
    key, developer = _publishing(plane, app)  # a token (changes), then a device key
    assert changed()
    # what no poll reads leaves the epoch (and every replica's cache) alone: the
    # same device key again, a draft (seventh review: another tenant's no-op
    # requests emptied every cache)
    storage.add_device_key(app.id, key.key_id, base64.b64decode(key.public_key_b64), 0.0)
    storage.put_draft(app.id, 0, "{}", 0.0)
    assert not changed()
    _publish_first(plane, key, developer)
    assert changed()
    plane.rotate_key(overlap=60)
    assert changed()
    plane.revoke(developer)
    assert changed()
    sender = plane.authenticate(f"Bearer {plane.create_token(app, 'runtime')}")
    assert changed()
    assert runtime
    events = json.dumps(
        {"events": [{"event_type": "x", "payload": {}, "occurred_at": "2026-01-01T00:00:00Z"}]}
    ).encode()
    plane.ingest(sender, events)
    assert not changed()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE tokens SET scopes = 'events:write'",
        "DELETE FROM tokens",
        "UPDATE apps SET revoked = 1",
        "UPDATE accounts SET plan = 'free'",
        "UPDATE signing_keys SET retired_at = 1",
        "INSERT INTO apps (account_id, name, created_at) SELECT id, 'other', 0 FROM accounts",
    ],
)
def test_a_write_by_hand_replaces_the_epoch(
    plane: ControlPlane, storage: SQLStorage, databases: Databases, statement: str
) -> None:
    plane.ensure_signing_key()
    _, app = plane.create_account("acme")
    plane.create_token(app, "runtime")
    before = storage.poll_epoch()
    engine = open_engine(storage.engine.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    assert storage.poll_epoch() != before


def test_without_its_row_the_epoch_never_repeats(storage: SQLStorage) -> None:
    with storage.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM poll_epoch"))
    assert storage.poll_epoch() != storage.poll_epoch()


def test_the_cache_serves_a_token_until_the_epoch_changes(
    plane: ControlPlane, storage: SQLStorage
) -> None:
    plane.ensure_signing_key()
    _, app = plane.create_account("acme")
    token_hash = plane.poll_token_hash("Bearer " + plane.create_token(app, "runtime"))
    assert token_hash is not None
    reads: list[str] = []
    real = storage.poll_state

    def counted(h: str):  # type: ignore[no-untyped-def]
        reads.append(h)
        return real(h)

    storage.poll_state = counted  # type: ignore[method-assign]
    cache = PollCache(storage)
    first = asyncio.run(cache.state(token_hash))
    assert first is not None and first.scopes == ("policy:read", "events:write")
    assert asyncio.run(cache.state(token_hash)) == first
    assert len(reads) == 1  # the second answer came from the cache
    assert asyncio.run(cache.state("0" * 64)) is None  # unknown tokens: always read
    plane.create_token(app, "developer")  # any write a poll reads: read again
    again = asyncio.run(cache.state(token_hash))
    assert again is not None and again.epoch != first.epoch
    assert dataclasses.replace(again, epoch=None) == dataclasses.replace(first, epoch=None)
    assert len(reads) == 3


# the seventh review's attacks on the cache


def test_an_entry_is_kept_under_its_own_snapshot_s_epoch_so_a_restore_cannot_revive_it(
    plane: ControlPlane, storage: SQLStorage
) -> None:
    """A publish that commits between a request's epoch read and its state read
    used to be cached under the older epoch; restoring a backup taken at that
    epoch (to roll the publish back) brought the epoch back, and the replica
    served the rolled-back bundle."""
    plane.ensure_signing_key()
    _, app = plane.create_account("acme")
    token_hash = plane.poll_token_hash("Bearer " + plane.create_token(app, "runtime"))
    assert token_hash is not None
    key, developer = _publishing(plane, app)
    before = storage.poll_epoch()  # "the backup" is taken here: no policy yet
    real = storage.poll_state

    def publish_then_read(h: str):  # type: ignore[no-untyped-def]
        _publish_first(plane, key, developer)
        return real(h)

    storage.poll_state = publish_then_read  # type: ignore[method-assign]
    cache = PollCache(storage)
    assert asyncio.run(cache.state(token_hash)).current_version == 1  # type: ignore[union-attr]
    storage.poll_state = real  # type: ignore[method-assign]
    # the restore: the data as it was, then the backup's epoch row
    with storage.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM bundles"))
        conn.execute(sa.text("DELETE FROM versions"))
        conn.execute(sa.text("UPDATE apps SET current_version = 0"))
        conn.execute(sa.text("UPDATE poll_epoch SET token = :t"), {"t": before})
    assert storage.poll_epoch() == before
    restored = asyncio.run(cache.state(token_hash))
    assert restored is not None and restored.current_version == 0


def test_triggers_fire_for_replication_sessions_too(
    plane: ControlPlane, storage: SQLStorage, databases: Databases
) -> None:
    """``session_replication_role = replica`` (logical replication, restore tools)
    skips ordinary triggers: a revocation written that way went unseen."""
    if databases.kind != "postgresql":
        pytest.skip("a PostgreSQL setting")
    plane.ensure_signing_key()
    plane.create_account("acme")
    before = storage.poll_epoch()
    with storage.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        conn.execute(sa.text("UPDATE apps SET revoked = 1"))
    assert storage.poll_epoch() != before


def test_a_lost_epoch_connection_is_replaced_on_the_next_read(
    storage: SQLStorage, databases: Databases
) -> None:
    """The epoch's connection is not pooled (no pre-ping): after the database
    closed it (a restart, an idle reaper), reads failed until it was replaced."""
    if databases.kind != "postgresql":
        pytest.skip("a connection to a PostgreSQL server")
    epoch = storage.poll_epoch()
    pid = storage._epoch_conn.info.backend_pid
    with storage.engine.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    time.sleep(0.2)
    assert storage.poll_epoch() == epoch


def test_a_write_waits_for_a_lock_at_most_its_timeout(databases: Databases) -> None:
    """An operator's transaction left open on a table a poll reads holds the epoch's
    row: writes fail after the storage's lock timeout instead of hanging."""
    if databases.kind != "postgresql":
        pytest.skip("SQLite's busy timeout is the same bound")
    db = databases.location(migrated=True)
    storage = SQLStorage(db, busy_timeout=0.5)
    plane = ControlPlane(storage)
    try:
        plane.ensure_signing_key()
        _, app = plane.create_account("acme")
        engine = open_engine(db)
        try:
            with engine.connect() as operator:
                operator.execute(sa.text("BEGIN"))
                operator.execute(sa.text("UPDATE apps SET revoked = 0 WHERE id = -1"))
                started = time.monotonic()
                with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                    plane.create_token(app, "runtime")
                assert time.monotonic() - started < 10
                operator.execute(sa.text("ROLLBACK"))
        finally:
            engine.dispose()
        assert plane.create_token(app, "runtime")  # the lock is gone: writes work
    finally:
        storage.close()


def test_one_reader_serves_several_event_loops_at_once() -> None:
    """One application served by two event loops (two threads): each loop's
    readers used to orphan the other's, and polls hung."""
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        return "e"

    reader = EpochReader(fetch)
    results: list[list[str]] = []

    def serve() -> None:
        async def many() -> list[str]:
            return list(await asyncio.gather(*(reader.read() for _ in range(200))))

        results.append(asyncio.run(asyncio.wait_for(many(), timeout=10)))

    threads = [threading.Thread(target=serve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert [len(r) for r in results] == [200, 200]
    assert all(v == "e" for r in results for v in r)


def test_libpq_options_in_the_url_are_kept_beside_the_lock_timeout(databases: Databases) -> None:
    if databases.kind != "postgresql":
        pytest.skip("libpq options")
    url = databases.location() + "?options=-c%20statement_timeout%3D12345"
    engine = open_engine(url, busy_timeout=2)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "2s"
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "12345ms"
    finally:
        engine.dispose()
