"""Fixtures of the d2-server unit tests: a migrated SQLite file, a fake clock and a
control plane on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from d2.server import ControlPlane, ServerConfig, SQLiteStorage
from d2.server.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    store = SQLiteStorage(tmp_path / "d2.db")
    yield store
    store.close()


@pytest.fixture
def plane(storage: SQLiteStorage, clock: FakeClock) -> ControlPlane:
    return ControlPlane(storage, ServerConfig(clock=clock, bundle_lifetime=3600))
