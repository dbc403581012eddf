"""The tables of the control plane, as SQLAlchemy Core metadata (the schema at the
newest migration; the migrations in ``d2/server/migrations/versions`` create it).

Types are portable: on SQLite they keep the names the first schema used
(``INTEGER``, ``REAL``, ``TEXT``, ``BLOB``); on PostgreSQL, ids, times and byte
counts that can pass 2^31 are ``BIGINT`` and times ``DOUBLE PRECISION``.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "accounts",
    "apps",
    "bundles",
    "device_keys",
    "drafts",
    "event_counts",
    "events",
    "metadata",
    "poll_epoch",
    "signing_keys",
    "tokens",
    "versions",
]

metadata = sa.MetaData()

_REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(sa.REAL(), "sqlite")
_BIG: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, _REAL, nullable=nullable)


accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("max_tools", sa.Integer, nullable=False),
    sa.Column("bundle_size_bytes", sa.Integer, nullable=False),
    sa.Column("event_batch", sa.Integer, nullable=False),
    sa.Column("ingest_interval", sa.Integer, nullable=False),
    sa.Column("max_apps", sa.Integer, nullable=False),
    _time("created_at"),
)

apps = sa.Table(
    "apps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("current_version", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("revoked", sa.Integer, nullable=False, server_default=sa.text("0")),
    _time("created_at"),
    sa.UniqueConstraint("account_id", "name"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("hash", sa.Text, primary_key=True),
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    _time("created_at"),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.Text, primary_key=True),
    sa.Column("alg", sa.Text, nullable=False),
    sa.Column("private_pem", sa.LargeBinary, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    _time("created_at"),
    _time("refresh_until", nullable=True),
    _time("retired_at", nullable=True),
    _time("remove_at", nullable=True),
)

device_keys = sa.Table(
    "device_keys",
    metadata,
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    _time("created_at"),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("device_key_id", sa.Text, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
    _time("published_at"),
)

bundles = sa.Table(
    "bundles",
    metadata,
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
    sa.Index("bundles_by_version", "app_id", "version", "id"),
)

drafts = sa.Table(
    "drafts",
    metadata,
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("document", sa.Text, nullable=False),
    _time("updated_at"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", _BIG, primary_key=True),
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.Text, nullable=False),
    _time("received_at"),
    sa.Index("events_by_app", "app_id", "id"),
    sa.Index("events_by_received", "received_at"),
)

event_counts = sa.Table(
    "event_counts",
    metadata,
    sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), primary_key=True),
    sa.Column("events", _BIG, nullable=False),
    sa.Column("bytes", _BIG, nullable=False),
)
"""Each app's stored events and their bytes, kept exact by triggers on ``events``."""

poll_epoch = sa.Table(
    "poll_epoch",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token", sa.Text, nullable=False),
    sa.CheckConstraint("id = 1", name="poll_epoch_one_row"),
)
"""One row: a random token that triggers replace on every write to the tables a
poll reads (migration 0002), so equal tokens mean an unchanged poll state."""
