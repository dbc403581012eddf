"""A throwaway PostgreSQL for tests and benchmarks: :func:`postgres_server` runs a
cluster (``initdb`` + ``pg_ctl`` of the Debian package) in a temporary directory on
loopback; :class:`PostgresDatabases` hands out databases of one cluster, empty or
at the newest schema, and takes them back."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from . import schema, tables
from .store import SQLStorage

__all__ = ["PostgresDatabases", "postgres_binaries", "postgres_server"]


def postgres_binaries() -> Path | None:
    """The directory of PostgreSQL's ``initdb`` and ``pg_ctl``: beside an ``initdb``
    on ``PATH``, else the newest ``/usr/lib/postgresql/<version>/bin`` (where the
    Debian package puts them, off ``PATH``); ``None`` when there is none."""
    on_path = shutil.which("initdb")
    if on_path:
        directory = Path(on_path).resolve().parent
        if (directory / "pg_ctl").exists():
            return directory
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")],
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server(binaries: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Run a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) in a temporary
    directory, listening on a free ``127.0.0.1`` port, trusting local connections,
    with durability off (``fsync=off``: test data only); yield its URL
    ``postgresql://d2@127.0.0.1:<port>/postgres`` (the superuser ``d2``); stop it
    and delete the directory on exit.

    PostgreSQL refuses to run as root: under root the cluster is created and run
    as the ``postgres`` user (``runuser``), in a directory that user owns.
    Raises :class:`RuntimeError` when the binaries (see :func:`postgres_binaries`)
    are missing or the server does not start; the message says what to install."""
    bindir = Path(binaries) if binaries is not None else postgres_binaries()
    if bindir is None or not (bindir / "initdb").exists():
        raise RuntimeError(
            "PostgreSQL's initdb is not installed: install the Debian/Ubuntu package "
            "postgresql (apt-get install postgresql) or put initdb and pg_ctl on PATH"
        )
    prefix: list[str] = []
    owner: tuple[int, int] | None = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "PostgreSQL refuses to run as root and there is no postgres user to run "
                "it as: install the postgresql package, or run the tests as another user"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:  # pragma: no cover - util-linux is always there on Debian
            raise RuntimeError("running PostgreSQL as root needs runuser (util-linux)")
        prefix, owner = [runuser, "-u", "postgres", "--"], (user.pw_uid, user.pw_gid)
    port = _free_port()
    directory = tempfile.mkdtemp(prefix="d2-postgres-")
    data, log = os.path.join(directory, "data"), os.path.join(directory, "server.log")
    if owner is not None:
        os.chown(directory, *owner)

    def run(*command: str) -> None:
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            detail = done.stderr.strip() or done.stdout.strip()
            try:
                with open(log) as fh:
                    detail += "\n" + fh.read()[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"{Path(command[0]).name} failed: {detail}")

    started = False
    try:
        run(
            str(bindir / "initdb"),
            "-D",
            data,
            "-U",
            "d2",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        )
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        run(str(bindir / "pg_ctl"), "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
        started = True
        yield f"postgresql://d2@127.0.0.1:{port}/postgres"
    finally:
        try:
            if started:
                run(str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class PostgresDatabases:
    """Databases of one cluster (``url``, a superuser's, e.g. from
    :func:`postgres_server`): :meth:`new` gives an empty one or one at the newest
    schema with no rows (a clone of a migrated template, or a released one emptied
    with ``TRUNCATE``, much cheaper than a ``CREATE DATABASE``); :meth:`release`
    takes it back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._admin = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
        )
        self._names = itertools.count(1)
        self._template: str | None = None
        self._free: list[str] = []

    def url_of(self, name: str) -> str:
        """The URL of the cluster's database ``name``."""
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _sql(self, statement: str) -> None:
        with self._admin.connect() as conn:
            conn.exec_driver_sql(statement)

    def new(self, *, migrated: bool) -> str:
        """A new database (its URL): empty, or at the newest schema."""
        if migrated and self._free:
            return self._free.pop()
        template = "template0"
        if migrated:
            if self._template is None:
                self._sql("CREATE DATABASE d2_template TEMPLATE template0")
                SQLStorage(self.url_of("d2_template"), migrate=True).close()
                self._template = "d2_template"
            template = self._template
        name = f"d2_test_{next(self._names)}"
        self._sql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url_of(name)

    def release(self, url: str, *, migrated: bool) -> None:
        """Empty a migrated database for the next :meth:`new` (if its schema is
        still the newest), else drop it."""
        if migrated:
            engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
            try:
                with engine.begin() as conn:
                    if schema.current_revision(conn) == schema.head_revision():
                        names = ", ".join(t.name for t in tables.metadata.sorted_tables)
                        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
                        conn.exec_driver_sql(  # the one row migration 0002 made
                            "INSERT INTO poll_epoch (id, token) VALUES (1, gen_random_uuid()::text)"
                        )
                        self._free.append(url)
                        return
            finally:
                engine.dispose()
        self._sql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def close(self) -> None:
        """Close the administration connection (the cluster keeps running)."""
        self._admin.dispose()
