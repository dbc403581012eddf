"""The poll epoch: one row whose ``token`` changes with every change of what a
poll answers (accounts, apps, tokens, signing keys, versions, bundles).

A replica caches poll state per token and serves it only while the epoch it
reads at the start of each request equals the one the state was cached under
(``d2.server.pollcache``). The token is random, not a counter, so a database
restored from a backup can never present an epoch a replica cached under with
other contents. Triggers change it on every insert, update, delete (and, on
PostgreSQL, truncate) of those tables, so a write made outside d2-server (psql,
a restore) invalidates every replica's cache too. On PostgreSQL the triggers are
``ENABLE ALWAYS``: they fire in sessions with ``session_replication_role =
replica`` too (logical replication, some restore tools).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WATCHED = ("accounts", "apps", "tokens", "signing_keys", "versions", "bundles")
"""The tables a poll's answer is read from."""

_PG_NEW_TOKEN = "gen_random_uuid()::text"  # PostgreSQL 13 and later
_SQLITE_NEW_TOKEN = "lower(hex(randomblob(16)))"


def upgrade() -> None:
    op.create_table(
        "poll_epoch",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token", sa.Text, nullable=False),
        sa.CheckConstraint("id = 1", name="poll_epoch_one_row"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    new_token = _PG_NEW_TOKEN if postgres else _SQLITE_NEW_TOKEN
    op.execute(f"INSERT INTO poll_epoch (id, token) VALUES (1, {new_token})")
    bump = f"UPDATE poll_epoch SET token = {new_token} WHERE id = 1;"
    if postgres:
        op.execute(
            "CREATE FUNCTION poll_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{bump}\nRETURN NULL;\nEND\n$$"
        )
        for table in WATCHED:
            op.execute(
                f"CREATE TRIGGER {table}_poll_epoch AFTER INSERT OR UPDATE OR DELETE "
                f"OR TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION poll_epoch_bump()"
            )
            op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_poll_epoch")
        return
    for table in WATCHED:
        for event in ("INSERT", "UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_poll_epoch_{event.lower()} AFTER {event} ON {table} "
                f"BEGIN\n{bump}\nEND"
            )
