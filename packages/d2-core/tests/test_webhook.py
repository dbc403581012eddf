"""The approval webhook end to end: a real loopback HTTP server receives what a
configured instance posts when a request is opened, approved or rejected; retries,
backoff, the bounded queue, the flush at shutdown and at exit, fork, and the
guarded call never waiting for any of it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ApprovalRequiredError,
    ConfigurationError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    approve_async,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    get_policy_manager,
    reject,
    set_user,
    shutdown_rbac,
)
from d2.core.evaluate import evaluator_for
from d2.core.testing import Reply, WebhookReceiver, policy_document, webhook_receiver
from d2.core.webhook import ApprovalWebhook
from hypothesis import given, settings
from hypothesis import strategies as st

SECRET = "T0KEN-s3cr3t"
DOC = policy_document(
    {
        "role": "agent",
        "permissions": [
            "search",
            {"tool": "pay", "approval": {"approvers": ["boss", "finance"], "ttl": "10m"}},
        ],
    },
    {"role": "boss", "permissions": []},
    {"role": "finance", "permissions": []},
    name="refund-desk",
)


class Order:
    """An object of the app, shown to approvers by its state."""

    def __init__(self) -> None:
        self.ref = "o_1"

    def __repr__(self) -> str:  # never run for the approver's view
        raise AssertionError("the app's code ran")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver(f"/hooks/{SECRET}") as server:
        yield server


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short backoff and flush times for the configure path (class defaults)."""
    monkeypatch.setattr(ApprovalWebhook, "backoff", 0.05)
    monkeypatch.setattr(ApprovalWebhook, "timeout", 2.0)
    monkeypatch.setattr(ApprovalWebhook, "flush_timeout", 3.0)


def _guards() -> tuple[Callable[..., Any], Callable[..., Any]]:
    pay = d2_guard("pay")(lambda order, amount=1: f"paid {order}")
    search = d2_guard("search")(lambda q: f"found {q}")
    return pay, search


