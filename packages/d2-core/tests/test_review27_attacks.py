"""The twenty-seventh hostile review: the request lock of policies that keep
history, and what is judged again after the store answers.

* ``resume.restore`` takes the request lock with no limit, while it holds the
  process-wide budget and resume locks: a guarded call from a signal handler that
  continues an approved request, landing while its own thread holds the request
  lock, waits for ever (and every other request's budgeted call with it);
* ``request_lock`` replaces a forked child's lock without any guard: two threads
  of one request making their first call in the child can each install (and hold)
  a lock of their own, and both pass a forbidden sequence;
* a policy whose data-flow labels come only from ``record_fact`` keeps no history,
  so a call judged before its store work is never judged again: a label recorded
  while the store answered does not block it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
from typing import Any

import pytest
from d2.core import PermissionDeniedError, d2_guard, evaluate, record_fact, set_user
from race_kit import guarded_tool, in_child, pause_redis

_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@_fork
def test_a_signal_handler_restoring_a_request_does_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # review 26 bounded the wait of the lean path and _record_judged for the
    # request lock (a signal handler's guarded call is refused, never hung), but
    # restore() -- run by a call that continues an approved request -- still takes
    # it with no limit, and does so holding _spend_lock and resume._lock
    from d2.core import (
        ApprovalRequiredError,
        InMemorySource,
        approve,
        configure_rbac_sync,
        restore_request,
    )
    from d2.core.testing import policy_document

    agent = {
        "role": "agent",
        "permissions": [
            "db.read_users",
            "a",
            {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}},
        ],
        "sequence": [{"deny": ["db.read_users", "http.request"]}],
    }
    doc = policy_document(agent, {"role": "finance_lead", "permissions": []}, name="r27")
    real = evaluate.record_call

    def child() -> None:  # (a forked child starts with an empty in-memory store)
        configure_rbac_sync(source=InMemorySource(doc))
        read_users, a = guarded_tool("db.read_users"), guarded_tool("a")
        refund = guarded_tool("payments.refund")
        set_user("agent-7", roles=["agent"])  # the paused run: read, then a held refund
        read_users()
        try:
            refund("o1")
        except ApprovalRequiredError as exc:
            request_id = exc.request.id
        set_user("dana", roles=["finance_lead"])
        approve(request_id)
        set_user("agent-7", roles=["agent"])  # the resumed run
        handled: list[object] = []

        def on_signal(signum: int, frame: Any) -> None:
            try:
                # an agent adapter resuming the paused run (restore_request) from
                # a handler: it must finish or fail, never wait for ever
                handled.append(restore_request(request_id))
            except Exception as exc:
                handled.append(exc)

        signal.signal(signal.SIGUSR1, on_signal)
        fired: list[bool] = []

        def record(rules: Any, scope: Any) -> None:
            if rules.tool_id == "a" and not fired:
                fired.append(True)
                signal.raise_signal(signal.SIGUSR1)  # arrives while the lock is held
            real(rules, scope)

        evaluate.record_call = record  # type: ignore[assignment]
        a()
        assert handled, "the handler did not run"

    monkeypatch.setattr(evaluate, "record_call", real)  # restored in the parent
    status = in_child(child, seconds=6)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"restore_request() from a signal handler deadlocked (status {status})"
    )


@_fork
def test_two_threads_first_calls_in_a_forked_child_share_one_request_lock(
    configure: Any,
) -> None:
    # request_lock(): "if scope.forks != _forks[0]: scope.lock = Lock(); scope.forks
    # = ..." with nothing guarding it. Two threads of the request that both see the
    # old fork count each install a lock; one holds the first while the other holds
    # the second: both judge the empty history, both run.
    configure(
        {
            "role": "r",
            "permissions": ["a", "b"],
            "sequence": [{"deny": ["a", "b"]}, {"deny": ["b", "a"]}],
        },
    )
    a, b = guarded_tool("a"), guarded_tool("b")
    set_user("u-fork-race", roles=["r"])
    request = contextvars.copy_context()
    from d2.core import context

    def child() -> None:
        real_threading = context.threading
        first_in, second_in = threading.Event(), threading.Event()
        first_recording, second_recording = threading.Event(), threading.Event()
        names: dict[int, str] = {}

        class Shim:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_threading, name)

            @staticmethod
            def Lock() -> Any:
                me = names.get(threading.get_ident())
                if me == "first":  # preempted after making its lock, before storing it
                    first_in.set()
                    second_in.wait(3)
                elif me == "second":
                    second_in.set()
                    first_recording.wait(3)
                return real_threading.Lock()

        real_record = evaluate.record_call

        def record(rules: Any, scope: Any) -> None:
            me = names.get(threading.get_ident())
            if me == "first":
                first_recording.set()
                second_recording.wait(3)  # the other call is judged meanwhile
            elif me == "second":
                second_recording.set()
            real_record(rules, scope)

        context.threading = Shim()  # type: ignore[assignment]
        evaluate.record_call = record  # type: ignore[assignment]
        outcomes: dict[str, object] = {}

        def run(name: str, tool: Any) -> None:
            names[threading.get_ident()] = name
            try:
                outcomes[name] = tool()
            except PermissionDeniedError as exc:
                outcomes[name] = exc.reason

        one = threading.Thread(target=request.copy().run, args=(run, "first", a))
        one.start()
        assert first_in.wait(5), "the interleaving was not forced"
        two = threading.Thread(target=request.copy().run, args=(run, "second", b))
        two.start()
        one.join(8)
        two.join(8)
        ran = [v for v in outcomes.values() if v in ("a", "b")]
        assert len(ran) == 1, f"both calls of a forbidden pair ran: {outcomes}"

    status = in_child(child, seconds=15)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"two threads of one request passed on two request locks (status {status})"
    )


async def _send_while_labelled(configure: Any, redis_url: str, labels: dict[str, Any]) -> Any:
    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": "send", "limits": [{"max": 100, "per": "user", "window": "1d"}]},
                "other",
            ],
        },
        metadata={"data_flow": {"labels": labels, "blocks": {"UNTRUSTED": ["send"]}}},
        store=redis_url,
    )

    async def body() -> str:
        return "sent"

    send = d2_guard("send")(body)
    set_user("u-fact", roles=["r"])
    pause_redis(redis_url, 300)
    pending = asyncio.ensure_future(send())
    await asyncio.sleep(0.1)  # send waits on the store
    record_fact("UNTRUSTED")  # e.g. the app just read a web page
    done = await asyncio.gather(pending, return_exceptions=True)
    return done[0]


async def test_a_fact_recorded_while_the_store_answered_blocks_the_call_with_a_tool_label(
    configure: Any, redis_url: str
) -> None:
    # the control: with any tool label in the policy the call is judged again
    first = await _send_while_labelled(configure, redis_url, {"other": ["OTHER"]})
    assert isinstance(first, PermissionDeniedError), first
    assert first.reason == "data_flow_violation"


async def test_a_fact_recorded_while_the_store_answered_blocks_the_call_without_tool_labels(
    configure: Any, redis_url: str
) -> None:
    # the same request, the same record_fact, but the policy's labels all come from
    # record_fact: ToolRules.history is False, _record_judged never runs, and send
    # runs after UNTRUSTED was recorded
    first = await _send_while_labelled(configure, redis_url, {})
    assert isinstance(first, PermissionDeniedError), f"send ran after UNTRUSTED: {first!r}"
    assert first.reason == "data_flow_violation"
