"""SQLStorage on SQLite and PostgreSQL: records round-trip, device keys, atomic
publish (and its race), drafts, events."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from d2.server import Quotas, SQLStorage
from d2.server.errors import ApiError
from d2.server.storage import (
    App,
    Bundle,
    KeyRegistration,
    NewVersion,
    PublishState,
    SigningKeyRecord,
)


def _app(storage: SQLStorage, name: str = "app") -> App:
    if storage.get_account("acc") is None:
        storage.create_account("acc", Quotas(max_apps=2), 1.0)
    return storage.ensure_app("acc", name, 1.0)


def _new_version(app: App, version: int, etag: str = "") -> NewVersion:
    bundle = Bundle(app.id, version, f"jws-{version}", etag or f'"e{version}"', "kid", 10, 20)
    return NewVersion(version, "{}", b"{}", "dev", b"s" * 64, bundle)


def test_accounts_apps_and_tokens_round_trip(storage: SQLStorage) -> None:
    quotas = Quotas(plan="team", max_tools=7, bundle_size_bytes=100, event_batch=3)
    storage.create_account("acc", quotas, 5.0)
    app = storage.ensure_app("acc", "shop", 6.0)
    assert storage.ensure_app("acc", "shop", 7.0) == app  # idempotent
    storage.add_token("h1", app, ("policy:read",), 8.0)
    principal = storage.find_token("h1")
    assert principal is not None
    assert principal.account.quotas == quotas
    assert principal.app == app and principal.scopes == ("policy:read",)
    assert storage.find_token("nope") is None
    assert [a.name for a in storage.apps("acc")] == ["shop"]


def test_a_device_key_id_is_registered_once_per_app(storage: SQLStorage) -> None:
    storage.create_account("acc", Quotas(), 1.0)
    storage.create_account("other", Quotas(), 1.0)
    shop = storage.ensure_app("acc", "shop", 1.0)
    blog = storage.ensure_app("acc", "blog", 1.0)  # same account, another app
    elsewhere = storage.ensure_app("other", "shop", 1.0)
    key, other_key = b"k" * 32, b"o" * 32
    assert storage.add_device_key(shop.id, "laptop", key, 1.0) is KeyRegistration.CREATED
    assert storage.add_device_key(shop.id, "laptop", key, 2.0) is KeyRegistration.EXISTS
    assert storage.add_device_key(shop.id, "laptop", other_key, 3.0) is KeyRegistration.CONFLICT
    assert storage.add_device_key(blog.id, "laptop", other_key, 3.0) is KeyRegistration.CREATED
    assert storage.add_device_key(elsewhere.id, "laptop", key, 3.0) is KeyRegistration.CREATED
    assert storage.device_key(shop.id, "laptop") == key
    assert storage.device_key(blog.id, "laptop") == other_key
    assert storage.device_key(elsewhere.id, "laptop") == key
    assert storage.device_key(shop.id, "desktop") is None
    assert storage.device_key(blog.id + elsewhere.id + 1, "laptop") is None


def test_an_account_and_its_first_app_are_created_together_or_not_at_all(
    storage: SQLStorage,
) -> None:
    account, app = storage.create_account_with_app("acc", Quotas(), "shop", 1.0)
    assert storage.apps("acc") == [app] and storage.get_account("acc") == account
    with pytest.raises(sa.exc.IntegrityError):  # the app's insert fails: NOT NULL name
        storage.create_account_with_app("acc2", Quotas(), None, 2.0)  # type: ignore[arg-type]
    assert [a.id for a in storage.accounts()] == ["acc"]


def test_signing_key_rotation_keeps_the_old_key_published_for_the_overlap(
    storage: SQLStorage,
) -> None:
    first = SigningKeyRecord("k1", "EdDSA", b"pem1", {"kid": "k1"}, 0.0)
    second = SigningKeyRecord("k2", "ES256", b"pem2", {"kid": "k2"}, 0.0)
    storage.add_signing_key(first, overlap=0.0, now=100.0)
    only = storage.active_signing_key()
    assert only is not None and only.refresh_until is None
    storage.add_signing_key(second, overlap=50.0, now=200.0)
    active = storage.active_signing_key()
    assert active is not None and active.kid == "k2" and active.refresh_until == 250.0
    assert [k.kid for k in storage.published_signing_keys(249.0)] == ["k2", "k1"]
    assert [k.kid for k in storage.published_signing_keys(250.0)] == ["k2"]


def test_publish_stores_the_version_and_clears_a_revocation(storage: SQLStorage) -> None:
    app = _app(storage)
    seen: list[PublishState] = []

    def decide(state: PublishState) -> NewVersion:
        seen.append(state)
        return _new_version(app, state.current_version + 1)

    storage.publish(app, "dev", decide, 1.0)
    assert seen[0].current_version == 0 and seen[0].device_public_key is None
    assert storage.revoke(app.id, 2.0) == 1
    assert storage.bundle_state(app.id).revoked
    storage.publish(app, "dev", decide, 3.0)
    state = storage.bundle_state(app.id)
    assert seen[1].revoked and seen[1].etags == frozenset({'"e1"'})
    assert state.current_version == 2 and not state.revoked
    assert state.bundle is not None and state.bundle.jws == "jws-2"


def test_a_refused_publish_changes_nothing(storage: SQLStorage) -> None:
    app = _app(storage)

    def refuse(state: PublishState) -> NewVersion:
        raise ApiError(412, "precondition_failed")

    with pytest.raises(ApiError):
        storage.publish(app, "dev", refuse, 1.0)
    assert storage.bundle_state(app.id).current_version == 0


def test_revoking_with_nothing_published_returns_none(storage: SQLStorage) -> None:
    app = _app(storage)
    assert storage.revoke(app.id, 1.0) is None


def test_live_apps_count_published_unrevoked_apps_of_the_account(
    storage: SQLStorage,
) -> None:
    a, b = _app(storage, "a"), _app(storage, "b")
    states: list[PublishState] = []

    def decide_for(app: App) -> Callable[[PublishState], NewVersion]:
        def decide(state: PublishState) -> NewVersion:
            states.append(state)
            return _new_version(app, state.current_version + 1)

        return decide

    storage.publish(a, "dev", decide_for(a), 1.0)
    storage.publish(b, "dev", decide_for(b), 1.0)
    storage.revoke(a.id, 2.0)
    storage.publish(b, "dev", decide_for(b), 3.0)
    assert [s.live_apps for s in states] == [0, 1, 1]


RACERS = 12


def test_concurrent_publishes_with_one_if_match_let_exactly_one_win(storage: SQLStorage) -> None:
    # 12 threads, each on its own pooled connection, publish on the same state at
    # once; the decision (the precondition) runs inside each one's transaction.
    # SQLite's BEGIN IMMEDIATE / PostgreSQL's row locks serialize the
    # read-check-write, so only the first sees version 1 and every other one fails.
    app = _app(storage)
    storage.publish(app, "dev", lambda s: _new_version(app, 1, '"v1"'), 0.0)
    start = threading.Barrier(RACERS)
    wins: list[int] = []
    losses: list[int] = []
    errors: list[BaseException] = []

    def decide(state: PublishState) -> NewVersion:
        if '"v1"' not in state.etags:  # If-Match: "v1"
            raise ApiError(412, "precondition_failed")
        return _new_version(app, state.current_version + 1)

    def publisher(i: int) -> None:
        start.wait()
        try:
            storage.publish(app, "dev", decide, float(i))
            wins.append(i)
        except ApiError:
            losses.append(i)
        except BaseException as exc:  # a deadlock or a duplicate key: the test fails
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(wins) == 1 and len(losses) == RACERS - 1
    assert storage.bundle_state(app.id).current_version == 2  # advanced by exactly one


def test_refresh_bundle_stores_a_new_signing_of_the_current_version(
    storage: SQLStorage,
) -> None:
    app = _app(storage)
    storage.add_signing_key(SigningKeyRecord("k", "EdDSA", b"p", {}, 0.0), overlap=0.0, now=0.0)
    storage.publish(app, "dev", lambda s: _new_version(app, 1), 1.0)
    unchanged = storage.refresh_bundle(app.id, lambda state, key: None, 2.0)
    assert unchanged.bundle is not None and unchanged.bundle.jws == "jws-1"
    fresh = Bundle(app.id, 1, "jws-1b", '"e1b"', "k", 30, 40)
    after = storage.refresh_bundle(app.id, lambda state, key: fresh, 3.0)
    assert after.bundle == fresh == storage.bundle_state(app.id).bundle


def test_drafts_are_replaced(storage: SQLStorage) -> None:
    app = _app(storage)
    assert storage.get_draft(app.id) is None
    storage.put_draft(app.id, 1, '{"a":1}', 1.0)
    storage.put_draft(app.id, 2, '{"a":2}', 2.0)
    draft = storage.get_draft(app.id)
    assert draft is not None and (draft.version, draft.document) == (2, '{"a":2}')


def test_events_are_listed_oldest_first_up_to_a_limit(storage: SQLStorage) -> None:
    app = _app(storage)
    items = [("t", f'{{"i":{i}}}', "2025-01-01T00:00:00Z") for i in range(5)]
    assert storage.add_events(app.id, "h", items, 9.0) == 5
    assert [e.payload for e in storage.events(app.id, limit=2)] == ['{"i":3}', '{"i":4}']


def test_a_closed_storage_refuses_new_work(new_storage: Callable[[], SQLStorage]) -> None:
    storage = new_storage()
    storage.close()
    with pytest.raises(RuntimeError, match="closed"):
        storage.accounts()
