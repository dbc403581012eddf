"""Two replicas: two real ``d2-server serve`` processes (uvicorn, loopback ports) on
one PostgreSQL database. What one writes, the other serves at once; a publish race
across both lets exactly one publish through; a revocation on one is a 410 on the
other (docs/security.md, "The publish race across replicas")."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from d2.server.cli import main
from d2.server.testing import DeviceKey

EXE = Path(sys.executable).parent / "d2-server"
pytestmark = pytest.mark.skipif(not EXE.exists(), reason="the d2-server script is not installed")
RACERS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serving(db: str) -> Iterator[str]:
    """``d2-server serve --db db`` in a subprocess; yields its base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    proc = subprocess.Popen(
        [str(EXE), "serve", "--db", db, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "d2-server serve did not start"
            time.sleep(0.05)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def replicas(postgres: Any, capsys: pytest.CaptureFixture[str]) -> Iterator[dict[str, Any]]:
    db = postgres.new(migrated=False)
    try:
        assert main(["init", "--db", db, "--app", "shop", "--json"]) == 0
        tokens = json.loads(capsys.readouterr().out)
        with _serving(db) as one, _serving(db) as two:
            yield {"one": one, "two": two, **tokens}
    finally:
        postgres.release(db, migrated=False)


def _policy(*tools: str) -> bytes:
    document = {"metadata": {"name": "shop"}, "policies": [{"role": "r", "permissions": tools}]}
    return json.dumps(document).encode()


def _publish(base: str, token: str, key: DeviceKey, body: bytes, **headers: str) -> httpx.Response:
    headers |= {
        "Authorization": f"Bearer {token}",
        "X-D2-Key-Id": key.key_id,
        "X-D2-Signature": key.sign(body),
    }
    return httpx.post(f"{base}/v1/policy/publish", content=body, headers=headers, timeout=30)


def test_two_replicas_on_one_postgresql_database(replicas: dict[str, Any]) -> None:
    one, two = replicas["one"], replicas["two"]
    developer = {"Authorization": f"Bearer {replicas['developer_token']}"}
    runtime = {"Authorization": f"Bearer {replicas['runtime_token']}"}
    key = DeviceKey("laptop")
    register = {"key_id": key.key_id, "algorithm": "Ed25519", "public_key": key.public_key_b64}
    assert httpx.post(f"{one}/v1/keys", json=register, headers=developer).status_code == 201

    # a publish on one is served by the other at once, and the key registered on one
    # signs publishes on the other
    first = _publish(two, replicas["developer_token"], key, _policy("a"), **{"If-None-Match": "*"})
    assert first.status_code == 201, first.text
    r = httpx.get(f"{one}/v1/policy/bundle", headers=runtime)
    assert r.status_code == 200 and r.json()["version"] == 1
    second = _publish(
        one, replicas["developer_token"], key, _policy("b"), **{"If-Match": r.headers["etag"]}
    )
    assert second.status_code == 201, second.text
    r = httpx.get(f"{two}/v1/policy/bundle", headers=runtime)
    assert r.status_code == 200 and r.json()["version"] == 2
    etag = r.headers["etag"]

    # 12 publishes with that one If-Match, split across both replicas: exactly one wins
    start = threading.Barrier(RACERS)
    statuses: list[int] = []

    def racer(i: int) -> None:
        body = _policy(f"t{i}")
        start.wait()
        base = one if i % 2 else two
        statuses.append(
            _publish(base, replicas["developer_token"], key, body, **{"If-Match": etag}).status_code
        )

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [412] * (RACERS - 1)
    for base in (one, two):
        assert httpx.get(f"{base}/v1/policy/bundle", headers=runtime).json()["version"] == 3

    # a revocation on one: the other answers 410 at the next poll
    assert httpx.post(f"{two}/v1/policy/revoke", headers=developer).json() == {"revoked_version": 3}
    gone = httpx.get(f"{one}/v1/policy/bundle", headers=runtime)
    assert gone.status_code == 410, gone.text


def test_the_test_server_runs_on_either_database(db: str, tmp_path: Path) -> None:
    from d2.server.testing import start_server

    with start_server(tmp_path, db=db) as server:
        assert server.db == db
        assert server.publish(server.policy()).status_code == 201
        assert server.fetch_bundle().json()["version"] == 1
        assert server.storage.engine.dialect.name == ("postgresql" if "://" in db else "sqlite")
