"""Cloud mode end to end: the d2-cloud client against the real d2-server on
127.0.0.1, with the server's controllable clock driving both sides."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
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


# -- the state file: what someone who can write it (but lacks the token) can do -----------
class Switch(httpx.AsyncBaseTransport):
    """The real network to the server, or a refused connection while ``down``: fault
    injection for the transport only, everything else is the real d2-server."""

    def __init__(self, *, down: bool = False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.down = down

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused (test)", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def start(
    server: D2Server, state: Path, *, down: bool = False, token: str | None = None, **options: Any
) -> Any:
    """``configure_rbac_sync`` against ``server`` with the state file ``state``; the
    network is refused while ``manager.switch.down``."""
    switch = Switch(down=down)
    manager = configure_rbac_sync(
        token=token or server.runtime_token,
        api_url=options.pop("api_url", server.base_url),
        clock=server.clock,
        state_path=str(state),
        first_fetch_timeout=options.pop("first_fetch_timeout", 2.0 if down else 10.0),
        transport=switch,
        **options,
    )
    manager.switch = switch
    return manager


def records(state: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parsed file and its per-entry records (whatever the file format)."""
    data = json.loads(state.read_text())
    return data, data.get("entries", data.get("apps"))


def tamper(state: Path, index: int = 0, **fields: Any) -> None:
    """What an attacker with write access does: set ``fields`` in the entry number
    ``index`` of the file. The entry's integrity tag, if any, stays as it was: the
    attacker does not hold the token that keys it."""
    data, entries = records(state)
    record = entries[list(entries)[index]]
    if "body" in record:
        body = json.loads(record["body"])
        body.update(fields)
        record["body"] = json.dumps(body)
    else:
        record.update(fields)
    state.write_text(json.dumps(data))


class Forger:
    """The attacker's own Ed25519 key, published under the real key's ``kid``."""

    def __init__(self, kid: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from jwt.algorithms import OKPAlgorithm

        self.private = ed25519.Ed25519PrivateKey.generate()
        jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}]}
        self.kid = kid

    def bundle(self, server: D2Server, version: int, permissions: list[str]) -> str:
        import jwt

        now = int(server.clock())
        claims = {
            "aud": f"d2-policy:{server.account_id}:{server.app_name}",
            "iat": now,
            "exp": now + 30 * 86400,
            "version": version,
            "metadata": {"name": server.app_name},
            "policies": [{"role": "agent", "permissions": permissions}],
        }
        headers = {"kid": self.kid, "typ": "d2-policy+jwt"}
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers=headers)


def denied(tool: str = "delete_everything") -> bool:
    try:
        d2_guard(tool)(lambda: None)()
    except PermissionDeniedError:
        return True
    return False


