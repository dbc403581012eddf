"""Where the control plane keeps its data: a SQLite file or a PostgreSQL database.

``--db`` (and ``D2_SERVER_DB``) is either a path to a SQLite file or a URL
``postgresql://user:password@host:port/dbname`` (the psycopg 3 driver, extra
``d2-server[postgres]``). :func:`open_engine` builds the SQLAlchemy engine the
storage runs on:

- **SQLite**: the file and its ``-wal`` / ``-shm`` companions are created 0600
  (they hold the private signing keys) and the database is in WAL mode, so
  readers never block the writer and several processes can share the file. The
  driver's own transaction handling is off: a write transaction starts with
  ``BEGIN IMMEDIATE``, which takes the write lock before anything is read, so a
  read-check-write sequence cannot interleave with another one.
- **PostgreSQL**: ``READ COMMITTED``; the write paths that decide on what they
  read lock the rows they decide on (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

__all__ = ["WRITE", "database_url", "describe", "is_postgresql", "open_engine"]

WRITE = "d2_write"
"""Execution option of a connection whose next transaction writes (on SQLite it
begins with ``BEGIN IMMEDIATE``)."""

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def database_url(db: str | os.PathLike[str]) -> URL:
    """The SQLAlchemy URL of ``--db``: a PostgreSQL URL (``postgresql://`` or
    ``postgres://``, mapped to the psycopg 3 driver) or a SQLite file path.

    Anything else with ``://`` is refused (``ValueError``) rather than taken for a
    file name."""
    text = os.fspath(db)
    if text.startswith(_POSTGRES_SCHEMES):
        url = make_url(text)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise ValueError("a PostgreSQL --db URL needs a database name: postgresql://.../dbname")
        return url
    if "://" in text:
        raise ValueError(
            f"unsupported database {describe(text)!r}: give a SQLite file path or a "
            "postgresql://user:password@host:port/dbname URL"
        )
    if text in ("", ":memory:") or text.startswith("file:"):
        raise ValueError("a SQLite database must be a file path (each thread opens it)")
    return URL.create("sqlite+pysqlite", database=os.path.abspath(text))


def describe(db: str | os.PathLike[str] | URL) -> str:
    """``db`` for a message: a URL without its password."""
    if isinstance(db, URL):
        return db.render_as_string(hide_password=True)
    text = os.fspath(db)
    if "://" in text:
        try:
            return make_url(text).render_as_string(hide_password=True)
        except Exception:
            return text.split("://", 1)[0] + "://..."
    return text


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` is on PostgreSQL (else SQLite)."""
    return engine.dialect.name == "postgresql"


def _create_private(path: str) -> None:
    """Create the database file and its ``-wal`` / ``-shm`` companions 0600 before
    SQLite opens them (all three hold the private signing keys), and make existing
    ones 0600 too (an older d2-server left them to the umask, typically 0644).

    SQLite creates a ``-wal`` / ``-shm`` with the mode of the database file, so
    with the file 0600 before the first connection they stay private even after a
    checkpoint deletes and SQLite recreates them. An empty ``-wal`` or ``-shm`` is
    valid: SQLite initializes it."""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            if name == path:
                raise  # no directory, no permission: report it now
            continue  # pragma: no cover - e.g. a read-only companion we do not own
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)
        except OSError:  # pragma: no cover - not our file to chmod
            pass
        finally:
            os.close(fd)


def _sqlite_engine(url: URL, busy_timeout: float) -> Engine:
    path = url.database
    assert path is not None
    _create_private(path)
    engine = sa.create_engine(
        url,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        poolclass=sa.pool.QueuePool,
        pool_size=8,
        # more than the thread pool's 40 workers can hold: the poll path reads on
        # the event loop (Storage.local_reads) and must never wait for a connection
        max_overflow=64,
        pool_pre_ping=False,
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        mode = dbapi_conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # pragma: no cover - exotic filesystems
            raise RuntimeError(f"cannot enable WAL on {path!r} (journal_mode={mode})")
        for pragma in (
            "foreign_keys=ON",
            "synchronous=NORMAL",
            f"busy_timeout={int(busy_timeout * 1000)}",
        ):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def open_engine(db: str | os.PathLike[str] | URL, *, busy_timeout: float = 30.0) -> Engine:
    """The engine of ``db`` (see :func:`database_url`). A SQLite file is created
    (0600, WAL) when missing; a PostgreSQL database must exist. ``busy_timeout``
    bounds, in seconds, how long a statement waits for a lock (SQLite's busy
    timeout, PostgreSQL's ``lock_timeout``) or a connection. Raises
    ``ValueError`` for an unusable ``db`` and ``ImportError`` (naming the extra)
    when the PostgreSQL driver is missing."""
    url = db if isinstance(db, URL) else database_url(db)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout)
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'PostgreSQL needs the psycopg driver: pip install "d2-server[postgres]"'
        ) from exc
    given = url.query.get("options")  # libpq options in the URL: kept, ours appended
    options = [given] if isinstance(given, str) else list(given or ())
    options.append(f"-c lock_timeout={int(busy_timeout * 1000)}")
    return sa.create_engine(
        url,
        pool_size=8,
        max_overflow=32,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
        connect_args={
            "connect_timeout": max(1, int(busy_timeout)),
            # no statement waits longer than this for a lock (an operator's open
            # transaction): it fails instead of holding a server thread forever
            "options": " ".join(options),
        },
    )
