"""The first schema: accounts, apps, tokens, signing keys, per-app device keys,
versions, bundles, drafts, usage events and their per-app counts.

On SQLite this is exactly the schema d2-server 2.0.0's first cut left in a file
(its hand-written migrations 1 to 3, ``PRAGMA user_version = 3``); ``d2-server
migrate`` stamps such a file with this revision instead of creating anything.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(sa.REAL(), "sqlite")
_BIG: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# SQLite: row triggers, as the first cut created them (bytes of an event: its
# event_type, payload and occurred_at in UTF-8)
_SQLITE_BYTES = (
    "length(CAST({0}.event_type AS BLOB)) + length(CAST({0}.payload AS BLOB)) "
    "+ length(CAST({0}.occurred_at AS BLOB))"
)
_SQLITE_ADD = (
    "INSERT OR IGNORE INTO event_counts (app_id, events, bytes) VALUES (new.app_id, 0, 0);\n"
    "UPDATE event_counts SET events = events + 1, bytes = bytes + "
    + _SQLITE_BYTES.format("new")
    + " WHERE app_id = new.app_id;"
)
_SQLITE_REMOVE = (
    "UPDATE event_counts SET events = events - 1, bytes = bytes - ("
    + _SQLITE_BYTES.format("old")
    + ") WHERE app_id = old.app_id;"
)
_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER events_counted_in AFTER INSERT ON events BEGIN\n{_SQLITE_ADD}\nEND",
    f"CREATE TRIGGER events_counted_out AFTER DELETE ON events BEGIN\n{_SQLITE_REMOVE}\nEND",
    "CREATE TRIGGER events_counted_moved AFTER UPDATE OF app_id, event_type, payload, "
    f"occurred_at ON events BEGIN\n{_SQLITE_REMOVE}\n{_SQLITE_ADD}\nEND",
)

# PostgreSQL: statement triggers over transition tables, so a batch insert or a
# batch delete updates each app's counts once
_PG_SUM = (
    "SELECT app_id, COUNT(*) AS n, SUM(octet_length(event_type) + octet_length(payload) "
    "+ octet_length(occurred_at)) AS b FROM {0} GROUP BY app_id"
)
_PG_ADD = (
    "INSERT INTO event_counts AS c (app_id, events, bytes) "
    + _PG_SUM.format("added")
    + " ORDER BY app_id ON CONFLICT (app_id) DO UPDATE SET events = c.events + excluded.events, "
    "bytes = c.bytes + excluded.bytes;"
)
_PG_REMOVE = (
    "UPDATE event_counts c SET events = c.events - d.n, bytes = c.bytes - d.b FROM ("
    + _PG_SUM.format("removed")
    + ") d WHERE c.app_id = d.app_id;"
)
_PG_FUNCTIONS = {
    "events_counted_in": _PG_ADD,
    "events_counted_out": _PG_REMOVE,
    "events_counted_moved": _PG_REMOVE + "\n" + _PG_ADD,
}
_PG_TRIGGERS = (
    "CREATE TRIGGER events_counted_in AFTER INSERT ON events "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION events_counted_in()",
    "CREATE TRIGGER events_counted_out AFTER DELETE ON events "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION events_counted_out()",
    "CREATE TRIGGER events_counted_moved AFTER UPDATE ON events "
    "REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT "
    "EXECUTE FUNCTION events_counted_moved()",
)


def _time(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, _REAL, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("max_tools", sa.Integer, nullable=False),
        sa.Column("bundle_size_bytes", sa.Integer, nullable=False),
        sa.Column("event_batch", sa.Integer, nullable=False),
        sa.Column("ingest_interval", sa.Integer, nullable=False),
        sa.Column("max_apps", sa.Integer, nullable=False),
        _time("created_at"),
    )
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("current_version", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("revoked", sa.Integer, nullable=False, server_default=sa.text("0")),
        _time("created_at"),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_table(
        "tokens",
        sa.Column("hash", sa.Text, primary_key=True),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        _time("created_at"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("alg", sa.Text, nullable=False),
        sa.Column("private_pem", sa.LargeBinary, nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        _time("created_at"),
        _time("refresh_until", nullable=True),
        _time("retired_at", nullable=True),
        _time("remove_at", nullable=True),
    )
    op.create_table(
        "versions",
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("device_key_id", sa.Text, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        _time("published_at"),
    )
    op.create_table(
        "bundles",
        sa.Column("id", _BIG, primary_key=True),
        sa.Column("app_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("jws", sa.Text, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("kid", sa.Text, nullable=False),
        sa.Column("iat", _BIG, nullable=False),
        sa.Column("exp", _BIG, nullable=False),
        _time("created_at"),
        sa.ForeignKeyConstraint(["app_id", "version"], ["versions.app_id", "versions.version"]),
    )
    op.create_index("bundles_by_version", "bundles", ["app_id", "version", "id"])
    op.create_table(
        "drafts",
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        _time("updated_at"),
    )
    op.create_table(
        "events",
        sa.Column("id", _BIG, primary_key=True),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.Text, nullable=False),
        _time("received_at"),
    )
    op.create_index("events_by_app", "events", ["app_id", "id"])
    op.create_table(
        "device_keys",
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        _time("created_at"),
    )
    op.create_index("events_by_received", "events", ["received_at"])
    op.create_table(
        "event_counts",
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
        sa.Column("events", _BIG, nullable=False),
        sa.Column("bytes", _BIG, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, body in _PG_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                f"BEGIN\n{body}\nRETURN NULL;\nEND\n$$"
            )
        triggers = _PG_TRIGGERS
    else:
        triggers = _SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)