def test_a_forged_key_and_bundle_in_the_state_file_are_never_in_force(
    server: D2Server, tmp_path: Path, search: Any, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "bundles.json"
    start(server, state).shutdown()  # a genuine entry for version 1
    forger = Forger(kid=server.jwks()["keys"][0]["kid"])
    forged = forger.bundle(server, 10**9, ["*"])
    tamper(state, jws=forged, version=10**9, jwks=forger.jwks)

    offline = start(server, state, down=True)
    assert offline.policy is None  # fail closed, as with no state file
    assert "integrity" in caplog.text
    set_user("mallory", roles=["agent"])
    assert denied() and denied("search")
    offline.switch.down = False  # the network is back: the real policy, not a "rollback"
    offline.reload()
    assert offline.policy.version == 1 and search() == "results" and denied()
    offline.shutdown()

    tamper(state, jws=forged, version=10**9, jwks=forger.jwks)
    online = start(server, state)
    assert online.policy.version == 1 and denied()


def test_a_forged_revocation_tombstone_is_not_honoured(
    server: D2Server, tmp_path: Path, search: Any, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "bundles.json"
    start(server, state).shutdown()
    audience = f"d2-policy:{server.account_id}:{server.app_name}"
    # the old format's tombstone, and the new format's, both for a version never reached
    tomb = {"revoked": True, "kind": "revoked", "version": 10**9, "digest": "x"}
    tamper(state, audience=audience, **tomb)
    manager = start(server, state)
    assert manager.policy is not None and manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results"
    manager.reload()  # and it stays so
    assert manager.policy.version == 1
    manager.shutdown()
    # sealed by the token's holder, a tombstone holds until the control plane answers
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    file = StateFile(str(state), StateSeal(server.runtime_token, server.base_url))
    file.save({"kind": "revoked", "audience": audience, "app": server.app_name, **tomb})
    offline = start(server, state, down=True)
    with pytest.raises(MissingPolicyError) as info:
        search()
    assert info.value.reason == "policy_revoked"
    offline.switch.down = False
    offline.reload()
    assert offline.policy.version == 1 and search() == "results"


def test_an_entry_written_for_another_app_or_control_plane_is_ignored(
    server: D2Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from d2.server.testing import DeviceKey

    other = server.add_app("other-app")
    key = server.register_key(DeviceKey("other-device"), token=other.developer_token)
    everything = {
        "metadata": {"name": "other-app"},
        "policies": [{"role": "agent", "permissions": ["*"]}],
    }
    assert server.publish(everything, key=key, token=other.developer_token).status_code == 201
    state = tmp_path / "bundles.json"
    start(server, state).shutdown()  # ours first
    start(server, state, token=other.runtime_token).shutdown()  # then the other app's
    data, entries = records(state)
    ours, theirs = list(entries)
    entries[ours] = entries[theirs]  # the other app's genuine entry in our slot
    state.write_text(json.dumps(data))
    set_user("u", roles=["agent"])
    offline = start(server, state, down=True)
    assert offline.policy is None and denied()
    offline.shutdown()

    # the same token against another URL of the same control plane
    import hashlib

    from d2.cloud.seal import StateSeal

    state.unlink()
    start(server, state).shutdown()
    data, entries = records(state)
    (genuine,) = entries.values()
    alias = server.base_url.replace("127.0.0.1", "localhost")
    token = server.runtime_token
    for slot in (  # the alias's slot, in this format and in the previous one
        StateSeal(token, alias).entry_id,
        hashlib.sha256(f"{alias}\n{token}".encode()).hexdigest()[:32],
    ):
        entries[slot] = genuine
    state.write_text(json.dumps(data))
    caplog.clear()
    offline = start(server, state, down=True, api_url=alias)
    assert offline.policy is None and "integrity check" in caplog.text


def altered(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Copies of a genuine record, each with one character changed: in the saved
    bundle, its version, its keys, its kind, the integrity tag (or, in the old
    unsealed format, in the fields it never checked)."""

    def swap(text: str, at: int) -> str:
        return text[:at] + ("2" if text[at] != "2" else "3") + text[at + 1 :]

    if "body" not in record:  # the format of the code before the seal
        yield {**record, "version": 2}
        yield {**record, "etag": '"forged"'}
        return
    body = record["body"]
    for needle, offset in (('"version":', 0), ('"jws":"', 40), ('"x":"', 5), ('"kind":"', 0)):
        yield {**record, "body": swap(body, body.index(needle) + len(needle) + offset)}
    yield {**record, "mac": swap(record["mac"], 10)}


def test_any_altered_byte_of_a_genuine_entry_is_ignored_with_a_warning(
    server: D2Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "bundles.json"
    start(server, state).shutdown()
    data, entries = records(state)
    (name,) = entries
    genuine = entries[name]
    assert start(server, state, down=True).policy is not None  # untouched: in force
    shutdown_all_rbac()
    cases = 0
    for record in altered(genuine):
        entries[name] = record
        state.write_text(json.dumps(data))
        caplog.clear()
        manager = start(server, state, down=True)
        assert manager.policy is None, record
        assert "d2: ignoring the saved" in caplog.text, record
        manager.shutdown()
        cases += 1
    assert cases >= 2


def test_a_saved_floor_never_outranks_a_verified_bundle_from_the_control_plane(
    server: D2Server, tmp_path: Path, search: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlalchemy as sa
    from d2.server.database import open_engine

    state = tmp_path / "bundles.json"
    start(server, state).shutdown()  # floor: version 1
    server.publish(server.policy({"role": "agent", "permissions": ["search", "summarize"]}))
    running = start(server, state)  # a newer version than the saved one
    assert running.policy.version == 2
    # the control plane's database is restored from a backup taken at version 1: its
    # genuine, verified answer is now version 1, below the floor saved in the file
    engine = open_engine(server.db)
    try:
        with engine.begin() as db:
            db.execute(sa.text("DELETE FROM bundles WHERE version > 1"))
            db.execute(sa.text("DELETE FROM versions WHERE version > 1"))
            db.execute(sa.text("UPDATE apps SET current_version = 1"))
    finally:
        engine.dispose()
    running.reload()  # a process keeps its own floor, learnt from the control plane
    assert running.policy.version == 2 and "rollback refused" in caplog.text
    running.shutdown()
    caplog.clear()
    manager = start(server, state)  # a restart takes the control plane's word
    assert manager.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results" and denied("summarize")
    assert "older than version 2 in the state file" in caplog.text


def test_a_genuine_file_round_trips_offline_and_its_tombstone_holds_until_the_plane_answers(
    server: D2Server, tmp_path: Path, search: Any
) -> None:
    state = tmp_path / "bundles.json"
    start(server, state).shutdown()
    offline = start(server, state, down=True)
    assert offline.policy is not None and offline.policy.version == 1
    set_user("u", roles=["agent"])
    assert search() == "results" and denied()
    offline.switch.down = False
    assert server.revoke().status_code == 200
    with pytest.raises(Exception, match="revoked"):
        offline.reload()
    offline.shutdown()
    restarted = start(server, state, down=True)  # the genuine tombstone, offline
    assert restarted.policy is None
    with pytest.raises(MissingPolicyError) as info:
        search()
    assert info.value.reason == "policy_revoked"
    restarted.switch.down = False
    server.publish(server.policy({"role": "agent", "permissions": ["search"]}))
    restarted.reload()  # the control plane answered: the tombstone is over
    assert restarted.policy.version == 2 and search() == "results"


def test_what_the_token_holder_saves_never_outranks_the_control_plane_and_pins_bind_it(
    server: D2Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from d2.cloud import thumbprint
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    state = tmp_path / "bundles.json"
    start(server, state).shutdown()
    (real,) = server.jwks()["keys"]
    forger = Forger(kid=real["kid"])
    # the holder of the runtime token (trusted like the app itself) seals what it likes
    file = StateFile(str(state), StateSeal(server.runtime_token, server.base_url))
    entry = file.load()
    assert entry is not None and entry["version"] == 1
    forged = {**entry, "jws": forger.bundle(server, 10**9, ["*"]), "version": 10**9}
    file.save({**forged, "jwks": forger.jwks})
    pinned = start(server, state, down=True, jwks_thumbprints=thumbprint(real))
    assert pinned.policy is None  # with pins, saved keys are pinned too: fail closed
    assert "thumbprint not pinned" in caplog.text
    pinned.shutdown()
    unpinned = start(server, state, down=True)
    assert unpinned.policy.version == 10**9  # offline, the file is all there is
    unpinned.switch.down = False
    unpinned.reload()  # the control plane's first verified bundle wins
    assert unpinned.policy.version == 1
    set_user("u", roles=["agent"])
    assert denied()
    assert "older than version 1000000000 in the state file" in caplog.text
    assert file.load()["version"] == 1  # and the file holds the real one again


def test_a_state_file_of_the_previous_format_is_ignored_then_rewritten(
    server: D2Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile

    state = tmp_path / "bundles.json"
    reply = server.fetch_bundle().json()
    key = hashlib.sha256(f"{server.base_url}\n{server.runtime_token}".encode()).hexdigest()[:32]
    old = {  # what the code before the seal wrote: genuine, but nothing binds it
        "audience": f"d2-policy:{server.account_id}:{server.app_name}",
        "jws": reply["jws"],
        "etag": None,
        "version": reply["version"],
        "jwks": server.jwks(),
    }
    state.write_text(json.dumps({"format": 1, "apps": {key: old}}))
    offline = start(server, state, down=True)
    assert offline.policy is None and "without integrity protection" in caplog.text
    offline.switch.down = False
    offline.reload()  # the next verified fetch rewrites it, sealed
    assert offline.policy.version == 1
    data = json.loads(state.read_text())
    assert data["format"] == 2 and "apps" not in data
    assert server.runtime_token not in state.read_text()
    seal = StateSeal(server.runtime_token, server.base_url)
    assert StateFile(str(state), seal).load()["version"] == 1


# -- pre-forking servers: a worker forked after configure follows the control plane ------
def _until(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _revoked() -> bool:
    try:
        d2_guard("search")(lambda: None)()
    except MissingPolicyError as exc:
        return exc.reason == "policy_revoked"
    return False


def _follow(manager: Any, send: Callable[[bytes], None], receive: Callable[[], bytes]) -> bool:
    """A forked worker's side: ready; the publish of version 2 reaches it on its own
    poller (no reload); then, once told, the revocation does."""
    set_user("u", roles=["agent"])
    send(b"ready")
    if not _until(lambda: manager.policy is not None and manager.policy.version == 2, 12):
        return False
    if d2_guard("summarize")(lambda: "ok")() != "ok":
        return False
    send(b"v2")
    receive()  # revoked in the control plane now
    if not _until(_revoked, 12):
        return False
    send(b"revoked")
    return True


def _connect_for_fork(server: D2Server, tmp_path: Path) -> dict[str, Any]:
    # the real clock: a FakeClock's lock could be held by the server's thread at fork
    return {
        "token": server.runtime_token,
        "api_url": server.base_url,
        "state_path": str(tmp_path / "bundles.json"),
        "first_fetch_timeout": 10.0,
    }


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_worker_forked_by_a_sync_app_follows_publishes_and_revocations(
    server: D2Server, tmp_path: Path
) -> None:
    """gunicorn --preload, in short: configure, then ``os.fork``. The worker's poller
    is its own (the parent's thread does not survive fork), on connections of its own;
    the parent keeps polling on its loop and pool."""
    manager = configure_rbac_sync(**_connect_for_fork(server, tmp_path))
    assert manager.policy.version == 1
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker
        code = 1
        try:
            os.close(to_child_w)
            os.close(to_parent_r)
            send = lambda data: os.write(to_parent_w, data)  # noqa: E731
            code = 0 if _follow(manager, send, lambda: os.read(to_child_r, 1)) else 1
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        assert os.read(to_parent_r, 16) == b"ready"
        server.publish(server.policy({"role": "agent", "permissions": ["search", "summarize"]}))
        assert os.read(to_parent_r, 16) == b"v2"
        assert server.revoke().status_code == 200
        os.write(to_child_w, b"g")
        assert os.read(to_parent_r, 16) == b"revoked"
    finally:
        os.close(to_child_w)
        _, status = os.waitpid(pid, 0)
        os.close(to_parent_r)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(Exception, match="revoked"):
        manager.reload()  # and the parent, on its own poller, sees it too


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_multiprocessing_worker_forked_by_an_async_app_follows_the_control_plane(
    server: D2Server, tmp_path: Path
) -> None:
    """An async app starts a ``multiprocessing`` worker with the fork method from its
    running loop: the worker does not run that loop, so it polls on a thread of its
    own; the parent's poller, a task on the app's loop, keeps going."""
    import asyncio
    import multiprocessing

    from d2.core import configure_rbac_async

    manager = await configure_rbac_async(**_connect_for_fork(server, tmp_path))
    assert manager.policy.version == 1
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()

    def worker() -> None:  # pragma: no cover - the worker
        ok = _follow(manager, theirs.send_bytes, theirs.recv_bytes)
        theirs.send_bytes(b"ok" if ok else b"failed")

    process = context.Process(target=worker, daemon=True)
    process.start()
    try:
        assert await asyncio.to_thread(ours.recv_bytes) == b"ready"
        server.publish(server.policy({"role": "agent", "permissions": ["search", "summarize"]}))
        assert await asyncio.to_thread(ours.recv_bytes) == b"v2"
        assert server.revoke().status_code == 200
        ours.send_bytes(b"g")
        assert await asyncio.to_thread(ours.recv_bytes) == b"revoked"
        assert await asyncio.to_thread(ours.recv_bytes) == b"ok"
        await asyncio.to_thread(process.join, 15)
        assert process.exitcode == 0
        await manager.runtime.poll_once()  # the parent's loop and pool: the revocation
        assert manager.policy is None
    finally:
        await asyncio.to_thread(process.join, 15)
        await manager.ashutdown()  # on the loop its connections belong to


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_never_speaks_on_its_parent_s_connections(
    server: D2Server, tmp_path: Path
) -> None:
    """The parent's pool holds a kept-alive connection at the fork, its socket now
    shared with the child: the child's polls go out on connections of its own (on
    the parent's they would wait for an answer only the parent's loop can read, and
    steal it from the parent)."""
    manager = configure_rbac_sync(**_connect_for_fork(server, tmp_path))
    manager.reload()  # a connection to the server, idle in the pool, now
    server.publish(server.policy({"role": "agent", "permissions": ["search", "summarize"]}))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker
        code = 1
        try:
            outcome: list[int] = []
            worker = threading.Thread(
                target=lambda: outcome.append(manager.reload().version), daemon=True
            )
            worker.start()
            worker.join(4)
            code = 0 if outcome == [2] else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.reload().version == 2  # and the parent's pool still works
