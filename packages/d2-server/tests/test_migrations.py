"""The SQLite schema: versioned migrations, WAL, and refusal of newer databases."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from d2.server import Quotas, SQLiteStorage
from d2.server.migrations import MIGRATIONS, SchemaTooNewError, migrate
from d2.server.storage import EventUsage


def test_a_new_database_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "d2.db")
    try:
        assert store.schema_version() == len(MIGRATIONS)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "d2.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    expected = {"accounts", "apps", "tokens", "signing_keys", "device_keys", "versions"}
    assert expected | {"bundles", "drafts", "events"} <= tables


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_the_database_and_its_wal_and_shm_files_are_private_to_their_owner(
    tmp_path: Path,
) -> None:
    db = tmp_path / "d2.db"
    store = SQLiteStorage(db)
    try:
        store.create_account("acc_1", Quotas(), 1.0)  # a write: the WAL has content
        files = [db, tmp_path / "d2.db-wal", tmp_path / "d2.db-shm"]
        assert (tmp_path / "d2.db-wal").stat().st_size > 0
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()
    assert _mode(db) == 0o600
    # reopened after the last close removed the WAL: SQLite recreates it 0600 too
    store = SQLiteStorage(db)
    try:
        store.create_account("acc_2", Quotas(), 2.0)
        for name in ("d2.db-wal", "d2.db-shm"):
            assert _mode(tmp_path / name) == 0o600
    finally:
        store.close()


@pytest.mark.usefixtures("umask_022")
def test_opening_makes_an_existing_world_readable_database_private(tmp_path: Path) -> None:
    db = tmp_path / "d2.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")  # written with the umask: 0644, -wal/-shm too
    assert _mode(db) == 0o644 and _mode(tmp_path / "d2.db-wal") == 0o644
    try:
        SQLiteStorage(db).close()
    finally:
        conn.close()
    for name in ("d2.db", "d2.db-wal", "d2.db-shm"):
        path = tmp_path / name
        assert not path.exists() or _mode(path) == 0o600, name


def test_reopening_a_migrated_database_keeps_its_data(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "d2.db")
    store.create_account("acc_1", Quotas(), 1.0)
    store.close()
    again = SQLiteStorage(tmp_path / "d2.db")
    try:
        assert [a.id for a in again.accounts()] == ["acc_1"]
        assert again.schema_version() == len(MIGRATIONS)
    finally:
        again.close()


def test_migrations_apply_one_by_one_from_an_empty_database(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "d2.db", isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert migrate(conn) == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)  # idempotent
    finally:
        conn.close()


def test_a_failing_migration_leaves_the_database_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = ((*MIGRATIONS[0], "CREATE TABLE accounts (x)"),)  # duplicate table: fails
    monkeypatch.setattr("d2.server.migrations.MIGRATIONS", broken)
    conn = sqlite3.connect(tmp_path / "d2.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    finally:
        conn.close()


def test_a_database_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "d2.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade d2-server"):
        SQLiteStorage(tmp_path / "d2.db")


def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(ValueError, match="file path"):
        SQLiteStorage(":memory:")


def test_migration_2_gives_each_app_of_an_account_the_keys_registered_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "d2.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with monkeypatch.context() as m:
            m.setattr("d2.server.migrations.MIGRATIONS", MIGRATIONS[:1])
            assert migrate(conn) == 1
        for account in ("acc", "other"):
            conn.execute("INSERT INTO accounts VALUES (?, 'free', 1, 1, 1, 1, 3, 1.0)", (account,))
        conn.executemany(
            "INSERT INTO apps (id, account_id, name, created_at) VALUES (?, ?, ?, 1.0)",
            [(1, "acc", "shop"), (2, "acc", "blog"), (3, "other", "shop")],
        )
        conn.execute(
            "INSERT INTO device_keys VALUES ('acc', 'laptop', 'Ed25519', ?, 1.0)", (b"k" * 32,)
        )
    finally:
        conn.close()
    store = SQLiteStorage(db)
    try:
        assert store.schema_version() == len(MIGRATIONS) >= 2
        assert store.device_key(1, "laptop") == store.device_key(2, "laptop") == b"k" * 32
        assert store.device_key(3, "laptop") is None  # another account: never had it
    finally:
        store.close()


def test_migration_3_counts_the_events_of_an_old_database_and_indexes_them_for_pruning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "d2.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with monkeypatch.context() as m:
            m.setattr("d2.server.migrations.MIGRATIONS", MIGRATIONS[:2])
            assert migrate(conn) == 2
        conn.execute("INSERT INTO accounts VALUES ('acc', 'free', 1, 1, 1, 1, 3, 1.0)")
        conn.executemany(
            "INSERT INTO apps (id, account_id, name, created_at) VALUES (?, 'acc', ?, 1.0)",
            [(1, "shop"), (2, "blog"), (3, "idle")],
        )
        rows = [(1, "decision", '{"tool":"café"}', 100.0)] * 7  # é: 2 bytes in UTF-8
        rows += [(2, "decision", "{}", 100.0)] * 2 + [(2, "decision", "{}", 9e9)]
        conn.executemany(
            "INSERT INTO events (app_id, token_hash, event_type, payload, occurred_at, "
            "received_at) VALUES (?, 'h', ?, ?, '2025-01-01T00:00:00Z', ?)",
            rows,
        )
    finally:
        conn.close()
    store = SQLiteStorage(db)
    try:
        assert store.schema_version() == len(MIGRATIONS) >= 3
        per_event = len("decision") + len("2025-01-01T00:00:00Z")
        assert store.event_usage(1) == EventUsage(7, 7 * (per_event + 16))
        assert store.event_usage(2) == EventUsage(3, 3 * (per_event + 2))
        assert store.event_usage(3) == EventUsage(0, 0)
        # the index exists and the counts stay exact as pruning deletes
        assert store.delete_events_before(200.0, 100) == 9
        assert store.event_usage(1) == EventUsage(0, 0)
        assert store.event_usage(2) == EventUsage(1, per_event + 2)
        store.add_events(3, "h", [("decision", "{}", "2025-01-01T00:00:00Z")], 300.0)
        assert store.event_usage(3) == EventUsage(1, per_event + 2)
        indexes = {
            r[0] for r in store._conn().execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
        assert "events_by_received" in indexes
    finally:
        store.close()
