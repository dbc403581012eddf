"""The one :class:`~d2.server.storage.Storage` implementation, on SQLAlchemy Core,
for a SQLite file or a PostgreSQL database (see :mod:`d2.server.database`).

Every write runs in one transaction. The writes that decide on what they read
serialize with each other: on SQLite the transaction begins with ``BEGIN
IMMEDIATE`` (the database's write lock, taken before reading); on PostgreSQL
they lock the rows they decide on first (``SELECT ... FOR NO KEY UPDATE``: the
account and the app for a publish, the app for a revocation or a re-signing, the
app's event counts for a trim), so of many concurrent publishes with one
``If-Match`` exactly one can pass, whichever server process runs them.

Triggers replace the poll epoch (:meth:`SQLStorage.poll_epoch`, table
``poll_epoch``) on every write to the tables a poll reads: a replica's poll cache
(:mod:`d2.server.pollcache`) is then invalid from the commit on. On PostgreSQL a
write transaction that may write those tables locks the epoch's row first (the
triggers would lock it at its first such write), so the writes' locks are taken
in one order and no two of them deadlock on it; ``lock_timeout`` (the
``busy_timeout``, set on every connection) bounds how long any statement waits for
a lock (an operator's forgotten open transaction makes writes fail after that,
instead of hanging the server's threads).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from . import schema, tables
from .config import Quotas
from .database import WRITE, is_postgresql, open_engine
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
    PollState,
    Principal,
    PublishState,
    SigningKeyRecord,
    Storage,
    StoredEvent,
    rows_to_free,
)
from .tables import (
    accounts,
    apps,
    bundles,
    device_keys,
    drafts,
    event_counts,
    events,
    poll_epoch,
    signing_keys,
    tokens,
    versions,
)

__all__ = ["SQLStorage", "event_bytes"]

_ACCOUNT = (
    accounts.c.id,
    accounts.c.plan,
    accounts.c.max_tools,
    accounts.c.bundle_size_bytes,
    accounts.c.event_batch,
    accounts.c.ingest_interval,
    accounts.c.max_apps,
    accounts.c.created_at,
)
_KEY = (
    signing_keys.c.kid,
    signing_keys.c.alg,
    signing_keys.c.private_pem,
    signing_keys.c.public_jwk,
    signing_keys.c.created_at,
    signing_keys.c.refresh_until,
    signing_keys.c.retired_at,
    signing_keys.c.remove_at,
)
_BUNDLE = (
    bundles.c.app_id,
    bundles.c.version,
    bundles.c.jws,
    bundles.c.etag,
    bundles.c.kid,
    bundles.c.iat,
    bundles.c.exp,
)


def event_bytes(event_type: str, payload: str, occurred_at: str) -> int:
    """The bytes one event is counted in: its three strings in UTF-8 (what the
    ``event_counts`` triggers add up)."""
    return len(event_type.encode()) + len(payload.encode()) + len(occurred_at.encode())


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
        app_id=row[0],
        version=row[1],
        jws=row[2],
        etag=row[3],
        kid=row[4],
        iat=int(row[5]),
        exp=int(row[6]),
    )


_ACTIVE_KEY = sa.select(*_KEY).where(signing_keys.c.retired_at.is_(None))


_EPOCH = sa.select(poll_epoch.c.token).where(poll_epoch.c.id == sa.literal_column("1"))


def _poll_statement() -> sa.Select[Any]:
    """What :meth:`SQLStorage.poll_state` reads, built once: the token's scopes,
    the app's current version and revocation, the newest signing of that version,
    the active signing key and the poll epoch, all from one snapshot
    (``token_hash`` bound per call)."""
    signed = bundles.alias("signed")  # the app's signings of its current version
    newest = (
        sa.select(sa.func.max(signed.c.id))
        .where(signed.c.app_id == apps.c.id, signed.c.version == apps.c.current_version)
        .correlate(apps)
        .scalar_subquery()
    )
    return (
        sa.select(
            tokens.c.scopes,
            apps.c.id,
            apps.c.current_version,
            apps.c.revoked,
            bundles.c.etag,
            bundles.c.kid,
            bundles.c.iat,
            signing_keys.c.kid,
            signing_keys.c.refresh_until,
            _EPOCH.scalar_subquery(),
        )
        .select_from(
            tokens.join(apps, apps.c.id == tokens.c.app_id)
            .join(accounts, accounts.c.id == apps.c.account_id)
            .outerjoin(bundles, bundles.c.id == newest)
            .outerjoin(signing_keys, signing_keys.c.retired_at.is_(None))
        )
        .where(tokens.c.hash == sa.bindparam("token_hash"))
    )


_POLL = _poll_statement()
_LOCK_EPOCH = (
    sa.select(poll_epoch.c.id).where(poll_epoch.c.id == sa.literal_column("1")).with_for_update()
)


class SQLStorage(Storage):
    """Storage in the database ``db``: a SQLite file path (created when missing)
    or a ``postgresql://user:password@host:port/dbname`` URL.

    The schema must be this d2-server's (:func:`d2.server.schema.check`, which
    raises :class:`~d2.server.schema.SchemaError` naming ``d2-server migrate``),
    unless ``migrate=True``, which first upgrades it (what ``d2-server init`` and
    ``d2-server migrate`` do)."""

    def __init__(
        self,
        db: str | os.PathLike[str] | URL,
        *,
        migrate: bool = False,
        busy_timeout: float = 30.0,
    ) -> None:
        self.engine = open_engine(db, busy_timeout=busy_timeout)
        self._postgres = is_postgresql(self.engine)
        # SQLite in WAL mode: a read never waits for a writer, so the poll path may
        # read on the event loop; PostgreSQL reads cross the network (thread pool)
        self.local_reads = not self._postgres
        self._poll_sql: str | None = None
        if not self._postgres:  # positional "?" parameters: the token hash alone
            compiled = _POLL.compile(dialect=self.engine.dialect)
            assert compiled.positiontup == ["token_hash"]
            self._poll_sql = str(compiled)
        self._epoch_sql = str(
            _EPOCH.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        self._epoch_conn: Any = None  # a DB-API connection of its own, in autocommit
        self._epoch_lock = threading.Lock()
        self._closed = False
        try:
            if migrate:
                schema.upgrade(self.engine)
            with self.engine.connect() as conn:
                schema.check(conn)
        except BaseException:
            self.engine.dispose()
            raise

    # connections and transactions
    @contextmanager
    def _write(self, *, polled: bool = True) -> Iterator[sa.Connection]:
        """A write transaction. ``polled``: it may write a table a poll reads; on
        PostgreSQL it then locks the poll epoch's row first (see the module's
        docstring). Usage events, device keys and drafts pass ``False``."""
        if self._closed:
            raise RuntimeError("storage is closed")
        with self.engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                if self._postgres and polled:
                    conn.execute(_LOCK_EPOCH).all()
                yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        if self._closed:
            raise RuntimeError("storage is closed")
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _lock(self, conn: sa.Connection, statement: sa.Select[Any]) -> Any:
        """Run ``statement`` and lock its rows until the transaction ends (on
        SQLite the write transaction already holds the database's lock)."""
        if self._postgres:
            statement = statement.with_for_update(key_share=True)
        return conn.execute(statement)

    def close(self) -> None:
        """Close every pooled connection; later calls raise ``RuntimeError``."""
        self._closed = True
        with self._epoch_lock:
            self._drop_epoch_connection()
        self.engine.dispose()

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        with self._read() as conn:
            return schema.current_revision(conn)

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
            key = conn.execute(
                apps.insert().values(account_id=account_id, name=app_name, created_at=now)
            ).inserted_primary_key
            assert key is not None
            app_id = key[0]
        account = Account(id=account_id, quotas=quotas, created_at=now)
        return account, App(id=int(app_id), account_id=account_id, name=app_name)

    @staticmethod
    def _insert_account(conn: sa.Connection, account_id: str, quotas: Quotas, now: float) -> None:
        conn.execute(
            accounts.insert().values(
                id=account_id,
                plan=quotas.plan,
                max_tools=quotas.max_tools,
                bundle_size_bytes=quotas.bundle_size_bytes,
                event_batch=quotas.event_batch,
                ingest_interval=quotas.ingest_interval,
                max_apps=quotas.max_apps,
                created_at=now,
            )
        )

    def get_account(self, account_id: str) -> Account | None:
        """The account, or ``None``."""
        with self._read() as conn:
            row = conn.execute(sa.select(*_ACCOUNT).where(accounts.c.id == account_id)).first()
        return _account(row) if row else None

    def accounts(self) -> list[Account]:
        """Every account, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(*_ACCOUNT).order_by(accounts.c.created_at, accounts.c.id)
            ).all()
        return [_account(r) for r in rows]

    def _insert_ignoring_conflicts(self, table: sa.Table, **values: Any) -> sa.Insert:
        if self._postgres:
            return pg.insert(table).values(**values).on_conflict_do_nothing()
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()

    def ensure_app(self, account_id: str, name: str, now: float) -> App:
        """The app ``name`` of the account, created when missing."""
        with self._write() as conn:
            conn.execute(
                self._insert_ignoring_conflicts(
                    apps, account_id=account_id, name=name, created_at=now
                )
            )
            app_id = conn.execute(
                sa.select(apps.c.id).where(apps.c.account_id == account_id, apps.c.name == name)
            ).scalar_one()
        return App(id=int(app_id), account_id=account_id, name=name)

    def apps(self, account_id: str) -> list[App]:
        """The account's apps, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(apps.c.id, apps.c.name)
                .where(apps.c.account_id == account_id)
                .order_by(apps.c.id)
            ).all()
        return [App(id=int(r[0]), account_id=account_id, name=r[1]) for r in rows]

    def add_token(self, token_hash: str, app: App, scopes: Sequence[str], now: float) -> None:
        """Store a token hash for ``app``."""
        with self._write() as conn:
            conn.execute(
                tokens.insert().values(
                    hash=token_hash, app_id=app.id, scopes=" ".join(scopes), created_at=now
                )
            )

    def delete_token(self, token_hash: str) -> Principal | None:
        """Delete the token in one transaction (the poll epoch's triggers make every
        replica's next poll with it a 401)."""
        with self._write() as conn:
            principal = self._principal(conn, token_hash)
            if principal is not None:
                conn.execute(tokens.delete().where(tokens.c.hash == token_hash))
        return principal

    def find_token(self, token_hash: str) -> Principal | None:
        """The principal of a token hash, or ``None``."""
        with self._read() as conn:
            return self._principal(conn, token_hash)

    @staticmethod
    def _principal(conn: sa.Connection, token_hash: str) -> Principal | None:
        query = (
            sa.select(tokens.c.scopes, apps.c.id, apps.c.name, *_ACCOUNT)
            .select_from(tokens.join(apps, apps.c.id == tokens.c.app_id).join(accounts))
            .where(tokens.c.hash == token_hash)
        )
        row = conn.execute(query).first()
        if row is None:
            return None
        account = _account(row[3:])
        app = App(id=int(row[1]), account_id=account.id, name=row[2])
        return Principal(token_hash, account, app, tuple(str(row[0]).split()))

    def poll_state(self, token_hash: str) -> PollState | None:
        """The state a conditional poll decides on, in one SELECT (one snapshot).
        On SQLite (in autocommit: one statement is one snapshot) it runs on a pooled
        driver connection with SQL compiled once: the poll path's whole read costs
        about what SQLite does, not SQLAlchemy's per-execution bookkeeping."""
        if self._closed:
            raise RuntimeError("storage is closed")
        if self._poll_sql is None:
            with self._read() as conn:
                row = conn.execute(_POLL, {"token_hash": token_hash}).first()
        else:
            raw = self.engine.raw_connection()
            try:
                row = raw.cursor().execute(self._poll_sql, (token_hash,)).fetchone()
            finally:
                raw.close()  # back to the pool
        if row is None:
            return None
        return PollState(
            scopes=tuple(str(row[0]).split()),
            app_id=int(row[1]),
            current_version=int(row[2]),
            revoked=bool(row[3]),
            etag=row[4],
            bundle_kid=row[5],
            bundle_iat=None if row[6] is None else int(row[6]),
            active_kid=row[7],
            active_refresh_until=None if row[8] is None else float(row[8]),
            epoch=None if row[9] is None else str(row[9]),
        )

    def poll_epoch(self) -> str:
        """The database's poll epoch: one primary-key read on a DB-API connection
        kept for it alone, in autocommit (so the read sees every transaction
        committed before it began, and costs one round trip). When that
        connection fails (the database restarted, an idle connection was closed)
        the read is made once more on a new connection; a failure then raises."""
        with self._epoch_lock:
            if self._closed:
                raise RuntimeError("storage is closed")
            reused = self._epoch_conn is not None
            try:
                row = self._read_epoch()
            except Exception:
                self._drop_epoch_connection()
                if not reused:
                    raise
                row = self._read_epoch()  # a fresh connection, once
        if row is None:  # emptied by hand: no two reads agree, so no cache ever hits
            return "missing:" + secrets.token_hex(16)
        return str(row[0])

    def _read_epoch(self) -> Any:
        try:
            if self._epoch_conn is None:
                self._epoch_conn = self._autocommit_connection()
            cursor = self._epoch_conn.cursor()
            try:
                cursor.execute(self._epoch_sql)
                return cursor.fetchone()
            finally:
                cursor.close()
        except BaseException:
            self._drop_epoch_connection()
            raise

    def _autocommit_connection(self) -> Any:
        raw = self.engine.raw_connection()
        dbapi: Any = raw.driver_connection
        raw.detach()  # ours alone: never returned to the pool, closed by us
        dbapi.rollback()
        if self._postgres:
            dbapi.autocommit = True
        else:
            dbapi.isolation_level = None
        return dbapi

    def _drop_epoch_connection(self) -> None:
        conn, self._epoch_conn = self._epoch_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - a connection already broken
                pass

    # signing keys
    def add_signing_key(self, record: SigningKeyRecord, *, overlap: float, now: float) -> None:
        """Make ``record`` the active key, retiring the previous one."""
        with self._write() as conn:
            if self._postgres:  # one rotation at a time; readers are not blocked
                conn.exec_driver_sql("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            retired = conn.execute(
                signing_keys.update()
                .where(signing_keys.c.retired_at.is_(None))
                .values(retired_at=now, remove_at=now + overlap)
            ).rowcount
            conn.execute(
                signing_keys.insert().values(
                    kid=record.kid,
                    alg=record.alg,
                    private_pem=record.pem,
                    public_jwk=json.dumps(record.jwk, sort_keys=True),
                    created_at=now,
                    refresh_until=now + overlap if retired else None,
                )
            )

    def active_signing_key(self) -> SigningKeyRecord | None:
        """The key new bundles are signed with."""
        with self._read() as conn:
            row = conn.execute(_ACTIVE_KEY).first()
        return _key(row) if row else None

    def published_signing_keys(self, now: float) -> list[SigningKeyRecord]:
        """The keys in the JWKS at ``now``, active first then newest first."""
        retired = signing_keys.c.retired_at
        query = (
            sa.select(*_KEY)
            .where(sa.or_(retired.is_(None), signing_keys.c.remove_at > now))
            .order_by(sa.case((retired.is_(None), 0), else_=1), signing_keys.c.created_at.desc())
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [_key(r) for r in rows]

    # device keys
    def add_device_key(
        self, app_id: int, key_id: str, public_key: bytes, now: float
    ) -> KeyRegistration:
        """Register a device key for the app."""
        with self._write(polled=False) as conn:
            created = conn.execute(
                self._insert_ignoring_conflicts(
                    device_keys,
                    app_id=app_id,
                    key_id=key_id,
                    algorithm="Ed25519",
                    public_key=public_key,
                    created_at=now,
                ).execution_options(preserve_rowcount=True)  # INSERT: not kept by default
            ).rowcount
            if created == 1:
                return KeyRegistration.CREATED
            existing = self._device_key(conn, app_id, key_id)
        return KeyRegistration.EXISTS if existing == public_key else KeyRegistration.CONFLICT

    def device_key(self, app_id: int, key_id: str) -> bytes | None:
        """The raw public key registered under ``key_id`` for the app, or ``None``."""
        with self._read() as conn:
            return self._device_key(conn, app_id, key_id)

    @staticmethod
    def _device_key(conn: sa.Connection, app_id: int, key_id: str) -> bytes | None:
        value = conn.execute(
            sa.select(device_keys.c.public_key).where(
                device_keys.c.app_id == app_id, device_keys.c.key_id == key_id
            )
        ).scalar()
        return bytes(value) if value is not None else None

    # policy
    def _state(self, conn: sa.Connection, app_id: int, *, lock: bool = False) -> BundleState:
        query = sa.select(apps.c.current_version, apps.c.revoked).where(apps.c.id == app_id)
        result: Any = self._lock(conn, query) if lock else conn.execute(query)
        row = result.first()
        if row is None:
            raise KeyError(f"no app {app_id}")
        version, revoked = int(row[0]), bool(row[1])
        if version == 0:
            return BundleState(0, revoked, None, None)
        brow = conn.execute(
            sa.select(*_BUNDLE)
            .where(bundles.c.app_id == app_id, bundles.c.version == version)
            .order_by(bundles.c.id.desc())
            .limit(1)
        ).first()
        document = conn.execute(
            sa.select(versions.c.document).where(
                versions.c.app_id == app_id, versions.c.version == version
            )
        ).scalar()
        return BundleState(version, revoked, _bundle(brow) if brow else None, document)

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
        """Decide and store a new version in one transaction that holds the
        account's and the app's locks from the first read to the commit."""
        with self._write() as conn:
            # the account first (the live-app quota counts its apps), then the app
            self._lock(conn, sa.select(accounts.c.id).where(accounts.c.id == app.account_id))
            state = self._state(conn, app.id, lock=True)
            etags = frozenset(
                conn.execute(
                    sa.select(bundles.c.etag).where(
                        bundles.c.app_id == app.id, bundles.c.version == state.current_version
                    )
                ).scalars()
            )
            live = conn.execute(
                sa.select(sa.func.count())
                .select_from(apps)
                .where(
                    apps.c.account_id == app.account_id,
                    apps.c.current_version > 0,
                    apps.c.revoked == 0,
                )
            ).scalar_one()
            krow = conn.execute(_ACTIVE_KEY).first()
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
                versions.insert().values(
                    app_id=app.id,
                    version=new.version,
                    document=new.document,
                    body=new.body,
                    device_key_id=new.device_key_id,
                    signature=new.signature,
                    published_at=now,
                )
            )
            self._insert_bundle(conn, new.bundle, now)
            conn.execute(
                apps.update()
                .where(apps.c.id == app.id)
                .values(current_version=new.version, revoked=0)
            )
        return new

    @staticmethod
    def _insert_bundle(conn: sa.Connection, b: Bundle, now: float) -> None:
        conn.execute(
            bundles.insert().values(
                app_id=b.app_id,
                version=b.version,
                jws=b.jws,
                etag=b.etag,
                kid=b.kid,
                iat=b.iat,
                exp=b.exp,
                created_at=now,
            )
        )

    def refresh_bundle(
        self,
        app_id: int,
        decide: Callable[[BundleState, SigningKeyRecord], Bundle | None],
        now: float,
    ) -> BundleState:
        """Re-sign the current version when ``decide`` says so, atomically."""
        with self._write() as conn:
            state = self._state(conn, app_id, lock=True)
            krow = conn.execute(_ACTIVE_KEY).first()
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
            version = self._lock(
                conn, sa.select(apps.c.current_version).where(apps.c.id == app_id)
            ).scalar()
            if version is None or int(version) == 0:
                return None
            conn.execute(apps.update().where(apps.c.id == app_id).values(revoked=1))
            return int(version)

    # drafts
    def put_draft(self, app_id: int, version: int, document: str, now: float) -> None:
        """Store (replace) the app's draft."""
        insert = (pg.insert if self._postgres else sqlite.insert)(drafts).values(
            app_id=app_id, version=version, document=document, updated_at=now
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[drafts.c.app_id],
            set_={
                "version": insert.excluded.version,
                "document": insert.excluded.document,
                "updated_at": insert.excluded.updated_at,
            },
        )
        with self._write(polled=False) as conn:
            conn.execute(upsert)

    def get_draft(self, app_id: int) -> Draft | None:
        """The app's draft, or ``None``."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(drafts.c.version, drafts.c.document, drafts.c.updated_at).where(
                    drafts.c.app_id == app_id
                )
            ).first()
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
        """Store usage events in one batch insert, then trim the app to ``cap`` in
        the same transaction, by the bytes this upload stored (see
        :meth:`Storage.add_events`)."""
        if not events:
            return 0
        rows = [
            {
                "app_id": app_id,
                "token_hash": token_hash,
                "event_type": t,
                "payload": p,
                "occurred_at": o,
                "received_at": now,
            }
            for t, p, o in events
        ]
        added = EventUsage(len(events), sum(event_bytes(*e) for e in events))
        with self._write(polled=False) as conn:
            conn.execute(tables.events.insert(), rows)
            if cap is not None:
                self._trim(conn, app_id, cap, max(trim_limit, rows_to_free(added)))
        return len(events)

    def event_usage(self, app_id: int) -> EventUsage:
        """The app's stored events and their bytes (kept by triggers)."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(event_counts.c.events, event_counts.c.bytes).where(
                    event_counts.c.app_id == app_id
                )
            ).first()
        return EventUsage(int(row[0]), int(row[1])) if row else EventUsage(0, 0)

    def delete_events_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` events received before ``cutoff``, oldest first.

        On PostgreSQL the counts of the apps concerned are locked first, in app
        order, as an ingest's trim locks them before its events: two such
        transactions wait for each other instead of deadlocking. The events are
        chosen once: deleting "the oldest" again after the lock could reach an app
        whose counts were not locked (a trim deleted some of them meanwhile), and
        deadlock with that app's upload."""
        with self._write(polled=False) as conn:
            chosen = conn.execute(
                sa.select(events.c.id, events.c.app_id)
                .where(events.c.received_at < cutoff)
                .order_by(events.c.received_at)
                .limit(limit)
            ).all()
            if not chosen:
                return 0
            if self._postgres:
                conn.execute(
                    sa.select(event_counts.c.app_id)
                    .where(event_counts.c.app_id.in_(sorted({int(r[1]) for r in chosen})))
                    .order_by(event_counts.c.app_id)
                    .with_for_update(key_share=True)
                ).all()
            ids = [int(r[0]) for r in chosen]
            return conn.execute(events.delete().where(events.c.id.in_(ids))).rowcount

    def apps_over_event_cap(self, cap: EventCap) -> list[int]:
        """The apps holding more events or bytes than ``cap``."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(event_counts.c.app_id)
                .where(
                    sa.or_(
                        event_counts.c.events > cap.max_events,
                        event_counts.c.bytes > cap.max_bytes,
                    )
                )
                .order_by(event_counts.c.app_id)
            ).scalars()
            return [int(r) for r in rows]

    def trim_events(self, app_id: int, cap: EventCap, limit: int) -> int:
        """Delete up to ``limit`` of the app's oldest events beyond ``cap``."""
        with self._write(polled=False) as conn:
            return self._trim(conn, app_id, cap, limit)

    def _trim(self, conn: sa.Connection, app_id: int, cap: EventCap, limit: int) -> int:
        row = self._lock(
            conn,
            sa.select(event_counts.c.events, event_counts.c.bytes).where(
                event_counts.c.app_id == app_id
            ),
        ).first()
        if row is None:
            return 0
        extra_events, extra_bytes = int(row[0]) - cap.max_events, int(row[1]) - cap.max_bytes
        if extra_events <= 0 and extra_bytes <= 0:
            return 0
        # over the count only: exactly that many rows; over the bytes: walk the oldest
        # rows until enough is freed, at most ``limit`` of them
        scan = min(limit, extra_events) if extra_bytes <= 0 else limit
        size = self._stored_bytes()
        result = conn.execute(
            sa.select(events.c.id, size)
            .where(events.c.app_id == app_id)
            .order_by(events.c.id)
            .limit(scan)
        )
        count, freed, last = 0, 0, None
        try:
            for event_id, stored in result:
                if count >= extra_events and freed >= extra_bytes:
                    break
                count, freed, last = count + 1, freed + int(stored), event_id
        finally:
            result.close()
        if last is not None:
            conn.execute(events.delete().where(events.c.app_id == app_id, events.c.id <= last))
        return count

    def _stored_bytes(self) -> sa.ColumnElement[int]:
        """SQL for the bytes of one event, as the ``event_counts`` triggers count them."""
        columns = (events.c.event_type, events.c.payload, events.c.occurred_at)
        if self._postgres:
            parts = [sa.func.octet_length(c) for c in columns]
        else:
            parts = [sa.func.length(sa.cast(c, sa.LargeBinary)) for c in columns]
        return parts[0] + parts[1] + parts[2]

    def events(self, app_id: int, limit: int = 1000) -> list[StoredEvent]:
        """The app's newest ``limit`` events, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    events.c.event_type,
                    events.c.payload,
                    events.c.occurred_at,
                    events.c.received_at,
                )
                .where(events.c.app_id == app_id)
                .order_by(events.c.id.desc())
                .limit(limit)
            ).all()
        return [StoredEvent(r[0], r[1], r[2], r[3]) for r in reversed(rows)]
