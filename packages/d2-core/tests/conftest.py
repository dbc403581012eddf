"""Shared fixtures: every test starts with no instance configured, no user set and
no D2_* variables, with HOME and XDG_CONFIG_HOME in a temporary directory."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # race_kit
from d2.core import InMemorySource, configure_rbac_sync
from d2.core.manager import PolicyManager
from d2.core.testing import RedisServer, expires_in, isolate, redis_server, reset
from d2.core.testing import policy_document as policy_doc


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:

    isolate(monkeypatch, tmp_path)
    yield
    reset()


@pytest.fixture
def configure() -> Callable[..., PolicyManager]:
    """Configure the default (or a named) instance from an in-memory document."""

    def _configure(
        *entries: dict[str, Any],
        instance_name: str = "default",
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PolicyManager:
        doc = policy_doc(*entries, **(metadata or {}))
        return configure_rbac_sync(
            source=InMemorySource(doc), instance_name=instance_name, **kwargs
        )

    return _configure


@pytest.fixture
def make_doc() -> Callable[..., dict[str, Any]]:
    """``make_doc(*entries, **metadata)``: a valid policy document."""
    return policy_doc


@pytest.fixture
def future() -> Callable[..., str]:
    """``future(seconds)``: an RFC 3339 time that far ahead."""
    return expires_in


# read at import: the autouse fixture above clears D2_* variables for each test
REQUIRE_REDIS = os.environ.get("D2_REQUIRE_REDIS") == "1"


def _need_redis() -> None:
    """Skip (fail with ``D2_REQUIRE_REDIS=1``) without redis-server or redis-py."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (Debian package redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append('the redis package (pip install "d2-core[redis]")')
    if missing:
        message = "Redis tests need " + " and ".join(missing)
        if REQUIRE_REDIS:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """URL of a redis-server shared by a test module: give each test its own
    store key ``prefix``."""
    _need_redis()
    with redis_server() as server:
        yield server.url


@pytest.fixture
def redis_instance() -> Iterator[RedisServer]:
    """A redis-server of this test alone (it may ``.stop()`` and ``.start()`` it)."""
    _need_redis()
    with redis_server() as server:
        yield server
