"""The schema's version (Alembic): new databases are migrated, a database behind or
ahead of this d2-server is refused and named, a failed upgrade changes nothing, and
a SQLite file made by 2.0.0's first cut (its hand-written migrations) is stamped and
upgraded with no data lost. SQLite files are private and in WAL mode."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from d2.server import ControlPlane, Quotas, ServerConfig, SQLStorage, schema, tables
from d2.server.database import database_url, describe, open_engine
from d2.server.storage import EventUsage
from d2.server.testing import FakeClock

FIRST_CUT_SQL = Path(__file__).parent / "data" / "first_cut_schema.sql"
TABLES = {"accounts", "apps", "tokens", "signing_keys", "device_keys", "versions"}
TABLES |= {"bundles", "drafts", "events", "event_counts", "poll_epoch"}


def _tables(db: str) -> set[str]:
    engine = open_engine(db)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_new_database_is_migrated_to_the_newest_revision(db: str) -> None:
    store = SQLStorage(db, migrate=True)
    try:
        assert store.schema_revision() == schema.head_revision()
    finally:
        store.close()
    assert _tables(db) == TABLES | {"alembic_version"}
    SQLStorage(db).close()  # opens without migrating: the schema is current


def test_the_migrations_build_the_tables_the_code_describes(db: str) -> None:
    """``tables.py`` (what the queries are written against) and the migrations
    (what databases get) never drift apart: Alembic finds nothing to change."""
    store = SQLStorage(db, migrate=True)
    try:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), tables.metadata) == []
    finally:
        store.close()


def test_an_empty_database_is_refused_naming_the_commands(db: str) -> None:
    with pytest.raises(schema.SchemaBehindError, match="d2-server migrate"):
        SQLStorage(db)
    assert _tables(db) == set()  # refused, not created behind the operator's back


def test_a_database_ahead_of_this_server_is_refused_and_left_untouched(db: str) -> None:
    SQLStorage(db, migrate=True).close()
    engine = open_engine(db)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(schema.SchemaAheadError, match="upgrade d2-server"):
            SQLStorage(db)
        with pytest.raises(schema.SchemaAheadError, match="newer d2-server"):
            SQLStorage(db, migrate=True)
        with engine.connect() as conn:
            assert schema.current_revision(conn) == "9999"
    finally:
        engine.dispose()


def test_a_failing_upgrade_leaves_the_database_untouched(db: str) -> None:
    engine = open_engine(db)
    try:
        with engine.begin() as conn:  # the last table the first revision creates
            conn.execute(sa.text("CREATE TABLE event_counts (x INTEGER)"))
        with pytest.raises(sa.exc.SQLAlchemyError):
            schema.upgrade(engine)
        assert set(sa.inspect(engine).get_table_names()) == {"event_counts"}
    finally:
        engine.dispose()


# -- SQLite files: private, WAL ---------------------------------------------------


def _upgrade(db: str | Path) -> str:
    engine = open_engine(db)
    try:
        return schema.upgrade(engine)
    finally:
        engine.dispose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    SQLStorage(tmp_path / "d2.db", migrate=True).close()
    conn = sqlite3.connect(tmp_path / "d2.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.usefixtures("umask_022")
def test_the_database_and_its_wal_and_shm_files_are_private_to_their_owner(
    tmp_path: Path,
) -> None:
    db = tmp_path / "d2.db"
    store = SQLStorage(db, migrate=True)
    try:
        store.create_account("acc_1", Quotas(), 1.0)  # a write: the WAL has content
        files = [db, tmp_path / "d2.db-wal", tmp_path / "d2.db-shm"]
        assert (tmp_path / "d2.db-wal").stat().st_size > 0
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()
    assert _mode(db) == 0o600
    store = SQLStorage(db)  # reopened after the last close removed the WAL
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
        with pytest.raises(schema.SchemaBehindError):
            SQLStorage(db)
    finally:
        conn.close()
    for name in ("d2.db", "d2.db-wal", "d2.db-shm"):
        path = tmp_path / name
        assert not path.exists() or _mode(path) == 0o600, name


def test_db_is_a_file_path_or_a_postgresql_url() -> None:
    url = database_url("postgresql://d2:secret@127.0.0.1:5432/d2")
    assert url.drivername == "postgresql+psycopg" and url.database == "d2"
    assert database_url("postgres://h/d2").drivername == "postgresql+psycopg"
    assert database_url("d2.db").database == os.path.abspath("d2.db")
    assert "secret" not in describe("postgresql://d2:secret@127.0.0.1:5432/d2")
    for bad in ("mysql://h/d2", ":memory:", "", "file:x.db", "postgresql://h"):
        with pytest.raises(ValueError):
            database_url(bad)


# -- a SQLite file of 2.0.0's first cut -------------------------------------------

PER_EVENT = len("decision") + len("2025-01-01T00:00:00Z")


def _first_cut_file(path: Path, user_version: int = schema.LEGACY_USER_VERSION) -> None:
    """A database as the first cut's own migrations left it, with data in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(FIRST_CUT_SQL.read_text())
        conn.execute(f"PRAGMA user_version = {user_version}")
        conn.execute("INSERT INTO accounts VALUES ('acc', 'team', 7, 900, 50, 10, 3, 1.0)")
        conn.execute(
            "INSERT INTO apps (id, account_id, name, created_at) VALUES (1, 'acc', 'shop', 1.0)"
        )
        conn.execute("INSERT INTO tokens VALUES ('h-runtime', 1, 'policy:read events:write', 2.0)")
        conn.execute(
            "INSERT INTO device_keys VALUES (1, 'laptop', 'Ed25519', ?, 3.0)", (b"k" * 32,)
        )
        conn.execute("INSERT INTO drafts VALUES (1, 4, '{\"d\":1}', 4.0)")
        conn.executemany(
            "INSERT INTO events (app_id, token_hash, event_type, payload, occurred_at, "
            "received_at) VALUES (1, 'h', 'decision', ?, '2025-01-01T00:00:00Z', ?)",
            [('{"tool":"café"}', 100.0)] * 3 + [("{}", 9e9)] * 2,
        )
    finally:
        conn.close()


