"""The twenty-sixth hostile review: the request lock of policies that keep history.

* ``_record_judged`` (a call with a budget under a policy with sequences or data
  flow) takes ``scope.lock`` itself instead of :func:`request_lock`: in a process
  forked while another thread held the request's lock, the child's first such call
  waits for a lock nobody will release;
* a signal handler runs between any two bytecodes of the thread that holds the
  request's lock: a handler that makes a guarded call in the same request waits
  for the lock its own thread holds, for ever;
* ``restore_request`` in another thread of the request clears the progress
  caches under the lock, but a call with a budget reads the history outside it
  (``progress_of`` in ``_judge``) and writes back a cache computed from the old
  history: the restored calls are never read, a forbidden sequence runs.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
from typing import Any

import pytest
from d2.core import PermissionDeniedError, d2_guard, evaluate, set_user
from race_kit import guarded_tool, in_child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_a_budgeted_call_in_a_child_forked_while_the_request_lock_was_held_does_not_hang(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # review 25 gave the forked child a fresh lock through request_lock(); the lean
    # path and restore() use it, but _record_judged (a tool with a budget) takes
    # scope.lock directly: the parent's lock, held by a thread the child lacks
    configure(
        {"role": "r",
         "permissions": ["a", "b", {"tool": "send", "limits": [{"max": 5, "per": "request"}]}],
         "sequence": [{"deny": ["b", "a"]}]},
    )  # fmt: skip
    a, b, send = guarded_tool("a"), guarded_tool("b"), guarded_tool("send")
    set_user("u-fork-budget", roles=["r"])
    request = contextvars.copy_context()  # the request, as a forked worker keeps it
    inside, leave = threading.Event(), threading.Event()
    real = evaluate.record_call

    def slow_record(rules: Any, scope: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            inside.set()  # in the critical section while the main thread forks
            leave.wait(10)
        real(rules, scope)

    monkeypatch.setattr(evaluate, "record_call", slow_record)
    other = threading.Thread(target=contextvars.copy_context().run, args=(b,))
    other.start()
    assert inside.wait(10)

    def child() -> None:
        outcome: list[object] = []
        try:
            outcome.append(request.run(send))
        except PermissionDeniedError as exc:
            outcome.append(exc.reason)
        assert outcome

    try:
        status = in_child(child)
    finally:
        leave.set()
        other.join(10)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the forked child hung on the parent's request lock (status {status})"
    )
    del a


def test_a_signal_handler_calling_a_guarded_tool_does_not_deadlock_the_request(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a SIGTERM/SIGUSR1 handler that saves state through a guarded tool of the
    # current request: it runs in the main thread wherever that thread is, here
    # inside the lean path's critical section (after layers(), at record_call).
    # Its call waits for the lock the interrupted frame holds: a deadlock. The
    # secure outcome: the handler's call is decided (allowed or refused), never hung.
    configure(
        {"role": "r", "permissions": ["a", "save"], "sequence": [{"deny": ["x.never", "y.never"]}]},
    )
    a, save = guarded_tool("a"), guarded_tool("save")
    real = evaluate.record_call

    def child() -> None:
        set_user("u-signal", roles=["r"])
        handled: list[object] = []

        def on_signal(signum: int, frame: Any) -> None:
            try:
                handled.append(save())
            except PermissionDeniedError as exc:
                handled.append(exc.reason)

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
    status = in_child(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"a signal handler's guarded call deadlocked on its own thread's lock (status {status})"
    )


def test_restore_request_in_another_thread_cannot_leave_a_stale_sequence_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # restore_request() (what an agent adapter calls when it resumes a paused run)
    # inserts the paused request's calls BEFORE this scope's own calls and clears
    # every policy's progress cache, under the request lock. A call with a budget
    # reads the history outside the lock (_judge -> progress_of): preempted inside
    # progress_of, it writes back a Track computed from the old history after the
    # cache was cleared. That Track says "read=1" of a history whose first entry
    # is now the restored db.read_users: no later progress_of ever reads it, and
    # the forbidden sequence db.read_users -> http.request runs.
    import sys

    from d2.core import (
        ApprovalRequiredError,
        InMemorySource,
        approve,
        configure_rbac_sync,
        restore_request,
    )
    from d2.core.policy.model import CompiledPolicy
    from d2.core.testing import policy_document

    agent = {
        "role": "agent",
        "permissions": [
            "db.read_users",
            "http.request",
            {"tool": "web.search", "limits": [{"max": 5, "per": "request"}]},
            {"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}},
        ],
        "sequence": [{"deny": ["db.read_users", "http.request"]}],
    }
    doc = policy_document(agent, {"role": "finance_lead", "permissions": []}, name="r26")
    configure_rbac_sync(source=InMemorySource(doc))
    ran: list[str] = []
    read_users = d2_guard("db.read_users")(lambda: ran.append("read") or "users")
    post = d2_guard("http.request")(lambda body: ran.append("post") or "posted")
    search = d2_guard("web.search")(lambda q: ran.append("search") or "hits")
    refund = d2_guard("payments.refund")(lambda order: ran.append("refund") or "ok")

    set_user("agent-7", roles=["agent"])  # the paused run: read, then a held refund
    read_users()
    with pytest.raises(ApprovalRequiredError) as info:
        refund("o1")
    request_id = info.value.request.id
    set_user("dana", roles=["finance_lead"])
    approve(request_id)

    set_user("agent-7", roles=["agent"])  # the resumed run
    search("q1")
    real = CompiledPolicy.rules_for
    armed: list[bool] = []

    def rules_for(self: Any, tool_id: str, remember: bool = True) -> Any:
        caller = sys._getframe(1).f_code.co_name
        main = threading.current_thread() is threading.main_thread()
        if caller == "progress_of" and not armed and main:
            armed.append(True)  # preempted inside progress_of: the resume runs now
            other = threading.Thread(
                target=contextvars.copy_context().run, args=(restore_request, request_id)
            )
            other.start()
            other.join(10)
        return real(self, tool_id, remember)

    monkeypatch.setattr(CompiledPolicy, "rules_for", rules_for)
    search("q2")
    monkeypatch.setattr(CompiledPolicy, "rules_for", real)
    assert armed, "the interleaving was not forced"
    from d2.core import get_user_context

    assert get_user_context().call_history[0] == "db.read_users"  # restored
    try:
        post("users")
    except PermissionDeniedError as exc:
        assert exc.reason == "sequence_violation"
    assert "post" not in ran, "http.request ran after the restored db.read_users"
