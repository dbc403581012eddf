"""The SQLite schema: versioned migrations, WAL, and refusal of newer databases."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from d2.server import SQLiteStorage
from d2.server.migrations import MIGRATIONS, SchemaTooNewError, migrate


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


def test_the_database_file_is_private_to_its_owner(tmp_path: Path) -> None:
    SQLiteStorage(tmp_path / "d2.db").close()
    assert stat.S_IMODE((tmp_path / "d2.db").stat().st_mode) == 0o600


def test_reopening_a_migrated_database_keeps_its_data(tmp_path: Path) -> None:
    from d2.server import Quotas

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
