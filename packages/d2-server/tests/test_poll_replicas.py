"""The poll fast path next to a second control plane on the same database (a
SQLite file, a PostgreSQL database), as two ``d2-server serve`` replicas are:
whatever one writes (publish, revoke, key rotation, token changes, even by hand
in SQL), the other serves on its very next request. On PostgreSQL the reader's
fast path answers from its :class:`~d2.server.pollcache.PollCache`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest
import sqlalchemy as sa
from d2.server import ControlPlane, ServerConfig, SQLStorage, create_app
from d2.server.database import open_engine
from d2.server.pollcache import PollCache
from d2.server.preconditions import parse_etags
from d2.server.storage import App, Principal
from d2.server.testing import DeviceKey, FakeClock, LiveServer
from d2.server.tokens import hash_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Databases

SECRET = "test-secret-for-the-poll-replica-tests-0123456789"


@dataclass
class Replicas:
    writer: ControlPlane  # replica A: every change goes through it
    reader: ControlPlane  # replica B: every poll is answered by it
    clock: FakeClock
    app: App
    developer: Principal
    runtime: str
    key: DeviceKey
    db: str

    def sql(self, statement: str, **params: object) -> None:
        """Write the database by hand, as an operator's tool would."""
        engine = open_engine(self.db)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement), params)
        finally:
            engine.dispose()

    def publish(self, n: int = 1) -> str:
        document = {
            "metadata": {"name": self.app.name},
            "policies": [{"role": "user", "permissions": [f"tool{n}"]}],
        }
        body = json.dumps(document).encode()
        state = self.writer.storage.bundle_state(self.app.id)
        in_force = state.bundle is not None and not state.revoked
        new = self.writer.publish(
            self.developer,
            body,
            key_id=self.key.key_id,
            signature=self.key.sign(body),
            if_match=frozenset({state.bundle.etag}) if in_force and state.bundle else None,
            if_none_match=None if in_force else "*",
        )
        return new.bundle.etag


def _replicas(databases: Databases) -> Iterator[Replicas]:
    clock = FakeClock(1_700_000_000.0)
    db = databases.location(migrated=True)
    config = ServerConfig(clock=clock, bundle_lifetime=3600)
    store_a, store_b = SQLStorage(db), SQLStorage(db)
    writer = ControlPlane(store_a, config, secret=SECRET)
    reader = ControlPlane(store_b, config, secret=SECRET)
    writer.ensure_signing_key()
    _, app = writer.create_account("app")
    runtime = writer.create_token(app, "runtime")
    developer = writer.authenticate("Bearer " + writer.create_token(app, "developer"))
    key = DeviceKey()
    writer.register_key(
        developer,
        key.registration,
    )
    try:
        yield Replicas(writer, reader, clock, app, developer, runtime, key, db)
    finally:
        store_a.close()
        store_b.close()


@pytest.fixture
def replicas(databases: Databases) -> Iterator[Replicas]:
    yield from _replicas(databases)


@pytest.fixture
def served(replicas: Replicas) -> Iterator[tuple[Replicas, httpx.Client]]:
    """Replica B served by a real uvicorn; the test writes through replica A."""
    live = LiveServer(create_app(replicas.reader))
    live.start()
    try:
        with httpx.Client(
            base_url=live.base_url, headers={"Authorization": f"Bearer {replicas.runtime}"}
        ) as client:
            yield replicas, client
    finally:
        live.stop()


def _poll(
    client: httpx.Client, etag: str | None = None, token: str | None = None
) -> httpx.Response:
    headers = {"If-None-Match": etag} if etag else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.get("/v1/policy/bundle", headers=headers)


def _fast_only(plane: ControlPlane) -> None:
    """Make the full path fail, so a 304 can only come from the fast path."""

    def refuse(principal: Principal) -> None:
        raise AssertionError("the full bundle path ran")

    plane.bundle = refuse  # type: ignore[method-assign,assignment]


def test_a_304_is_served_from_the_fast_path(served: tuple[Replicas, httpx.Client]) -> None:
    replicas, client = served
    replicas.publish()
    first = _poll(client)
    assert first.status_code == 200
    _fast_only(replicas.reader)
    r = _poll(client, first.headers["etag"])
    assert r.status_code == 304
    assert r.headers["etag"] == first.headers["etag"]
    assert r.headers["x-d2-poll-seconds"] == str(replicas.reader.config.poll_seconds)
    assert r.headers["cache-control"] == "no-cache"
    assert r.content == b""


def test_a_failing_fast_path_read_leaves_the_poll_to_the_full_path(
    served: tuple[Replicas, httpx.Client],
) -> None:
    """A lost database connection on the fast path's read (seventh review: a 500
    to every poll after an idle reaper closed the epoch's connection) is not the
    poll's answer: the full path serves it."""
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]

    def lost(*args: object) -> None:
        raise ConnectionError("server closed the connection unexpectedly")

    replicas.reader.storage.poll_state = lost  # type: ignore[method-assign,assignment]
    replicas.reader.storage.poll_epoch = lost  # type: ignore[method-assign,assignment]
    assert _poll(client).status_code == 200
    assert _poll(client, etag).status_code == 304


