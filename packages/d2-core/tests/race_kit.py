"""Helpers of the tests that race calls of one request (threads, tasks, forks,
a slowed Redis): the admission race test and the review attack files."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from d2.core import d2_guard


def guarded_tool(name: str) -> Any:
    """A guarded sync tool ``name`` that returns its name (an optional ``to``)."""

    def tool(to: Any = None) -> str:
        return name

    tool.__name__ = name.replace(".", "_")
    return d2_guard(name)(tool)


def in_child(body: Callable[[], None], seconds: int = 5) -> int:
    """Fork; the child runs ``body`` under an alarm (a hang ends it by SIGALRM).
    Returns the child's wait status (killed after 20 s)."""
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(seconds)
        code = 0
        try:
            body()
        except BaseException as exc:
            os.write(2, f"child raised: {exc!r}\n".encode())
            code = 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -1
        time.sleep(0.05)


def pause_redis(url: str, millis: int) -> None:
    """Every write to the Redis at ``url`` waits ``millis`` (a loaded or distant one)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.execute_command("CLIENT", "PAUSE", str(millis), "WRITE")
    finally:
        client.close()
