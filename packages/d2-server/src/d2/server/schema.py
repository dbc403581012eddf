"""The database schema's version: Alembic migrations shipped in the package.

``d2-server migrate`` (and ``init``) call :func:`upgrade`; every other command,
and :class:`~d2.server.store.SQLStorage` unless told to migrate, calls
:func:`check`, which refuses a database whose schema is behind (naming
``d2-server migrate``) or ahead (written by a newer d2-server) of this one.

The Alembic configuration is built here in code; no ``alembic.ini`` is needed.
A SQLite file made by d2-server 2.0.0's first cut (its hand-written migrations,
``PRAGMA user_version = 3``, no ``alembic_version`` table) holds exactly the
schema of the first revision: :func:`upgrade` stamps it with that revision, then
applies the newer ones.
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from .database import WRITE

__all__ = [
    "ALEMBIC_USER_VERSION",
    "LEGACY_REVISION",
    "LEGACY_USER_VERSION",
    "SchemaAheadError",
    "SchemaBehindError",
    "SchemaError",
    "check",
    "current_revision",
    "head_revision",
    "upgrade",
]

LEGACY_USER_VERSION = 3
"""``PRAGMA user_version`` of a SQLite file made by the first cut's own migrations."""

LEGACY_REVISION = "0001"
"""The revision whose schema equals that file's."""

ALEMBIC_USER_VERSION = 1000
"""``PRAGMA user_version`` of a SQLite file this d2-server migrated: higher than the
first cut knows, so that d2-server refuses the file ("upgrade d2-server") instead of
using a schema it does not know."""

_SCRIPTS = Path(__file__).parent / "migrations"


class SchemaError(RuntimeError):
    """The database's schema is not the one this d2-server runs on."""


class SchemaBehindError(SchemaError):
    """The schema is older than this d2-server's (or the database is empty):
    run ``d2-server migrate``."""


class SchemaAheadError(SchemaError):
    """The schema was written by a newer d2-server: upgrade d2-server."""


def _config(conn: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


@functools.lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this d2-server knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def current_revision(conn: sa.Connection) -> str | None:
    """The revision the database is at, or ``None`` (no ``alembic_version``)."""
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_user_version(conn: sa.Connection) -> int:
    if conn.dialect.name != "sqlite":
        return 0
    return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)


def _state(conn: sa.Connection) -> tuple[str | None, str]:
    """``(current, head)``, refusing a database ahead of this d2-server."""
    head = head_revision()
    current = current_revision(conn)
    if current is None:
        legacy = _legacy_user_version(conn)
        if legacy > LEGACY_USER_VERSION:
            raise SchemaAheadError(
                f"the database is at schema {legacy}, newer than this d2-server knows; "
                "upgrade d2-server"
            )
        if 0 < legacy < LEGACY_USER_VERSION:
            raise SchemaBehindError(
                f"the database is at the pre-release schema {legacy} of d2-server 2.0.0, "
                "which `d2-server migrate` cannot upgrade; create a new database with "
                "`d2-server init`"
            )
        return (LEGACY_REVISION if legacy == LEGACY_USER_VERSION else None), head
    try:
        known = _scripts().get_revision(current)
    except CommandError:
        known = None
    if known is None:
        raise SchemaAheadError(
            f"the database is at schema revision {current}, which this d2-server does not "
            f"know (its newest is {head}): it was written by a newer d2-server; upgrade "
            "d2-server"
        )
    return current, head


def check(conn: sa.Connection) -> str:
    """The database's revision when it is this d2-server's; raises
    :class:`SchemaBehindError` or :class:`SchemaAheadError` otherwise."""
    current, head = _state(conn)
    if current != head or current_revision(conn) is None:
        if current is None:
            at = "has no d2-server schema"
        elif current_revision(conn) is None:
            at = "was made by the first cut of d2-server 2.0.0 (no Alembic revision)"
        else:
            at = f"is at schema revision {current}"
        raise SchemaBehindError(
            f"the database {at}, older than this d2-server's ({head}); run "
            "`d2-server migrate` (back it up first)"
        )
    return head


def upgrade(engine: sa.Engine) -> str:
    """Bring the database to the newest revision in one transaction (on SQLite a
    ``BEGIN IMMEDIATE`` one) and return it. A first-cut SQLite file is stamped
    first; a database ahead of this d2-server is refused (:class:`SchemaAheadError`)
    and left untouched, and so is one a failing migration would leave half-done."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            current, head = _state(conn)
            config = _config(conn)
            if current == LEGACY_REVISION and current_revision(conn) is None:
                command.stamp(config, LEGACY_REVISION)
            if current != head:
                command.upgrade(config, "head")
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA user_version = {ALEMBIC_USER_VERSION}")
    return head
