"""The SQLite implementation of :class:`~d2.server.storage.Storage`.

One database file in WAL mode (readers never block the writer). Each thread gets its
own connection; every write runs in ``BEGIN IMMEDIATE``, which takes the database's
write lock before reading, so a read-check-write sequence (a publish precondition)
cannot interleave with another one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .config import Quotas
from .migrations import migrate
from .storage import (
    Account,
    App,
    Bundle,
    BundleState,
    Draft,
    EventCap,
    EventUsage,
    KeyRegistration,
    NewVersion,
    Principal,
    PublishState,
    SigningKeyRecord,
    Storage,
    StoredEvent,
    rows_to_free,
)

__all__ = ["SQLiteStorage"]

_ACCOUNT_COLUMNS = (
    "a.id, a.plan, a.max_tools, a.bundle_size_bytes, a.event_batch, a.ingest_interval, "
    "a.max_apps, a.created_at"
)
_KEY_COLUMNS = "kid, alg, private_pem, public_jwk, created_at, refresh_until, retired_at, remove_at"
_BUNDLE_COLUMNS = "app_id, version, jws, etag, kid, iat, exp"
# the bytes of one event, as the triggers of migration 3 count them
_EVENT_BYTES = (
    "length(CAST(event_type AS BLOB)) + length(CAST(payload AS BLOB)) "
    "+ length(CAST(occurred_at AS BLOB))"
)


def _account(row: Sequence[Any]) -> Account:
    quotas = Quotas(
        plan=row[1],
        max_tools=row[2],
        bundle_size_bytes=row[3],
        event_batch=row[4],
        ingest_interval=row[5],
        max_apps=row[6],
    )
    return Account(id=row[0], quotas=quotas, created_at=row[7])


def _key(row: Sequence[Any]) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=row[0],
        alg=row[1],
        pem=bytes(row[2]),
        jwk=json.loads(row[3]),
        created_at=row[4],
        refresh_until=row[5],
        retired_at=row[6],
        remove_at=row[7],
    )


def _bundle(row: Sequence[Any]) -> Bundle:
    return Bundle(
        app_id=row[0], version=row[1], jws=row[2], etag=row[3], kid=row[4], iat=row[5], exp=row[6]
    )


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


class SQLiteStorage(Storage):
    """Storage in the SQLite file at ``path`` (created, and migrated, on open)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("SQLiteStorage needs a file path (each thread opens it)")
        self._timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        _create_private(self.path)
        try:
            conn = self._conn()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - exotic filesystems
                raise RuntimeError(f"cannot enable WAL on {self.path!r} (journal_mode={mode})")
            migrate(conn)
        except BaseException:
            self.close()
            raise

    # connections and transactions
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("storage is closed")
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot for the queries inside
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def schema_revision(self) -> str | None:
        """The migration the database is at, as text."""
        return str(self.schema_version())

    def schema_version(self) -> int:
        """The migration the database is at."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # accounts, apps, tokens
    def create_account(self, account_id: str, quotas: Quotas, now: float) -> Account:
        """Store a new account."""
        with self._write() as conn:
            self._insert_account(conn, account_id, quotas, now)
        return Account(id=account_id, quotas=quotas, created_at=now)

    def create_account_with_app(
        self, account_id: str, quotas: Quotas, app_name: str, now: float
    ) -> tuple[Account, App]:
        """Store a new account and its first app in one transaction."""
        with self._write() as conn:
            self._insert_account(conn, account_id, quotas, now)
            cursor = conn.execute(
                "INSERT INTO apps (account_id, name, created_at) VALUES (?, ?, ?)",
                (account_id, app_name, now),
            )
            app_id = cursor.lastrowid
        assert app_id is not None
        account = Account(id=account_id, quotas=quotas, created_at=now)
        return account, App(id=app_id, account_id=account_id, name=app_name)

    @staticmethod
    def _insert_account(
        conn: sqlite3.Connection, account_id: str, quotas: Quotas, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account_id,
                quotas.plan,
                quotas.max_tools,
                quotas.bundle_size_bytes,
                quotas.event_batch,
                quotas.ingest_interval,
                quotas.max_apps,
                now,
            ),
        )

    def get_account(self, account_id: str) -> Account | None:
        """The account, or ``None``."""
        row = (
            self._conn()
            .execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.id = ?", (account_id,))
            .fetchone()
        )
        return _account(row) if row else None

    def accounts(self) -> list[Account]:
        """Every account, oldest first."""
        rows = (
            self._conn()
            .execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.created_at, a.id")
            .fetchall()
        )
        return [_account(r) for r in rows]

    def ensure_app(self, account_id: str, name: str, now: float) -> App:
        """The app ``name`` of the account, created when missing."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO apps (account_id, name, created_at) VALUES (?, ?, ?)",
                (account_id, name, now),
            )
            row = conn.execute(
                "SELECT id FROM apps WHERE account_id = ? AND name = ?", (account_id, name)
            ).fetchone()
        return App(id=row[0], account_id=account_id, name=name)

    def apps(self, account_id: str) -> list[App]:
        """The account's apps, oldest first."""
        rows = (
            self._conn()
            .execute("SELECT id, name FROM apps WHERE account_id = ? ORDER BY id", (account_id,))
            .fetchall()
        )
        return [App(id=r[0], account_id=account_id, name=r[1]) for r in rows]

    def add_token(self, token_hash: str, app: App, scopes: Sequence[str], now: float) -> None:
        """Store a token hash for ``app``."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?)",
                (token_hash, app.id, " ".join(scopes), now),
            )

    def find_token(self, token_hash: str) -> Principal | None:
        """The principal of a token hash, or ``None``."""
        row = (
            self._conn()
            .execute(
                f"SELECT t.scopes, p.id, p.name, {_ACCOUNT_COLUMNS} FROM tokens t "
                "JOIN apps p ON p.id = t.app_id JOIN accounts a ON a.id = p.account_id "
                "WHERE t.hash = ?",
                (token_hash,),
            )
            .fetchone()
        )
        if row is None:
            return None
        account = _account(row[3:])
        app = App(id=row[1], account_id=account.id, name=row[2])
        return Principal(token_hash, account, app, tuple(str(row[0]).split()))

    # signing keys
    def add_signing_key(self, record: SigningKeyRecord, *, overlap: float, now: float) -> None:
        """Make ``record`` the active key, retiring the previous one."""
        with self._write() as conn:
            retired = conn.execute(
                "UPDATE signing_keys SET retired_at = ?, remove_at = ? WHERE retired_at IS NULL",
                (now, now + overlap),
            ).rowcount
            conn.execute(
                f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
                (
                    record.kid,
                    record.alg,
                    record.pem,
                    json.dumps(record.jwk, sort_keys=True),
                    now,
                    now + overlap if retired else None,
                ),
            )

    def active_signing_key(self) -> SigningKeyRecord | None:
        """The key new bundles are signed with."""
        row = (
            self._conn()
            .execute(f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE retired_at IS NULL")
            .fetchone()
        )
        return _key(row) if row else None

    def published_signing_keys(self, now: float) -> list[SigningKeyRecord]:
        """The keys in the JWKS at ``now``, active first then newest first."""
        rows = (
            self._conn()
            .execute(
                f"SELECT {_KEY_COLUMNS} FROM signing_keys "
                "WHERE retired_at IS NULL OR remove_at > ? "
                "ORDER BY retired_at IS NOT NULL, created_at DESC",
                (now,),
            )
            .fetchall()
        )
        return [_key(r) for r in rows]

    # device keys
    def add_device_key(
        self, app_id: int, key_id: str, public_key: bytes, now: float
    ) -> KeyRegistration:
        """Register a device key for the app."""
        with self._write() as conn:
            existing = self._device_key(conn, app_id, key_id)
            if existing is not None:
                return (
                    KeyRegistration.EXISTS if existing == public_key else KeyRegistration.CONFLICT
                )
            conn.execute(
                "INSERT INTO device_keys (app_id, key_id, algorithm, public_key, created_at) "
                "VALUES (?, ?, 'Ed25519', ?, ?)",
                (app_id, key_id, public_key, now),
            )
        return KeyRegistration.CREATED

    def device_key(self, app_id: int, key_id: str) -> bytes | None:
        """The raw public key registered under ``key_id`` for the app, or ``None``."""
        return self._device_key(self._conn(), app_id, key_id)

    @staticmethod
    def _device_key(conn: sqlite3.Connection, app_id: int, key_id: str) -> bytes | None:
        row = conn.execute(
            "SELECT public_key FROM device_keys WHERE app_id = ? AND key_id = ?",
            (app_id, key_id),
        ).fetchone()
        return bytes(row[0]) if row else None

    # policy
    @staticmethod
    def _state(conn: sqlite3.Connection, app_id: int) -> BundleState:
        row = conn.execute(
            "SELECT current_version, revoked FROM apps WHERE id = ?", (app_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no app {app_id}")
        version, revoked = int(row[0]), bool(row[1])
        if version == 0:
            return BundleState(0, revoked, None, None)
        brow = conn.execute(
            f"SELECT {_BUNDLE_COLUMNS} FROM bundles WHERE app_id = ? AND version = ? "
            "ORDER BY id DESC LIMIT 1",
            (app_id, version),
        ).fetchone()
        doc = conn.execute(
            "SELECT document FROM versions WHERE app_id = ? AND version = ?", (app_id, version)
        ).fetchone()
        return BundleState(
            version, revoked, _bundle(brow) if brow else None, doc[0] if doc else None
        )

    def bundle_state(self, app_id: int) -> BundleState:
        """What the app serves now."""
        with self._read() as conn:
            return self._state(conn, app_id)

    def publish(
        self,
        app: App,
        device_key_id: str,
        decide: Callable[[PublishState], NewVersion],
        now: float,
    ) -> NewVersion:
        """Decide and store a new version in one ``BEGIN IMMEDIATE`` transaction."""
        with self._write() as conn:
            state = self._state(conn, app.id)
            etags = frozenset(
                r[0]
                for r in conn.execute(
                    "SELECT etag FROM bundles WHERE app_id = ? AND version = ?",
                    (app.id, state.current_version),
                )
            )
            live = conn.execute(
                "SELECT COUNT(*) FROM apps WHERE account_id = ? AND current_version > 0 "
                "AND revoked = 0",
                (app.account_id,),
            ).fetchone()[0]
            krow = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE retired_at IS NULL"
            ).fetchone()
            new = decide(
                PublishState(
                    current_version=state.current_version,
                    revoked=state.revoked,
                    etags=etags,
                    device_public_key=self._device_key(conn, app.id, device_key_id),
                    live_apps=int(live),
                    signing_key=_key(krow) if krow else None,
                )
            )
            conn.execute(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    app.id,
                    new.version,
                    new.document,
                    new.body,
                    new.device_key_id,
                    new.signature,
                    now,
                ),
            )
            self._insert_bundle(conn, new.bundle, now)
            conn.execute(
                "UPDATE apps SET current_version = ?, revoked = 0 WHERE id = ?",
                (new.version, app.id),
            )
        return new

    @staticmethod
    def _insert_bundle(conn: sqlite3.Connection, b: Bundle, now: float) -> None:
        conn.execute(
            f"INSERT INTO bundles ({_BUNDLE_COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (b.app_id, b.version, b.jws, b.etag, b.kid, b.iat, b.exp, now),
        )

    def refresh_bundle(
        self,
        app_id: int,
        decide: Callable[[BundleState, SigningKeyRecord], Bundle | None],
        now: float,
    ) -> BundleState:
        """Re-sign the current version when ``decide`` says so, atomically."""
        with self._write() as conn:
            state = self._state(conn, app_id)
            krow = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE retired_at IS NULL"
            ).fetchone()
            if krow is None or state.bundle is None:
                return state
            bundle = decide(state, _key(krow))
            if bundle is None:
                return state
            self._insert_bundle(conn, bundle, now)
            return BundleState(state.current_version, state.revoked, bundle, state.document)

    def revoke(self, app_id: int, now: float) -> int | None:
        """Revoke the current version; ``None`` when nothing was ever published."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT current_version FROM apps WHERE id = ?", (app_id,)
            ).fetchone()
            if row is None or int(row[0]) == 0:
                return None
            conn.execute("UPDATE apps SET revoked = 1 WHERE id = ?", (app_id,))
            return int(row[0])

    # drafts
    def put_draft(self, app_id: int, version: int, document: str, now: float) -> None:
        """Store (replace) the app's draft."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO drafts VALUES (?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET "
                "version = excluded.version, document = excluded.document, "
                "updated_at = excluded.updated_at",
                (app_id, version, document, now),
            )

    def get_draft(self, app_id: int) -> Draft | None:
        """The app's draft, or ``None``."""
        row = (
            self._conn()
            .execute("SELECT version, document, updated_at FROM drafts WHERE app_id = ?", (app_id,))
            .fetchone()
        )
        return Draft(int(row[0]), row[1], row[2]) if row else None

    # events
    def add_events(
        self,
        app_id: int,
        token_hash: str,
        events: Sequence[tuple[str, str, str]],
        now: float,
        *,
        cap: EventCap | None = None,
        trim_limit: int = 5000,
    ) -> int:
        """Store usage events, then trim the app to ``cap`` in the same transaction,
        by what the triggers counted for this upload (see :meth:`Storage.add_events`)."""
        with self._write() as conn:
            before = self._usage(conn, app_id)
            conn.executemany(
                "INSERT INTO events (app_id, token_hash, event_type, payload, occurred_at, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(app_id, token_hash, t, p, o, now) for t, p, o in events],
            )
            if cap is not None:
                after = self._usage(conn, app_id)
                added = EventUsage(after.events - before.events, after.bytes - before.bytes)
                self._trim(conn, app_id, cap, max(trim_limit, rows_to_free(added)))
        return len(events)

    def event_usage(self, app_id: int) -> EventUsage:
        """The app's stored events and their bytes (kept by triggers)."""
        return self._usage(self._conn(), app_id)

    @staticmethod
    def _usage(conn: sqlite3.Connection, app_id: int) -> EventUsage:
        row = conn.execute(
            "SELECT events, bytes FROM event_counts WHERE app_id = ?", (app_id,)
        ).fetchone()
        return EventUsage(int(row[0]), int(row[1])) if row else EventUsage(0, 0)

    def delete_events_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` events received before ``cutoff``, oldest first."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events "
                "WHERE received_at < ? ORDER BY received_at LIMIT ?)",
                (cutoff, limit),
            ).rowcount

    def apps_over_event_cap(self, cap: EventCap) -> list[int]:
        """The apps holding more events or bytes than ``cap``."""
        rows = (
            self._conn()
            .execute(
                "SELECT app_id FROM event_counts WHERE events > ? OR bytes > ? ORDER BY app_id",
                (cap.max_events, cap.max_bytes),
            )
            .fetchall()
        )
        return [int(r[0]) for r in rows]

    def trim_events(self, app_id: int, cap: EventCap, limit: int) -> int:
        """Delete up to ``limit`` of the app's oldest events beyond ``cap``."""
        with self._write() as conn:
            return self._trim(conn, app_id, cap, limit)

    @staticmethod
    def _trim(conn: sqlite3.Connection, app_id: int, cap: EventCap, limit: int) -> int:
        row = conn.execute(
            "SELECT events, bytes FROM event_counts WHERE app_id = ?", (app_id,)
        ).fetchone()
        if row is None:
            return 0
        extra_events, extra_bytes = int(row[0]) - cap.max_events, int(row[1]) - cap.max_bytes
        if extra_events <= 0 and extra_bytes <= 0:
            return 0
        # over the count only: exactly that many rows; over the bytes: walk the oldest
        # rows until enough is freed, at most ``limit`` of them
        scan = min(limit, extra_events) if extra_bytes <= 0 else limit
        cursor = conn.execute(
            f"SELECT id, {_EVENT_BYTES} FROM events WHERE app_id = ? ORDER BY id LIMIT ?",
            (app_id, scan),
        )
        count, freed, last = 0, 0, None
        try:
            for event_id, size in cursor:
                if count >= extra_events and freed >= extra_bytes:
                    break
                count, freed, last = count + 1, freed + int(size), event_id
        finally:
            cursor.close()
        if last is not None:
            conn.execute("DELETE FROM events WHERE app_id = ? AND id <= ?", (app_id, last))
        return count

    def events(self, app_id: int, limit: int = 1000) -> list[StoredEvent]:
        """The app's newest ``limit`` events, oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT event_type, payload, occurred_at, received_at FROM events "
                "WHERE app_id = ? ORDER BY id DESC LIMIT ?",
                (app_id, limit),
            )
            .fetchall()
        )
        return [StoredEvent(r[0], r[1], r[2], r[3]) for r in reversed(rows)]
