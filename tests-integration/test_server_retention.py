"""Usage-event retention on a real d2-server (uvicorn, SQLite file): a leaked runtime
token cannot grow the database past the app's cap, expired events go, and a large
backlog is pruned in batches while the server keeps answering."""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from d2.server import ControlPlane, SQLStorage
from d2.server.testing import D2Server, FakeClock, start_server

DAY = 86400.0
WHEN = "2025-01-01T00:00:00Z"


def _events(n: int, payload: dict[str, object] | None = None) -> dict[str, object]:
    event = {"event_type": "decision", "payload": payload or {"tool": "t", "allowed": True}}
    return {"events": [{**event, "occurred_at": WHEN} for _ in range(n)]}


def _on_disk(server: D2Server) -> int:
    """A SQLite database's bytes once the WAL is folded in (what a backup would
    copy); 0 on PostgreSQL, where deleted rows' space is reclaimed by autovacuum
    later, so only the row counts are checked there."""
    if server.db.startswith("postgresql"):
        return 0
    db = server.db_path
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_many_accepted_uploads_from_one_token_do_not_grow_the_database_past_the_cap(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(events_max_per_app=1500, ingest_burst=10_000)
    client = server.client(server.runtime_token)
    app_id = server.app.id

    def upload(times: int) -> None:
        for _ in range(times):
            r = client.post("/v1/events/ingest", json=_events(250))  # ~25 KB each
            assert r.status_code == 202 and r.json() == {"accepted": 250}

    upload(8)  # 2,000 events accepted: the app is at its cap
    assert server.storage.event_usage(app_id).events == 1500
    at_cap = _on_disk(server)
    upload(60)  # the report: 60 uploads grew the database by 3.75 MB
    assert server.storage.event_usage(app_id).events == 1500
    assert len(server.storage.events(app_id, limit=10_000)) == 1500
    assert _on_disk(server) <= at_cap * 1.1  # freed pages are reused


def test_fat_events_are_bounded_by_the_byte_cap(d2_server_factory: Callable[..., D2Server]) -> None:
    cap = 256 * 1024
    server = d2_server_factory(events_max_bytes_per_app=cap, ingest_burst=10_000)
    client = server.client(server.runtime_token)
    before = _on_disk(server)
    for _ in range(100):  # ~3 MB of 30 KB events, one per upload
        r = client.post("/v1/events/ingest", json=_events(1, {"blob": "x" * 30_000}))
        assert r.status_code == 202
    usage = server.storage.event_usage(server.app.id)
    assert usage.bytes <= cap and usage.events == cap // 30_000
    assert _on_disk(server) - before < 2 * cap


def test_one_app_at_its_cap_leaves_another_app_s_events_alone(
    d2_server_factory: Callable[..., D2Server],
) -> None:
    server = d2_server_factory(events_max_per_app=100, ingest_burst=10_000)
    other = server.add_app("billing")
    assert (
        server.client(other.runtime_token).post("/v1/events/ingest", json=_events(80)).status_code
        == 202
    )
    flood = server.client(server.runtime_token)
    for _ in range(10):
        assert flood.post("/v1/events/ingest", json=_events(50)).status_code == 202
    assert len(server.events()) == 100
    assert len(server.events("billing")) == 80


def test_events_past_the_retention_are_pruned_and_recent_ones_kept(d2_server: D2Server) -> None:
    client = d2_server.client(d2_server.runtime_token)
    assert client.post("/v1/events/ingest", json=_events(3)).status_code == 202
    d2_server.clock.advance(20 * DAY)
    assert client.post("/v1/events/ingest", json=_events(2)).status_code == 202
    d2_server.clock.advance(11 * DAY)  # the first three are 31 days old, the others 11
    assert d2_server.pruner is not None
    d2_server.pruner.wake()
    deadline = time.monotonic() + 10
    while len(d2_server.events()) != 2:
        assert time.monotonic() < deadline, "the pruner did not run"
        time.sleep(0.01)
    assert {e.received_at for e in d2_server.events()} == {d2_server.clock() - 11 * DAY}


def test_a_large_backlog_is_pruned_in_batches_at_startup_while_the_server_answers(
    tmp_path: Path,
) -> None:
    backlog, batch = 30_000, 300
    clock = FakeClock()
    # a database that grew before retention existed: a year-old backlog in one app
    storage = SQLStorage(tmp_path / "d2-server.db", migrate=True)
    try:
        plane = ControlPlane(storage)
        _, old = plane.create_account("old-app")
        item = ("decision", json.dumps({"tool": "t"}), WHEN)
        storage.add_events(old.id, "h", [item] * backlog, clock() - 365 * DAY)
    finally:
        storage.close()

    with start_server(tmp_path, clock=clock, events_prune_batch=batch) as server:
        http = server.client(server.runtime_token)
        seen: list[int] = []
        latencies: list[float] = []
        while not seen or seen[-1] > 0:
            seen.append(server.storage.event_usage(old.id).events)
            began = time.monotonic()
            assert http.get("/healthz").status_code == 200
            assert http.post("/v1/events/ingest", json=_events(5)).status_code == 202
            assert http.get("/v1/accounts/me").status_code == 200
            latencies.append(time.monotonic() - began)
            assert len(latencies) < 10_000, "the backlog was not pruned"
        assert server.pruner is not None
        deadline = time.monotonic() + 10
        while server.pruner.last is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert server.pruner.last.expired == backlog
        assert server.pruner.last.batches == backlog // batch + 1
        # each observed state is a whole number of committed batches ...
        assert all(n % batch == 0 for n in seen)
        # ... and requests were answered between batches, while the pass ran
        assert len({n for n in seen if 0 < n < backlog}) >= 3
        assert max(latencies) < 2.0 and statistics.median(latencies) < 0.5
        assert server.storage.event_usage(server.app.id).events == 5 * len(latencies)
