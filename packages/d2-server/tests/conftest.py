"""Fixtures of the d2-server unit tests: every storage, service and CLI test runs on
both databases, a SQLite file and a real PostgreSQL (one throwaway cluster per test
session, :func:`d2.server.testing.postgres_server`; each test gets a database of its
own, cloned from a migrated template). Without PostgreSQL the ``postgresql``
params skip, naming why; with ``D2_REQUIRE_POSTGRES=1`` they fail instead."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from d2.server import ControlPlane, ServerConfig, SQLStorage
from d2.server.testing import FakeClock, PostgresDatabases, postgres_server

REQUIRE_POSTGRES = os.environ.get("D2_REQUIRE_POSTGRES") == "1"
DATABASES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL cluster (skipped, or failed under
    ``D2_REQUIRE_POSTGRES=1``, when it cannot run)."""
    stack = contextlib.ExitStack()
    try:
        url = stack.enter_context(postgres_server())
    except (RuntimeError, OSError) as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"D2_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {exc}")
        pytest.skip(f"PostgreSQL unavailable ({exc}); set D2_REQUIRE_POSTGRES=1 to fail instead")
    with stack:
        databases = PostgresDatabases(url)
        try:
            yield databases
        finally:
            databases.close()


_TEMPLATES: dict[str, Path] = {}


def _sqlite_template(tmp_path: Path) -> Path:
    """A SQLite file at the newest schema, made once per session (by migrating it),
    that tests copy."""
    if "sqlite" not in _TEMPLATES:
        path = tmp_path.parent / "d2-template.db"
        SQLStorage(path, migrate=True).close()
        _TEMPLATES["sqlite"] = path
    return _TEMPLATES["sqlite"]


class Databases:
    """Fresh databases of one kind for one test; all removed at its end."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._tmp = tmp_path
        self._files = itertools.count(1)
        self._postgres: PostgresDatabases | None = (
            request.getfixturevalue("postgres") if kind == "postgresql" else None
        )
        self._made: list[tuple[str, bool]] = []
        self._stores: list[SQLStorage] = []
        self._fresh: SQLStorage | None = None

    def location(self, *, migrated: bool = False) -> str:
        """The ``--db`` of a new database: a SQLite path (not created unless
        ``migrated``) or a PostgreSQL URL (an empty database unless ``migrated``)."""
        if self._postgres is None:
            path = self._tmp / f"d2-{next(self._files)}.db"
            if migrated:
                shutil.copyfile(_sqlite_template(self._tmp), path)
                path.chmod(0o600)
            return str(path)
        url = self._postgres.new(migrated=migrated)
        self._made.append((url, migrated))
        return url

    def storage(self) -> SQLStorage:
        """A storage on a new database at the newest schema."""
        store = SQLStorage(self.location(migrated=True))
        self._stores.append(store)
        return store

    def replace(self) -> SQLStorage:
        """Like :meth:`storage`, but first closes (and hands back) the database
        the previous call made: for tests that need a new one per example."""
        if self._fresh is not None:
            self._fresh.close()
            self._stores.remove(self._fresh)
            if self._postgres is not None:
                url, migrated = self._made.pop()
                self._postgres.release(url, migrated=migrated)
        self._fresh = self.storage()
        return self._fresh

    def close(self) -> None:
        for store in self._stores:
            store.close()
        if self._postgres is not None:
            for url, migrated in self._made:
                self._postgres.release(url, migrated=migrated)


@pytest.fixture(params=DATABASES)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    """New databases of the test's kind (the test runs once per kind)."""
    made = Databases(request.param, tmp_path, request)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def db(databases: Databases) -> str:
    """The ``--db`` of a new, empty database (a SQLite path not yet created)."""
    return databases.location()


@pytest.fixture
def new_storage(databases: Databases) -> Callable[[], SQLStorage]:
    """Makes a storage on a new migrated database, closing the one it made before
    (for a new database per Hypothesis example)."""
    return databases.replace


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def storage(databases: Databases) -> SQLStorage:
    return databases.storage()


@pytest.fixture
def plane(storage: SQLStorage, clock: FakeClock) -> ControlPlane:
    return ControlPlane(storage, ServerConfig(clock=clock, bundle_lifetime=3600))
