"""Fixtures for end-to-end tests against a real d2-server.

``d2_server``: a server on a free 127.0.0.1 port with one account and app
(``test-app``), a runtime and a developer token and a
:class:`~d2.server.testing.FakeClock`; stopped after the test. Every test that
uses it runs twice: on a temporary SQLite file and on a PostgreSQL database (one
throwaway cluster per session; without PostgreSQL that run skips, naming why, and
fails under ``D2_REQUIRE_POSTGRES=1``).

``d2_server_factory(**options)``: the same with options (``quotas=Quotas(...)``,
``alg="ES256"``, ``ingest_burst=2``, ``poll_seconds=...``, ``bundle_lifetime=...``;
see :func:`d2.server.testing.start_server`); every server it starts is stopped after
the test. Example::

    def test_bundle(d2_server):
        d2_server.publish(d2_server.policy({"role": "r", "permissions": ["t"]}))
        assert d2_server.fetch_bundle().json()["version"] == 1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from d2.server.testing import D2Server, PostgresDatabases, postgres_server, start_server

REQUIRE_POSTGRES = os.environ.get("D2_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL cluster (skipped, or failed under
    ``D2_REQUIRE_POSTGRES=1``, when it cannot run)."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except (RuntimeError, OSError) as exc:
            if REQUIRE_POSTGRES:
                pytest.fail(f"D2_REQUIRE_POSTGRES=1 but PostgreSQL cannot run: {exc}")
            pytest.skip(f"PostgreSQL unavailable ({exc}); set D2_REQUIRE_POSTGRES=1 to fail")
        databases = PostgresDatabases(url)
        stack.callback(databases.close)
        yield databases


@pytest.fixture(params=["sqlite", "postgresql"])
def d2_server_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., D2Server]]:
    """Start servers with options; all are stopped at the end of the test. On
    PostgreSQL each server gets a database of its own."""
    postgres: PostgresDatabases | None = (
        request.getfixturevalue("postgres") if request.param == "postgresql" else None
    )
    with ExitStack() as stack:
        count = 0

        def make(**options: Any) -> D2Server:
            nonlocal count
            count += 1
            directory = tmp_path / f"d2-server-{count}"
            directory.mkdir()
            if postgres is not None and "db" not in options:
                url = postgres.new(migrated=True)
                stack.callback(postgres.release, url, migrated=True)
                options["db"] = url
            return stack.enter_context(start_server(directory, **options))

        yield make


@pytest.fixture
def d2_server(d2_server_factory: Callable[..., D2Server]) -> D2Server:
    """A running d2-server with default options."""
    return d2_server_factory()
