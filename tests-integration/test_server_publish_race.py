"""Concurrent publishers: for each precondition exactly one wins (201), every
other one gets 412, and the version advances by exactly one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from d2.server.testing import D2Server, DeviceKey

PUBLISHERS = 8


def _race(server: D2Server, keys: list[DeviceKey], precondition: dict[str, str]) -> list[int]:
    start = threading.Barrier(len(keys))
    clients = [server.client() for _ in keys]
    bodies = [
        httpx.Request(
            "POST", "/", json=server.policy({"role": "r", "permissions": [f"t{i}"]})
        ).read()
        for i in range(len(keys))
    ]

    def publish(i: int) -> int:
        headers = {
            "X-D2-Key-Id": keys[i].key_id,
            "X-D2-Signature": keys[i].sign(bodies[i]),
            **precondition,
        }
        start.wait()
        r = clients[i].post("/v1/policy/publish", content=bodies[i], headers=headers)
        return r.status_code

    with ThreadPoolExecutor(len(keys)) as pool:
        return sorted(pool.map(publish, range(len(keys))))


def test_concurrent_first_publishes_let_exactly_one_win(d2_server: D2Server) -> None:
    keys = [d2_server.register_key(DeviceKey(f"dev-{i}")) for i in range(PUBLISHERS)]
    statuses = _race(d2_server, keys, {"If-None-Match": "*"})
    assert statuses == [201] + [412] * (PUBLISHERS - 1)
    assert d2_server.fetch_bundle().json()["version"] == 1


def test_concurrent_publishes_on_one_etag_let_exactly_one_win_each_round(
    d2_server: D2Server,
) -> None:
    keys = [d2_server.register_key(DeviceKey(f"dev-{i}")) for i in range(PUBLISHERS)]
    d2_server.publish(d2_server.policy(), key=keys[0])
    for round_ in range(2, 5):
        etag = d2_server.current_etag()
        assert etag is not None
        statuses = _race(d2_server, keys, {"If-Match": etag})
        assert statuses == [201] + [412] * (PUBLISHERS - 1), round_
        bundle = d2_server.fetch_bundle().json()
        assert bundle["version"] == round_
        assert d2_server.verify(bundle["jws"])["version"] == round_
    versions = d2_server.storage._conn().execute("SELECT version FROM versions").fetchall()
    assert [v for (v,) in versions] == [1, 2, 3, 4]
