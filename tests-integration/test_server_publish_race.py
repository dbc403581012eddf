"""Concurrent publishers: for each valid precondition exactly one wins (201),
every other one gets 412, and the version advances by exactly one; an invalid
precondition never wins."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from d2.server.testing import D2Server, DeviceKey

PUBLISHERS = 8


def _race(
    server: D2Server,
    keys: list[DeviceKey],
    precondition: dict[str, str] | list[dict[str, str]],
) -> list[int]:
    """Every key publishes at once, with ``precondition`` (one for all, or one
    each); returns the sorted statuses."""
    each = precondition if isinstance(precondition, list) else [precondition] * len(keys)
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
            **each[i],
        }
        start.wait()
        r = clients[i].post("/v1/policy/publish", content=bodies[i], headers=headers)
        return r.status_code

    with ThreadPoolExecutor(len(keys)) as pool:
        return sorted(pool.map(publish, range(len(keys))))


def _sql(server: D2Server, query: str) -> list[Any]:
    """The first column of ``query``'s rows, read from the server's database."""
    with server.storage.engine.connect() as conn:
        return list(conn.exec_driver_sql(query).scalars())


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
    assert _sql(d2_server, "SELECT version FROM versions ORDER BY version") == [1, 2, 3, 4]


def test_concurrent_publishes_with_a_bogus_if_none_match_never_win(d2_server: D2Server) -> None:
    # If-None-Match other than * is no precondition on publish: with a policy in
    # force none of the racers may win (at most one ever could)
    keys = [d2_server.register_key(DeviceKey(f"dev-{i}")) for i in range(PUBLISHERS)]
    d2_server.publish(d2_server.policy(), key=keys[0])
    statuses = _race(d2_server, keys, {"If-None-Match": '"x"'})
    assert statuses.count(201) <= 1
    assert statuses == [412] * PUBLISHERS
    assert d2_server.fetch_bundle().json()["version"] == 1


def test_a_bogus_if_none_match_cannot_win_alongside_an_if_match_publisher(
    d2_server: D2Server,
) -> None:
    keys = [d2_server.register_key(DeviceKey(f"dev-{i}")) for i in range(PUBLISHERS)]
    d2_server.publish(d2_server.policy(), key=keys[0])
    etag = d2_server.current_etag()
    assert etag is not None
    preconditions = [
        {"If-Match": etag} if i % 2 else {"If-None-Match": f'"bogus-{i}"'}
        for i in range(PUBLISHERS)
    ]
    statuses = _race(d2_server, keys, preconditions)
    assert statuses == [201] + [412] * (PUBLISHERS - 1)
    assert d2_server.fetch_bundle().json()["version"] == 2
    (winner,) = _sql(d2_server, "SELECT device_key_id FROM versions WHERE version = 2")
    assert int(winner.removeprefix("dev-")) % 2 == 1  # an If-Match publisher