def _ask(pay: Callable[..., Any], *args: Any, user: str = "bob") -> Any:
    set_user(user, roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as caught:
        pay(*args)
    return caught.value.request


def test_an_opened_request_is_posted_with_its_fields(
    receiver: WebhookReceiver, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_APPROVAL_INBOX_URL", "http://127.0.0.1:8000/approvals/")
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    request = _ask(pay, "o_1", 250)
    assert receiver.wait_for(1)
    event = receiver.events[0]
    link = f"http://127.0.0.1:8000/approvals/{request.id}"
    assert event["event"] == "approval.requested" and event["state"] == "pending"
    assert event["request_id"] == request.id and event["tool_id"] == "pay"
    assert event["requester"] == "bob" and event["approver_roles"] == ["boss", "finance"]
    assert event["app"] == "local:refund-desk" and event["decided_by"] is None
    assert event["inbox_url"] == link
    assert event["expires_at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(request.expires_at)
    )
    assert "arguments" not in event  # not without the opt-in
    assert event["text"].startswith("D2: approval requested: bob wants to call pay")
    assert "\n" not in event["text"] and event["text"].endswith(link)


def test_approve_and_reject_post_decision_events_after_the_request(
    receiver: WebhookReceiver, fast: None
) -> None:
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    first = _ask(pay, "o_1")
    second = _ask(pay, "o_2")
    set_user("dana", roles=["boss"])
    approve(first.id)
    reject(second.id)
    assert receiver.wait_for(4)
    seen = [(e["event"], e["request_id"], e["decided_by"], e["state"]) for e in receiver.events]
    assert seen == [
        ("approval.requested", first.id, None, "pending"),
        ("approval.requested", second.id, None, "pending"),
        ("approval.approved", first.id, "dana", "approved"),
        ("approval.rejected", second.id, "dana", "rejected"),
    ]
    assert receiver.events[2]["text"].startswith(
        f"D2: approval request {first.id[:12]} approved by dana: bob may call pay once"
    )
    assert "rejected by dana" in receiver.events[3]["text"]


def test_a_refused_decision_posts_nothing(receiver: WebhookReceiver, fast: None) -> None:
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    request = _ask(pay, "o_1")
    with pytest.raises(PermissionDeniedError):
        approve(request.id)  # the requester may not approve their own request
    set_user("eve", roles=["agent"])
    with pytest.raises(PermissionDeniedError):
        reject(request.id)  # not an approver
    get_policy_manager().shutdown()
    assert [e["event"] for e in receiver.events] == ["approval.requested"]


def test_an_identical_call_while_pending_opens_nothing_new(
    receiver: WebhookReceiver, fast: None
) -> None:
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, search = _guards()
    first = _ask(pay, "o_1")
    again = _ask(pay, "o_1")
    assert again.id == first.id
    set_user("bob", roles=["agent"])
    assert search("x") == "found x"  # a call without approval: nothing posted
    get_policy_manager().shutdown()
    assert [e["request_id"] for e in receiver.events] == [first.id]


def test_arguments_are_sent_only_when_opted_in_as_the_approver_sees_them(
    receiver: WebhookReceiver, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    _ask(pay, "plain")
    configure_rbac_sync(
        source=InMemorySource(DOC), approval_webhook=receiver.url, approval_webhook_arguments=True
    )
    shown = _ask(pay, Order(), 7)
    monkeypatch.setenv("D2_APPROVAL_WEBHOOK_ARGUMENTS", "1")
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    by_env = _ask(pay, "env", 3)
    get_policy_manager().shutdown()
    assert receiver.wait_for(3)
    plain, opted, env = receiver.events
    assert "arguments" not in plain
    assert opted["arguments"] == shown.arguments  # the approver's view, exactly
    assert opted["arguments"]["amount"] == 7 and opted["arguments"]["order"]["ref"] == "o_1"
    assert env["arguments"] == by_env.arguments == {"order": "env", "amount": 3}
    assert "plain" not in json.dumps(plain)  # the arguments appear nowhere else


def test_the_environment_configures_the_webhook(
    receiver: WebhookReceiver, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D2_APPROVAL_WEBHOOK", receiver.url)
    manager = configure_rbac_sync(source=InMemorySource(DOC))
    assert manager.approval_webhook is not None
    assert evaluator_for("default").webhook is manager.approval_webhook
    pay, _ = _guards()
    request = _ask(pay, "o_1")
    assert receiver.wait_for(1)
    assert receiver.events[0]["request_id"] == request.id
    assert receiver.events[0]["inbox_url"] is None


def test_without_a_webhook_nothing_is_loaded_or_started() -> None:
    """Zero cost when off: the sender module is not even imported."""
    code = textwrap.dedent(
        """
        import sys, threading
        from d2.core import InMemorySource, configure_rbac_sync, d2_guard, set_user
        from d2.core.testing import policy_document
        doc = policy_document({"role": "agent", "permissions": [
            {"tool": "pay", "approval": {"approvers": ["boss"]}}]},
            {"role": "boss", "permissions": []})
        configure_rbac_sync(source=InMemorySource(doc))
        set_user("bob", roles=["agent"])
        try:
            d2_guard("pay")(lambda: 1)()
        except Exception as err:
            assert err.reason == "approval_required", err
        assert "d2.core.webhook" not in sys.modules
        assert "urllib.request" not in sys.modules
        assert not [t for t in threading.enumerate() if t.name == "d2-approval-webhook"]
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "D2_SILENT": "1"},
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_a_500_is_retried_with_exponential_backoff(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ApprovalWebhook, "backoff", 0.2)
    receiver.replies = [Reply(500), Reply(503), Reply(500), Reply(200)]
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    _ask(pay, "o_1")
    hook = get_policy_manager().approval_webhook
    assert hook is not None and hook.flush(10)
    assert hook.sent == 1 and hook.dropped == 0 and hook.attempts == 4
    times = [t for t, _, _ in receiver.hits]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len({body["event_id"] for _, _, body in receiver.hits}) == 1  # the same event
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[1] > gaps[0] * 1.5 and gaps[2] > gaps[1] * 1.5, gaps


def test_retries_give_up_and_count_the_event(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(500)] * 3
    with ApprovalWebhookFor(receiver, retries=2, backoff=0.01) as hook:
        hook.opened(_request(), "local:x")
        assert hook.flush(5)
        assert hook.sent == 0 and hook.dropped == 1 and len(receiver.hits) == 3
    assert "HTTP 500" in caplog.text and "after 3 attempts" in caplog.text


def test_a_429_retry_after_is_honoured(receiver: WebhookReceiver) -> None:
    receiver.replies = [Reply(429, headers={"Retry-After": "1"})]
    with ApprovalWebhookFor(receiver, backoff=0.01) as hook:
        hook.opened(_request(), None)
        assert receiver.wait_for(1)
    first, second = (t for t, _, _ in receiver.hits)
    assert second - first >= 0.95


def test_a_4xx_is_not_retried(receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.replies = [Reply(404)]
    with ApprovalWebhookFor(receiver, backoff=0.01) as hook:
        hook.opened(_request(), None)
        assert hook.flush(5)
        assert hook.dropped == 1 and hook.attempts == 1 and len(receiver.hits) == 1
    assert "HTTP 404" in caplog.text and SECRET not in caplog.text


def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    elsewhere = receiver.url.replace(SECRET, "elsewhere")
    receiver.replies = [Reply(307, headers={"Location": elsewhere})]
    with ApprovalWebhookFor(receiver, backoff=0.01) as hook:
        hook.opened(_request(), None)
        assert hook.flush(5)
        assert hook.dropped == 1
    assert [path for _, path, _ in receiver.hits] == [f"/hooks/{SECRET}"]


def test_a_hanging_receiver_never_delays_the_guarded_call(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ApprovalWebhook, "flush_timeout", 0.5)
    receiver.replies = [Reply(hang=True)] * 50
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, search = _guards()
    _ask(pay, "warm-up")  # the sender now hangs on this one
    assert receiver.wait_for(1, hits=True)
    started = time.perf_counter()
    for n in range(20):
        _ask(pay, f"o_{n}")  # each opens a request while the receiver hangs
    opening = (time.perf_counter() - started) / 20
    held = _ask(pay, "o_x")
    set_user("dana", roles=["boss"])
    started = time.perf_counter()
    approve(held.id)
    deciding = time.perf_counter() - started
    assert opening < 0.05 and deciding < 0.05, (opening, deciding)
    set_user("bob", roles=["agent"])
    started = time.perf_counter()
    search("q")
    assert time.perf_counter() - started < 0.05
    hook = get_policy_manager().approval_webhook
    assert hook is not None
    started = time.perf_counter()
    shutdown_rbac()  # bounded by flush_timeout, not by the hang
    assert time.perf_counter() - started < 0.5 + 1.0
    assert not hook._thread.is_alive()  # the attempt in flight was cut at the deadline
    assert hook.sent == 0 and hook.dropped == 23  # 22 requests and 1 approval


async def test_async_calls_and_await_shutdown_do_not_block_the_loop(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ApprovalWebhook, "flush_timeout", 1.0)
    receiver.replies = [Reply(delay=0.3), Reply(hang=True), Reply(hang=True)]
    await configure_rbac_async(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay = d2_guard("pay")(_async_pay)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    set_user("bob", roles=["agent"])
    held = []
    for order in ("o_1", "o_2", "o_3"):
        started = time.perf_counter()
        try:
            await pay(order)
        except ApprovalRequiredError as err:
            held.append(err.request)
        assert time.perf_counter() - started < 0.05
    set_user("dana", roles=["boss"])
    await approve_async(held[0].id)
    before = ticks
    started = time.perf_counter()
    shutdown = shutdown_rbac()  # returns at once on the loop; awaiting waits for the flush
    assert time.perf_counter() - started < 0.05
    await shutdown
    waited = time.perf_counter() - started
    beat.cancel()
    assert 0.3 <= waited < 1.0 + 1.0, waited
    assert ticks - before >= 10  # the loop kept running while the flush went on
    assert [e["request_id"] for e in receiver.events] == [held[0].id]


async def _async_pay(order: str) -> str:
    return f"paid {order}"


async def test_await_ashutdown_waits_for_the_flush(receiver: WebhookReceiver, fast: None) -> None:
    receiver.replies = [Reply(delay=0.2)] * 3
    manager = await configure_rbac_async(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay = d2_guard("pay")(_async_pay)
    set_user("bob", roles=["agent"])
    for order in ("o_1", "o_2", "o_3"):
        with pytest.raises(ApprovalRequiredError):
            await pay(order)
    await manager.ashutdown()
    assert len(receiver.events) == 3


def test_shutdown_flushes_what_is_queued(receiver: WebhookReceiver, fast: None) -> None:
    receiver.replies = [Reply(delay=0.1)] * 5
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    ids = [_ask(pay, f"o_{n}").id for n in range(5)]
    assert len(receiver.events) < 5  # still being delivered
    shutdown_rbac()
    assert [e["request_id"] for e in receiver.events] == ids


def test_reconfiguring_flushes_the_old_webhook_and_uses_the_new(fast: None) -> None:
    with webhook_receiver() as old, webhook_receiver() as new:
        old.replies = [Reply(delay=0.2)]
        configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=old.url)
        pay, _ = _guards()
        first = _ask(pay, "o_1")
        first_hook = get_policy_manager().approval_webhook
        configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=new.url)
        assert [e["request_id"] for e in old.events] == [first.id]  # flushed on replace
        assert first_hook is not None and not first_hook._thread.is_alive()
        second = _ask(pay, "o_2")
        configure_rbac_sync(source=InMemorySource(DOC))  # and off again
        assert evaluator_for("default").webhook is None
        _ask(pay, "o_3")
        shutdown_rbac()
        assert [e["request_id"] for e in new.events] == [second.id]
        assert len(old.events) == 1


def test_the_queue_is_bounded_and_drops_are_counted_and_logged(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [Reply(hang=True)]
    with ApprovalWebhookFor(receiver, capacity=3, flush_timeout=0.2) as hook:
        hook.opened(_request("first"), None)
        assert receiver.wait_for(1, hits=True)  # the sender is stuck on the first
        for n in range(10):
            hook.opened(_request(f"r{n}"), None)
        assert len(hook._queue) == 3 and hook.dropped == 7
    assert caplog.text.count("its queue is full (3 events)") == 1  # warned once
    # at close: the 7 dropped, the 3 queued and the one in flight (cut)
    assert "closed: 0 notification(s) sent, 11 not delivered" in caplog.text


def test_an_unusable_url_is_refused_without_showing_it() -> None:
    for url in (
        f"ftp://127.0.0.1/{SECRET}",
        f"http:///{SECRET}",
        f"http://127.0.0.1/{SECRET} x",
        f"http://127.0.0.1:99999/{SECRET}",
        f"http://127.0.0.1/{SECRET}\x01",
        f"127.0.0.1/{SECRET}",
        f"http://127.0.0.1/{SECRET}\u00e9",
    ):
        with pytest.raises(ConfigurationError) as caught:
            configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=url)
        assert SECRET not in str(caught.value), url
    with pytest.raises(ConfigurationError, match="approval_inbox_url"):
        configure_rbac_sync(
            source=InMemorySource(DOC),
            approval_webhook="http://127.0.0.1/h",
            approval_inbox_url="javascript:alert(1)",
        )
    with pytest.raises(ConfigurationError):
        get_policy_manager()  # nothing was configured


def test_the_url_is_never_logged_nor_shown(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="d2")
    receiver.replies = [Reply(500)] * 2 + [Reply(400)]
    url = receiver.url.replace("127.0.0.1", f"user:{SECRET}pw@127.0.0.1") + f"?key={SECRET}q"
    with ApprovalWebhookFor(receiver, url=url, retries=1, backoff=0.01) as hook:
        hook.opened(_request("a"), None)
        hook.opened(_request("b"), None)
        assert hook.flush(5)
        assert hook.dropped == 2
        shown = repr(hook) + hook.shown_url
    sent = receiver.headers[0]["Authorization"]  # the credentials go as Basic auth
    assert sent == "Basic " + base64.b64encode(f"user:{SECRET}pw".encode()).decode()
    assert all(path.endswith(f"?key={SECRET}q") for _, path, _ in receiver.hits)
    down = ApprovalWebhook(f"http://127.0.0.1:1/{SECRET}", retries=0)
    down.opened(_request("c"), None)
    assert down.flush(5)
    down.close()
    assert caplog.text.count("not delivered") >= 2
    assert SECRET not in caplog.text and SECRET not in shown
    assert "http://127.0.0.1:1/***" in caplog.text


def test_plain_http_to_another_host_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    hook = ApprovalWebhook(f"http://10.0.0.1:9/{SECRET}")
    hook.close(0)
    assert "plain http" in caplog.text and SECRET not in caplog.text
    caplog.clear()
    ApprovalWebhook("http://127.0.0.1:9/h").close(0)
    ApprovalWebhook("https://10.0.0.1:9/h").close(0)
    assert "plain http" not in caplog.text


@pytest.mark.parametrize("hang", [False, True])
def test_interpreter_exit_flushes_within_a_bound(receiver: WebhookReceiver, hang: bool) -> None:
    """An app that never calls shutdown_rbac(): its queued events still go out at
    exit; a hanging receiver holds the exit for the flush time at most."""
    if hang:
        receiver.replies = [Reply(hang=True)] * 3
    else:
        receiver.replies = [Reply(delay=0.2)] * 3
    code = textwrap.dedent(
        f"""
        from d2.core import InMemorySource, configure_rbac_sync, d2_guard, set_user
        from d2.core.testing import policy_document
        from d2.core.webhook import ApprovalWebhook
        ApprovalWebhook.flush_timeout = 1.0
        doc = policy_document({{"role": "agent", "permissions": [
            {{"tool": "pay", "approval": {{"approvers": ["boss"]}}}}]}},
            {{"role": "boss", "permissions": []}})
        configure_rbac_sync(source=InMemorySource(doc), approval_webhook={receiver.url!r})
        set_user("bob", roles=["agent"])
        pay = d2_guard("pay")(lambda n: n)
        for n in range(3):
            try:
                pay(n)
            except Exception as err:
                assert err.reason == "approval_required"
        import time
        time.sleep(0.3)  # the first POST is in flight (hanging) when the exit begins
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "D2_SILENT": "1"},
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    if hang:
        assert "0 notification(s) sent, 3 not delivered" in done.stderr, done.stderr
        assert SECRET not in done.stderr
        assert took < 1.0 + 0.5 + 3, took  # the flush time, the cut, the start
    else:
        assert len(receiver.events) == 3, done.stderr


def test_a_shutdown_left_unawaited_on_a_loop_is_still_flushed_at_exit(
    receiver: WebhookReceiver,
) -> None:
    """``shutdown_rbac()`` on an event loop does not wait; the process exiting
    right after still delivers what was queued."""
    receiver.replies = [Reply(delay=0.3)] * 2
    code = textwrap.dedent(
        f"""
        import asyncio
        from d2.core import (
            InMemorySource, configure_rbac_async, d2_guard, set_user, shutdown_rbac)
        from d2.core.testing import policy_document
        doc = policy_document({{"role": "agent", "permissions": [
            {{"tool": "pay", "approval": {{"approvers": ["boss"]}}}}]}},
            {{"role": "boss", "permissions": []}})

        async def pay(n):
            return n

        async def main():
            await configure_rbac_async(
                source=InMemorySource(doc), approval_webhook={receiver.url!r})
            set_user("bob", roles=["agent"])
            guarded = d2_guard("pay")(pay)
            for n in range(2):
                try:
                    await guarded(n)
                except Exception as err:
                    assert err.reason == "approval_required"
            shutdown_rbac()  # not awaited

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("D2_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "D2_SILENT": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert len(receiver.events) == 2, done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_its_own_events_only(receiver: WebhookReceiver, fast: None) -> None:
    receiver.replies = [Reply(delay=1.0)]
    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    parents = [_ask(pay, f"parent_{n}").id for n in range(3)]
    assert receiver.wait_for(1, hits=True)  # one in flight, two queued at the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            hook = get_policy_manager().approval_webhook
            assert hook is not None and not hook._queue and hook._thread.is_alive()
            _ask(pay, "child")
            code = 0 if hook.flush(10) and hook.sent == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    shutdown_rbac()
    ids = [e["request_id"] for e in receiver.events]
    assert len([i for i in ids if i not in parents]) == 1  # the child's own request
    assert sorted(i for i in ids if i in parents) == sorted(parents)  # each once


def test_the_redis_store_opens_a_request_once_across_processes(
    redis_url: str, receiver: WebhookReceiver, fast: None
) -> None:
    """Two instances on one store (two workers): the identical call opens one
    request, and only the worker that opened it posts it."""
    for name in ("w1", "w2"):
        configure_rbac_sync(
            source=InMemorySource(DOC),
            instance_name=name,
            store=redis_url,
            approval_webhook=receiver.url,
        )
    pay1 = d2_guard("pay", instance_name="w1")(lambda order: order)
    pay2 = d2_guard("pay", instance_name="w2")(lambda order: order)
    first = _ask(pay1, "o_1")
    second = _ask(pay2, "o_1")
    assert first.id == second.id
    shutdown_rbac("w1")
    shutdown_rbac("w2")
    assert [e["request_id"] for e in receiver.events] == [first.id]


def test_the_documented_payload_is_the_real_one(receiver: WebhookReceiver, fast: None) -> None:
    """docs/approvals.md shows one event; the same call posts exactly that
    (ids and times aside)."""
    page = Path(__file__).resolve().parents[3] / "docs" / "approvals.md"
    section = page.read_text().split("## Notifications", 1)[1]
    shown = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    configure_rbac_sync(
        source=InMemorySource(
            policy_document(
                {
                    "role": "agent",
                    "permissions": [
                        {
                            "tool": "payments.refund",
                            "approval": {"approvers": ["finance_lead"], "ttl": "15m"},
                        }
                    ],
                },
                {"role": "finance_lead", "permissions": []},
                name="refund-desk",
            )
        ),
        approval_webhook=receiver.url,
        approval_webhook_arguments=True,
        approval_inbox_url="http://127.0.0.1:8000/approvals",
    )
    refund = d2_guard("payments.refund")(lambda order_id, amount: amount)
    request = _ask(refund, "o_2", 250, user="agent-7")
    assert receiver.wait_for(1)
    real = json.dumps(receiver.events[0])
    for key in ("request_id", "event_id", "occurred_at", "expires_at", "policy_version"):
        real = real.replace(str(receiver.events[0][key]), str(shown[key]))
    real = real.replace(request.id[:12], shown["request_id"][:12])
    assert json.loads(real) == shown


# -- helpers -------------------------------------------------------------------------
def _request(tool: str = "pay") -> Any:
    from d2.core.approval_data import ApprovalRequest

    return ApprovalRequest(
        id="ab" * 32,
        tool_id=tool,
        user_id="bob",
        arguments={"amount": 5},
        policy_version="v1",
        expires_at=time.time() + 600,
        approver_roles=("boss",),
    )


class ApprovalWebhookFor:
    """An :class:`ApprovalWebhook` posting to ``receiver`` (closed on exit)."""

    def __init__(self, receiver: WebhookReceiver, url: str | None = None, **options: Any) -> None:
        self.hook = ApprovalWebhook(url or receiver.url, **options)

    def __enter__(self) -> ApprovalWebhook:
        return self.hook

    def __exit__(self, *exc: object) -> None:
        self.hook.close()


def test_decisions_made_at_a_desk_are_posted_too(receiver: WebhookReceiver, fast: None) -> None:
    """The inbox page and ``d2 approvals`` decide through an ApprovalDesk: their
    decisions reach the webhook as approve()/reject() do (the instance's webhook,
    or the one given to a desk bound to a store)."""
    import asyncio

    from d2.core.approval_desk import ApprovalDesk
    from d2.core.webhook import ApprovalWebhook

    configure_rbac_sync(source=InMemorySource(DOC), approval_webhook=receiver.url)
    pay, _ = _guards()
    first, second = _ask(pay, "o_1"), _ask(pay, "o_2")
    asyncio.run(ApprovalDesk.of_instance().decide(first.id, True, "dana", ["boss"]))
    store, namespace = ApprovalDesk.of_instance().where()
    webhook = ApprovalWebhook(receiver.url)
    own = ApprovalDesk(store, namespace, webhook=webhook)
    asyncio.run(own.decide(second.id, False, "dana", ["boss"]))
    webhook.close()  # delivers what it queued
    assert receiver.wait_for(4)
    seen = sorted((e["event"], e["request_id"], e["decided_by"]) for e in receiver.events)
    assert ("approval.approved", first.id, "dana") in seen
    assert ("approval.rejected", second.id, "dana") in seen


# -- the ninth review: a receiver that echoes the URL's path -------------------------

TOKEN = "Zq8rT2vX9kLm4NpW7sYb3HdF6gJc1Ae5"  # the secret part of an incoming webhook's path


def secret_pieces(text: str, secret: str = TOKEN, size: int = 6) -> list[str]:
    """Every run of ``size`` characters of ``secret`` found in ``text`` (any case)."""
    lower = text.lower()
    return [
        secret[i : i + size]
        for i in range(len(secret) - size + 1)
        if secret[i : i + size].lower() in lower
    ]


def echoes() -> list[Callable[[str], bytes]]:
    """Receivers' 404 bodies that echo the path, at every offset a cut could fall
    on, as sent, percent-decoded, HTML-escaped and JSON-escaped."""
    import html
    from urllib.parse import unquote

    found: list[Callable[[str], bytes]] = []
    for pad in range(0, 140, 9):
        found.append(lambda path, pad=pad: ("x" * pad + f" no route for POST {path}").encode())
    found.append(lambda path: f"Cannot POST {unquote(path)}".encode())
    found.append(lambda path: f"<pre>Cannot POST {html.escape(path)}</pre>".encode())
    found.append(
        lambda path: json.dumps({"error": f"no route {path}"}).replace("/", "\\/").encode()
    )
    found.append(lambda path: f"unknown token {path.rsplit('/', 1)[-1][3:].upper()}!".encode())
    return found


def test_a_receiver_that_echoes_the_path_never_puts_the_secret_in_the_log(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # The ninth review: the body was cut to 120 characters before the exact path
    # was scrubbed, so a path straddling the cut was logged (35 of 36 characters).
    caplog.set_level(logging.DEBUG, logger="d2")
    replies = echoes()
    receiver.replies = [Reply(404, body=echo) for echo in replies]
    url = receiver.url + f"/services/T0001/B0002/{TOKEN}%41?sig={TOKEN[::-1]}"
    with ApprovalWebhookFor(receiver, url=url, retries=0) as hook:
        hook.dropped = 99  # each failure is logged: the first, then one per 100
        for _ in replies:
            hook.opened(_request(), None)
            assert hook.flush(5)
            hook.dropped = 99
    assert receiver.wait_for(len(replies), hits=True)
    assert TOKEN in receiver.hits[0][1]  # the receiver did echo it
    logged = [r.getMessage() for r in caplog.records if "HTTP 404" in r.getMessage()]
    assert len(logged) == len(replies)
    for line in logged:
        assert "HTTP 404: '" in line  # an excerpt is still logged, masked
        assert not secret_pieces(line), line
        assert not secret_pieces(line, TOKEN[::-1]), line
        assert len(line.split("HTTP 404: ", 1)[1]) <= 90  # a short excerpt


@settings(max_examples=300)
@given(
    before=st.text(max_size=150),
    after=st.text(max_size=40),
    start=st.integers(0, 40),
    length=st.integers(6, 80),
    spelling=st.sampled_from(["as sent", "decoded", "html", "json", "upper"]),
)
def test_no_run_of_six_characters_of_the_secret_survives_in_an_excerpt(
    before: str, after: str, start: int, length: int, spelling: str
) -> None:
    import html
    from urllib.parse import unquote

    from d2.core.webhook import _excerpt, _Secrets

    url = f"https://hooks.example.invalid/services/{TOKEN}%2Fx?key={TOKEN[::-1]}"
    path = f"/services/{TOKEN}%2Fx?key={TOKEN[::-1]}"
    echoed = {
        "as sent": path,
        "decoded": unquote(path),
        "html": html.escape(path),
        "json": path.replace("/", "\\/"),
        "upper": path.upper(),
    }[spelling][start : start + length]
    body = (before + echoed + after).encode("utf-8", "surrogatepass")
    shown = _excerpt(body, _Secrets(url, url))
    assert not secret_pieces(shown) and not secret_pieces(shown, TOKEN[::-1])
    assert len(shown) <= 2 + len(repr("x" * 80))
