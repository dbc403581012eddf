"""Fixtures for end-to-end tests against a real d2-server.

``d2_server``: a server on a free 127.0.0.1 port with a temporary SQLite file, one
account and app (``test-app``), a runtime and a developer token and a
:class:`~d2.server.testing.FakeClock`; stopped after the test.

``d2_server_factory(**options)``: the same with options (``quotas=Quotas(...)``,
``alg="ES256"``, ``ingest_burst=2``, ``poll_seconds=...``, ``bundle_lifetime=...``;
see :func:`d2.server.testing.start_server`); every server it starts is stopped after
the test. Example::

    def test_bundle(d2_server):
        d2_server.publish(d2_server.policy({"role": "r", "permissions": ["t"]}))
        assert d2_server.fetch_bundle().json()["version"] == 1
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from d2.server.testing import D2Server, start_server


@pytest.fixture
def d2_server_factory(tmp_path: Path) -> Iterator[Callable[..., D2Server]]:
    """Start servers with options; all are stopped at the end of the test."""
    with ExitStack() as stack:
        count = 0

        def make(**options: Any) -> D2Server:
            nonlocal count
            count += 1
            directory = tmp_path / f"d2-server-{count}"
            directory.mkdir()
            return stack.enter_context(start_server(directory, **options))

        yield make


@pytest.fixture
def d2_server(d2_server_factory: Callable[..., D2Server]) -> D2Server:
    """A running d2-server with default options."""
    return d2_server_factory()
