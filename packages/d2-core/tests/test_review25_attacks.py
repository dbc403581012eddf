"""The twenty-fifth hostile review: the request lock of policies that keep history.

The twenty-fourth review judged a call on the request's history and recorded it
under the request's lock. Three ways around it or into it:

* a call with a budget is judged (steps 5-6) outside the lock, and what it was
  judged on (``adm.seen``) is read *after* the judgement: a call of another thread
  of the request recorded in between is never seen, so the call is not judged
  again at record time;
* the lean path reads the input rules under the lock: an argument's ``__eq__``
  (an ``eq`` / ``ne`` rule) is user code, and a guarded call it makes in the same
  request waits for the lock its own thread holds, for ever;
* a process forked while another thread holds a request's lock gives the child a
  lock nobody will release: the child's first call of that request hangs.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from d2.core import PermissionDeniedError, evaluate, set_user
from race_kit import guarded_tool


def test_a_call_judged_before_another_thread_records_is_judged_again(
    configure: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # send has a per-request budget (the _judge path); read then send is forbidden.
    # Thread A's send passes steps 5-6 on an empty history; before it notes what it
    # was judged on, thread B (same request) reads and records it. A then records
    # send after read: the forbidden sequence ran.
    configure(
        {"role": "r",
         "permissions": ["read", {"tool": "send", "limits": [{"max": 5, "per": "request"}]}],
         "sequence": [{"deny": ["read", "send"]}]},
    )  # fmt: skip
    read, send = guarded_tool("read"), guarded_tool("send")
    set_user("u-toctou", roles=["r"])
    real = evaluate.layers
    ran: list[str] = []
    first = threading.Event()

    def preempted(rules: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(rules, *args, **kwargs)
        if rules.tool_id == "send" and not first.is_set():
            first.set()  # thread A is preempted here; B runs read to the end
            other = threading.Thread(target=contextvars.copy_context().run, args=(_read,))
            other.start()
            other.join()
        return result

    def _read() -> None:
        ran.append(read())

    monkeypatch.setattr(evaluate, "layers", preempted)
    try:
        ran.append(send())
    except PermissionDeniedError as exc:
        assert exc.reason == "sequence_violation"
    assert ran != ["read", "send"], "send ran after read in one request"


def test_an_input_rule_reading_user_code_does_not_hang_the_request(configure: Any) -> None:
    # an argument whose __eq__ calls another guarded tool of the same request (a
    # lazy value resolved through a tool): under a policy with sequences, the lean
    # path runs the `ne` rule while holding the request's lock, and the inner call
    # waits for that lock for ever
    configure(
        {"role": "r",
         "permissions": [{"tool": "send", "conditions": {"input": {"to": {"ne": "evil"}}}},
                         "lookup"],
         "sequence": [{"deny": ["x.never", "y.never"]}]},
    )  # fmt: skip
    send, lookup = guarded_tool("send"), guarded_tool("lookup")

    class Lazy:
        def __eq__(self, other: object) -> bool:
            return bool(lookup() == other)  # resolved through a guarded tool

        __hash__ = object.__hash__

    outcome: list[object] = []

    def run() -> None:
        set_user("u-reentrant", roles=["r"])
        try:
            outcome.append(send(to=Lazy()))
        except PermissionDeniedError as exc:
            outcome.append(exc.reason)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a guarded call hung on its own request's lock"
    assert outcome


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_holds_the_request_lock_does_not_hang(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(
        {"role": "r", "permissions": ["a", "b"], "sequence": [{"deny": ["b", "a"]}]},
    )
    a, b = guarded_tool("a"), guarded_tool("b")
    set_user("u-fork", roles=["r"])
    request = contextvars.copy_context()  # the request, as a forked worker inherits it
    inside, leave = threading.Event(), threading.Event()
    real = evaluate.record_call

    def slow_record(rules: Any, scope: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            inside.set()  # preempted in the critical section while the main thread forks
            leave.wait(10)
        real(rules, scope)

    monkeypatch.setattr(evaluate, "record_call", slow_record)
    other = threading.Thread(target=contextvars.copy_context().run, args=(b,))
    other.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: one call of the request, then out
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(5)  # a hang ends the child by SIGALRM
        try:
            request.run(a)
        except PermissionDeniedError as exc:
            os.write(2, f"child refused: {exc.reason}\n".encode())
        except BaseException as exc:
            os.write(2, f"child raised: {exc!r}\n".encode())
        finally:
            os._exit(0)
    leave.set()
    other.join(10)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        "the forked child hung on a request lock held by a thread it does not have"
    )
