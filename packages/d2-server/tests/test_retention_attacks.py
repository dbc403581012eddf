"""Regression tests of the per-app event caps (docs/security.md, "Filling the control
plane's disk"): a hostile review found that uploads whose canonical JSON is larger
than their body took an app past its byte cap; the trim now counts the bytes stored."""

from __future__ import annotations

import json
from collections.abc import Callable

from d2.server import ControlPlane, Quotas, ServerConfig, SQLStorage
from d2.server.bodies import Events, parse_body
from d2.server.config import EVENTS_MAX_BYTES
from d2.server.errors import ApiError
from d2.server.storage import SMALLEST_EVENT_BYTES, EventUsage, rows_to_free
from d2.server.testing import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TIME = "2025-01-01T00:00:00Z"
TINY = ("a", "{}", TIME)  # 23 stored bytes: the smallest event there is


def parse_events(body: bytes, max_events: int) -> list[tuple[str, str, str]]:
    """The rows the server stores for an ingest ``body``."""
    parsed = parse_body(Events, body, "invalid_events", context={"max_events": max_events})
    return [event.row() for event in parsed.events]


def _expanding_body() -> bytes:
    """One event whose payload is a list of ``9E15``: 5 body bytes each, stored by the
    server's canonical JSON as ``9000000000000000.0,`` (19 bytes)."""
    head = '{"events":[{"event_type":"a","occurred_at":"' + TIME + '","payload":{"a":['
    tail = "]}}]}"
    n = (EVENTS_MAX_BYTES - len(head) - len(tail) + 1) // 5
    body = (head + ",".join(["9E15"] * n) + tail).encode()
    assert len(body) <= EVENTS_MAX_BYTES
    return body


def test_an_upload_cannot_take_an_app_past_its_byte_cap(
    storage: SQLStorage, clock: FakeClock
) -> None:
    """Attack (runtime-token holder): fill the app's oldest events with the smallest
    events there are, then upload 32 KiB bodies whose numbers the server's canonical
    JSON expands almost 4x (``9E15`` -> ``9000000000000000.0``). ``_UPLOAD_TRIM``
    assumes "an upload adds at most 32 KiB"; in fact one upload stores ~124 KB, while
    the trim on upload frees at most ``max(events_prune_batch, 2048)`` events (5,000 x
    23 bytes = 115 KB by default; 47 KB with a smaller prune batch), so every such
    upload left the app further over its byte cap until the hourly prune pass."""
    cap = 400_000
    plane = ControlPlane(
        storage,
        ServerConfig(clock=clock, events_max_bytes_per_app=cap, events_max_per_app=10**9),
    )
    _account, app = plane.create_account("acme", Quotas(event_batch=1000))
    principal = plane.authenticate(f"Bearer {plane.create_token(app, 'runtime')}")
    storage.add_events(app.id, "h", [TINY] * 15_000, clock())  # 345,000 bytes, oldest
    body = _expanding_body()
    for _ in range(3):
        plane.ingest(principal, body)
    used = storage.event_usage(app.id).bytes
    assert used <= cap, f"the app holds {used} bytes of events; its cap is {cap}"


# -- the cap holds after every accepted upload, whatever the body expands to --------

_TOKENS = st.sampled_from(["9E15", "1E9", "-1E15", "0", "1.5", "1E-7", '"\\u00e9"', "[]", "{}"])


def _body_of(events: list[tuple[str, list[str]]]) -> bytes:
    items = [
        f'{{"event_type":"{kind}","occurred_at":"{TIME}","payload":{{"a":[{",".join(values)}]}}}}'
        for kind, values in events
    ]
    return ('{"events":[' + ",".join(items) + "]}").encode()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap_bytes=st.integers(EVENTS_MAX_BYTES, 300_000),
    cap_events=st.integers(1, 20_000) | st.just(10**9),
    fill=st.sampled_from([0.5, 0.99, 1.0]) | st.floats(0, 1),
    prune_batch=st.integers(1, 3000),
    uploads=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "decision"]),
                st.just(["9E15"]) | st.lists(_TOKENS, max_size=8),  # the worst, or any
                st.integers(1, 8000),
            ),
            min_size=1,
            max_size=30,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_every_accepted_upload_leaves_the_app_within_both_caps_with_bounded_work(
    new_storage: Callable[[], SQLStorage],
    cap_bytes: int,
    cap_events: int,
    fill: float,
    prune_batch: int,
    uploads: list[list[tuple[str, list[str], int]]],
) -> None:
    """Property: an app within its caps (filled with the smallest events there are)
    stays within both after each accepted upload of at most 32 KiB, however much
    canonical JSON expands its numbers; and the upload deletes no more than
    ``max(events_prune_batch, rows_to_free(what it stored))`` events."""
    storage = new_storage()
    try:
        clock = FakeClock(1_700_000_000.0)
        plane = ControlPlane(
            storage,
            ServerConfig(
                clock=clock,
                events_max_bytes_per_app=cap_bytes,
                events_max_per_app=cap_events,
                events_prune_batch=prune_batch,
            ),
        )
        _account, app = plane.create_account("acme", Quotas(event_batch=1000))
        principal = plane.authenticate(f"Bearer {plane.create_token(app, 'runtime')}")
        room = min(cap_events, cap_bytes // SMALLEST_EVENT_BYTES)
        storage.add_events(app.id, "h", [TINY] * int(fill * room), clock())
        for upload in uploads:
            events = [(kind, values * repeat) for kind, values, repeat in upload]
            body = _body_of(events)
            while len(body) > EVENTS_MAX_BYTES:  # keep it a body the server accepts
                events = [(kind, values[: len(values) * 9 // 10]) for kind, values in events]
                body = _body_of(events)
            parsed = parse_events(body, 1000)
            stored = sum(len("".join(e).encode()) for e in parsed)
            before = storage.event_usage(app.id)
            assert plane.ingest(principal, body) == len(parsed)
            after = storage.event_usage(app.id)
            assert after.events <= cap_events and after.bytes <= cap_bytes
            deleted = before.events + len(parsed) - after.events
            bound = rows_to_free(EventUsage(len(parsed), stored))
            assert deleted <= max(prune_batch, bound)
    finally:
        storage.close()


@given(
    kind=st.text(min_size=1, max_size=3),
    payload=st.dictionaries(st.text(max_size=2), st.integers() | st.text(max_size=2), max_size=2),
    when=st.sampled_from([TIME, "2025-01-01t00:00:00z", "2025-01-01T00:00:60Z"]),
)
def test_no_accepted_event_is_stored_in_fewer_bytes_than_the_trim_counts_on(
    kind: str, payload: dict[str, object], when: str
) -> None:
    """``rows_to_free`` relies on every stored event taking at least
    ``SMALLEST_EVENT_BYTES``: the validation of an upload must keep that true."""
    body = json.dumps({"events": [{"event_type": kind, "payload": payload, "occurred_at": when}]})
    try:
        parsed = parse_events(body.encode(), 10)
    except ApiError:
        return
    assert all(len("".join(e).encode()) >= SMALLEST_EVENT_BYTES for e in parsed)


def test_the_smallest_event_is_stored_in_exactly_smallest_event_bytes() -> None:
    body = f'{{"events":[{{"event_type":"a","payload":{{}},"occurred_at":"{TIME}"}}]}}'
    (event,) = parse_events(body.encode(), 1)
    assert event == TINY and len("".join(event).encode()) == SMALLEST_EVENT_BYTES
