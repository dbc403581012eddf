"""Cloud mode end to end: the d2-cloud client against the real d2-server on
127.0.0.1, with the server's controllable clock driving both sides."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    BundleExpiredError,
    MissingPolicyError,
    PermissionDeniedError,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    set_user,
    shutdown_all_rbac,
)
from d2.server.testing import D2Server, start_server


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for key in list(os.environ):
        if key.startswith("D2_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("D2_SILENT", "1")
    clear_user_context()
    yield
    shutdown_all_rbac()
    clear_user_context()


def connect(server: D2Server, tmp_path: Path, **options: Any) -> Any:
    return configure_rbac_sync(
        token=server.runtime_token,
        api_url=server.base_url,
        clock=server.clock,
        state_path=str(tmp_path / "bundles.json"),
        first_fetch_timeout=10.0,
        **options,
    )


@pytest.fixture
def server(d2_server_factory: Callable[..., D2Server]) -> D2Server:
    srv = d2_server_factory(poll_seconds=5, bundle_lifetime=3600)
    srv.register_key()
    srv.publish(srv.policy({"role": "agent", "permissions": ["search"]}))
    return srv


@pytest.fixture
def search() -> Any:
    return d2_guard("search")(lambda: "results")


def test_first_fetch_then_304_then_a_new_version_within_one_interval(
    server: D2Server, tmp_path: Path, search: Any
) -> None:
    manager = connect(server, tmp_path)
    assert manager.mode == "cloud" and manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results"
    first = manager.policy
    manager.reload()  # 304 Not Modified: the same compiled policy stays
    assert manager.policy is first
    server.publish(server.policy({"role": "agent", "permissions": ["search", "summarize"]}))
    deadline = time.monotonic() + 8  # the server says 5 s; jitter is +-10%
    while manager.policy.version != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert manager.policy.version == 2
    assert d2_guard("summarize")(lambda: "ok")() == "ok"


def test_revoke_denies_and_the_next_publish_restores(
    server: D2Server, tmp_path: Path, search: Any
) -> None:
    manager = connect(server, tmp_path)
    set_user("u", roles=["agent"])
    assert server.revoke().status_code == 200
    with pytest.raises(Exception, match="revoked"):
        manager.reload()
    with pytest.raises(MissingPolicyError) as info:
        search()
    assert info.value.reason == "policy_revoked"
    server.publish(server.policy({"role": "agent", "permissions": ["search"]}))
    manager.reload()
    assert manager.policy.version == 2 and search() == "results"


def test_key_rotation_with_jwks_refresh(server: D2Server, tmp_path: Path, search: Any) -> None:
    manager = connect(server, tmp_path, jwks_floor=0)
    server.rotate_key("ES256", overlap=600)
    server.publish(server.policy({"role": "agent", "permissions": ["search"]}))
    manager.reload()
    assert manager.policy.version == 2
    set_user("u", roles=["agent"])
    assert search() == "results"


def test_expiry_denies_every_call(
    d2_server_factory: Callable[..., D2Server],
    tmp_path: Path,
    search: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = d2_server_factory(poll_seconds=5, bundle_lifetime=60)
    srv.register_key()
    srv.publish(srv.policy({"role": "agent", "permissions": ["search"]}))
    monkeypatch.setattr("d2.core.evaluate._now", srv.clock)
    connect(srv, tmp_path)
    set_user("u", roles=["agent"])
    assert search() == "results"
    srv.clock.advance(61)
    with pytest.raises(BundleExpiredError):
        search()


def test_restart_offline_from_the_state_file(tmp_path: Path, search: Any) -> None:
    (tmp_path / "srv").mkdir()
    with start_server(tmp_path / "srv", poll_seconds=5) as srv:
        srv.register_key()
        srv.publish(srv.policy({"role": "agent", "permissions": ["search"]}))
        base, token, clock = srv.base_url, srv.runtime_token, srv.clock
        connect(srv, tmp_path).shutdown()
    # the server is gone: the process starts from its last good, verified bundle
    manager = configure_rbac_sync(
        token=token,
        api_url=base,
        clock=clock,
        state_path=str(tmp_path / "bundles.json"),
        first_fetch_timeout=2.0,
    )
    assert manager.policy is not None and manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results"


def test_usage_events_reach_the_server(server: D2Server, tmp_path: Path, search: Any) -> None:
    manager = connect(server, tmp_path)
    denied = d2_guard("delete", on_deny=None)(lambda: None)
    set_user("alice", roles=["agent"])
    search()
    denied()
    manager.shutdown()  # flushes
    kinds = [(e.event_type, json.loads(e.payload).get("decision")) for e in server.events()]
    assert ("authz_decision", "allowed") in kinds and ("authz_decision", "denied") in kinds
    assert any(kind == "policy_loaded" for kind, _ in kinds)


def test_other_apps_bundle_is_refused(server: D2Server, tmp_path: Path) -> None:
    other = server.add_app("other-app")
    manager = configure_rbac_sync(
        token=other.runtime_token,
        api_url=server.base_url,
        clock=server.clock,
        state_path=str(tmp_path / "other.json"),
        first_fetch_timeout=5.0,
    )
    assert manager.policy is None  # nothing published for it: fail closed
    set_user("u", roles=["agent"])
    with pytest.raises(PermissionDeniedError):
        d2_guard("search")(lambda: None)()