def _shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, default, primary key), foreign keys and
    indexes, and the triggers: what the schema is, whatever made it."""
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT IN ('alembic_version') ORDER BY name"
            )
        ]
        shape: dict[str, object] = {}
        for name in names:
            columns = [(r[1], r[2], r[4], r[5]) for r in conn.execute(f"PRAGMA table_info({name})")]
            keys = sorted(r[2:5] for r in conn.execute(f"PRAGMA foreign_key_list({name})"))
            indexes = sorted(
                (tuple(c[2] for c in conn.execute(f"PRAGMA index_info('{i[1]}')")), i[2])
                for i in conn.execute(f"PRAGMA index_list({name})")
            )
            shape[name] = (columns, keys, indexes)
        shape["triggers"] = sorted(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        )
        return shape
    finally:
        conn.close()


def test_the_first_revision_is_the_first_cuts_schema(tmp_path: Path) -> None:
    _first_cut_file(tmp_path / "old.db")
    SQLStorage(tmp_path / "new.db", migrate=True).close()
    new = _shape(tmp_path / "new.db")
    # what the later revisions add: 0002, the poll epoch and its triggers
    assert new.pop("poll_epoch")
    triggers = new["triggers"]
    assert isinstance(triggers, list)
    new["triggers"] = [t for t in triggers if "_poll_epoch_" not in t]
    assert new == _shape(tmp_path / "old.db")


def test_a_first_cut_file_is_refused_until_migrated_then_keeps_all_its_data(
    tmp_path: Path,
) -> None:
    db = tmp_path / "d2.db"
    _first_cut_file(db)
    with pytest.raises(schema.SchemaBehindError, match=r"first cut.*d2-server migrate"):
        SQLStorage(db)
    assert _upgrade(db) == schema.head_revision()
    store = SQLStorage(db)
    try:
        assert store.schema_revision() == schema.head_revision()
        principal = store.find_token("h-runtime")
        assert principal is not None and principal.app.name == "shop"
        assert principal.account.quotas == Quotas("team", 7, 900, 50, 10, 3)
        assert store.device_key(1, "laptop") == b"k" * 32
        draft = store.get_draft(1)
        assert draft is not None and draft.document == '{"d":1}'
        assert store.event_usage(1) == EventUsage(5, 3 * (PER_EVENT + 16) + 2 * (PER_EVENT + 2))
        # and the server works on it: a signing key, a publish, the counts stay exact
        plane = ControlPlane(store, ServerConfig(clock=FakeClock(1_000.0)))
        plane.ensure_signing_key()
        assert store.delete_events_before(200.0, 100) == 3
        assert store.event_usage(1) == EventUsage(2, 2 * (PER_EVENT + 2))
        assert [a.name for a in store.apps("acc")] == ["shop"]
    finally:
        store.close()
    assert _upgrade(db) == schema.head_revision()  # idempotent
    # the first cut's own runner would refuse the file now ("upgrade d2-server")
    conn = sqlite3.connect(db)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    assert version == schema.ALEMBIC_USER_VERSION > schema.LEGACY_USER_VERSION


@pytest.mark.parametrize(("user_version", "error"), [(1, "pre-release"), (2, "pre-release")])
def test_a_pre_release_first_cut_file_is_refused(
    tmp_path: Path, user_version: int, error: str
) -> None:
    db = tmp_path / "d2.db"
    _first_cut_file(db, user_version)
    with pytest.raises(schema.SchemaBehindError, match=error):
        _upgrade(db)


def test_a_file_of_a_newer_hand_migrated_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "d2.db"
    _first_cut_file(db, schema.LEGACY_USER_VERSION + 1)
    with pytest.raises(schema.SchemaAheadError, match="upgrade d2-server"):
        _upgrade(db)