def test_a_publish_on_another_replica_is_served_on_the_next_poll(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish(1)
    etag1 = _poll(client).headers["etag"]
    assert _poll(client, etag1).status_code == 304
    etag2 = replicas.publish(2)
    r = _poll(client, etag1)
    assert r.status_code == 200
    assert r.headers["etag"] == etag2 != etag1
    assert jwt.decode(r.json()["jws"], options={"verify_signature": False})["version"] == 2


def test_a_revocation_on_another_replica_is_served_on_the_next_poll(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]
    assert _poll(client, etag).status_code == 304
    replicas.writer.revoke(replicas.developer)
    r = _poll(client, etag)
    assert (r.status_code, r.json()) == (410, {"detail": "revoked"})
    etag2 = replicas.publish(2)  # a publish clears the revocation, on B too
    assert _poll(client, etag).headers["etag"] == etag2


def test_a_key_rotation_on_another_replica_is_served_on_the_next_poll(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]
    assert _poll(client, etag).status_code == 304
    new = replicas.writer.rotate_key("ES256", overlap=600)
    r = _poll(client, etag)  # re-signed by B with the key A created
    assert r.status_code == 200 and r.headers["etag"] != etag
    header = jwt.get_unverified_header(r.json()["jws"])
    assert (header["kid"], header["alg"], header["jwks_refresh"]) == (new.kid, "ES256", True)
    jwks = client.get("/.well-known/jwks.json").json()
    assert jwks["keys"][0]["kid"] == new.kid
    assert _poll(client, r.headers["etag"]).status_code == 304
    # after the overlap, the flagged bundle is re-signed without the flag, at once
    replicas.clock.advance(600)
    r2 = _poll(client, r.headers["etag"])
    assert r2.status_code == 200
    assert "jwks_refresh" not in jwt.get_unverified_header(r2.json()["jws"])


def test_token_changes_on_another_replica_apply_to_the_next_poll(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]
    fresh = replicas.writer.create_token(replicas.app, "runtime")
    assert _poll(client, etag, token=fresh).status_code == 304  # a new token: at once
    # scopes changed and the token deleted by another process (e.g. an operator
    # tool writing the database): no poll is answered from what B saw before
    replicas.sql("UPDATE tokens SET scopes = 'events:write' WHERE hash = :h", h=hash_token(fresh))
    r = _poll(client, etag, token=fresh)
    assert (r.status_code, r.json()["detail"]) == (403, "missing_scope")
    replicas.sql("DELETE FROM tokens WHERE hash = :h", h=hash_token(fresh))
    r = _poll(client, etag, token=fresh)
    assert (r.status_code, r.json()["detail"]) == (401, "invalid_token")
    assert _poll(client, etag).status_code == 304  # the other token is untouched


def test_a_token_revoked_through_another_replica_is_refused_on_the_next_poll(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]
    assert _poll(client, etag).status_code == 304  # cached on B (PostgreSQL)
    replicas.writer.revoke_token(replicas.runtime)  # `d2-server token revoke` on A
    r = _poll(client, etag)
    assert (r.status_code, r.json()["detail"]) == (401, "invalid_token")


def test_an_expiring_bundle_is_re_signed_not_304(
    served: tuple[Replicas, httpx.Client],
) -> None:
    replicas, client = served
    replicas.publish()
    etag = _poll(client).headers["etag"]
    replicas.clock.advance(replicas.reader.config.refresh_after)
    r = _poll(client, etag)
    assert r.status_code == 200 and r.headers["etag"] != etag
    claims = jwt.decode(r.json()["jws"], options={"verify_signature": False})
    assert claims["exp"] > replicas.clock()


def _slow(plane: ControlPlane, auth: str, header: str | None) -> tuple[int, str | None]:
    from d2.server.errors import ApiError

    try:
        bundle = plane.bundle(plane.authenticate(auth))
    except ApiError as exc:
        return exc.status, None
    status = 304 if plane.bundle_matches(bundle, parse_etags(header)) else 200
    return status, bundle.etag


_OPS = st.lists(
    st.sampled_from(
        ["publish", "revoke", "rotate", "advance", "poll", "no_read_scope", "read_scope"]
    ),
    min_size=1,
    max_size=12,
)


def _fast(r: Replicas, cache: PollCache, auth: str, header: str) -> tuple[int, str] | None:
    """What replica B's fast path answers (as ``create_app`` does on PostgreSQL):
    ``(status, etag)``, or ``None`` when it leaves the request to the full path."""
    token_hash = r.reader.poll_token_hash(auth)
    assert token_hash is not None
    bundle = r.reader.servable(asyncio.run(cache.state(token_hash)))
    if bundle is None:
        return None
    return (304 if r.reader.bundle_matches(bundle, parse_etags(header)) else 200), bundle.etag


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_the_fast_path_answers_exactly_what_the_full_path_would(
    databases: Databases, ops: list[str]
) -> None:
    """Whatever replica A (or an operator's SQL) did, replica B's cached fast path
    answers only what the full path answers at that moment (the same status and
    ETag), and answers from the cache again once the full path served."""
    for r in _replicas(databases):
        auth = f"Bearer {r.runtime}"
        cache = PollCache(r.reader.storage)
        seen: list[str] = ['"none"']
        n = 0
        for op in ops:
            if op == "publish":
                n += 1
                r.publish(n)
            elif op == "revoke" and n:
                r.writer.revoke(r.developer)
            elif op == "rotate":
                r.writer.rotate_key(overlap=300)
            elif op == "advance":
                r.clock.advance(400)
            elif op in ("no_read_scope", "read_scope"):
                scopes = "policy:read" if op == "read_scope" else "events:write"
                r.sql(
                    "UPDATE tokens SET scopes = :s WHERE hash = :h",
                    s=scopes,
                    h=hash_token(r.runtime),
                )
            for header in {seen[-1], seen[0], ", ".join(seen[-2:])}:
                fast = _fast(r, cache, auth, header)
                slow = _slow(r.reader, auth, header)
                if fast is not None:
                    assert fast == slow
                if slow[1] is not None:
                    etag = slow[1]
                    seen.append(etag)
                    assert _fast(r, cache, auth, etag) == (304, etag)
