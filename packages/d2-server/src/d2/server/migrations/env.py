"""The Alembic environment of d2-server, run by :func:`d2.server.schema.upgrade`.

The caller hands over an open connection (``config.attributes["connection"]``);
every migration runs in the one transaction the caller began and commits, so a
failed upgrade leaves the database as it was. On PostgreSQL a transaction-level
advisory lock makes two concurrent ``d2-server migrate`` runs take turns (on
SQLite, the caller's ``BEGIN IMMEDIATE`` does).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
if connection.dialect.name == "postgresql":
    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7340211)")
context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():  # the caller's: nothing begins or commits here
    context.run_migrations()
