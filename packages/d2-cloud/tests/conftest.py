"""Fixtures for the cloud tests (the fakes live in ``cloudfakes.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from d2.core.testing import isolate

sys.path.insert(0, os.path.dirname(__file__))

from cloudfakes import BASE, Clock, FakePlane
from d2.core import clear_user_context, shutdown_all_rbac


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    isolate(monkeypatch, tmp_path)
    yield
    shutdown_all_rbac()
    clear_user_context()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plane(clock: Clock) -> FakePlane:
    return FakePlane(clock)


@pytest.fixture
def cloud_options(plane: FakePlane, clock: Clock, tmp_path: Any) -> Callable[..., dict[str, Any]]:
    def options(**overrides: Any) -> dict[str, Any]:
        return {
            "token": "d2_test",
            "api_url": BASE,
            "transport": plane.transport(),
            "clock": clock,
            "state_path": str(tmp_path / "state.json"),
            "first_fetch_timeout": 5.0,
            **overrides,
        }

    return options
