"""The twenty-fourth hostile review: calls of one request that overlap in threads.

The twenty-third review made a call whose store work was in flight be judged again
when its request recorded another call meanwhile. Threads of one request
(``submit_with_context``, ``run_in_thread``, a framework running an agent's
parallel tool calls in a pool) need no store to overlap: a thread can be
preempted between steps 5-6 (sequences, data flow) and step 7 (recording the
call), where the decision log's observer runs, and the other thread's call is
judged on a history that lacks the first one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from d2.core import PermissionDeniedError, d2_guard, set_user
from d2.core.threads import submit_with_context

# what an agent passes a tool: a list of records (the decision log records it)
_ITEMS = [{"k": i, "v": str(i)} for i in range(2000)]


def _both_ran(first: Any, second: Any, trials: int) -> int:
    """Call ``first`` and ``second`` at once from two threads of one request,
    ``trials`` times (a new request each time); how often both ran."""
    both = 0
    with ThreadPoolExecutor(2) as pool:
        for trial in range(trials):
            set_user(f"u-{trial}", roles=["r"])
            start = threading.Barrier(2)

            def call(tool: Any, start: threading.Barrier = start) -> bool:
                start.wait()
                try:
                    tool(_ITEMS)
                except PermissionDeniedError:
                    return False
                return True

            one = submit_with_context(pool, call, first)
            two = submit_with_context(pool, call, second)
            if one.result() and two.result():
                both += 1
    return both


def _tools(*names: str) -> list[Any]:
    made = []
    for name in names:

        def tool(items: list[Any], name: str = name) -> str:
            return name

        tool.__name__ = name
        made.append(d2_guard(name)(tool))
    return made


def test_a_sequence_holds_for_calls_of_one_request_in_two_threads(
    configure: Any, tmp_path: Path
) -> None:
    # a and b may never both run in one request, in either order
    configure(
        {"role": "r", "permissions": ["a", "b"],
         "sequence": [{"deny": ["a", "b"]}, {"deny": ["b", "a"]}]},
        decision_log=str(tmp_path / "decisions.jsonl"),
        decision_log_arguments=True,
    )  # fmt: skip
    a, b = _tools("a", "b")
    assert _both_ran(a, b, 30) == 0


def test_a_data_flow_block_holds_for_calls_of_one_request_in_two_threads(
    configure: Any, tmp_path: Path
) -> None:
    # whichever runs first, the other is refused: send after read (the label), read
    # after send (a sequence); both running means one of them was judged on a
    # history that lacked the other
    configure(
        {"role": "r", "permissions": ["read", "send"], "sequence": [{"deny": ["send", "read"]}]},
        metadata={"data_flow": {"labels": {"read": ["SECRET"]}, "blocks": {"SECRET": ["send"]}}},
        decision_log=str(tmp_path / "decisions.jsonl"),
        decision_log_arguments=True,
    )
    read, send = _tools("read", "send")
    assert _both_ran(read, send, 30) == 0


def test_the_same_calls_without_overlap_are_refused(configure: Any, tmp_path: Path) -> None:
    # control: the policy refuses the second call when the calls do not overlap
    configure(
        {"role": "r", "permissions": ["a", "b"],
         "sequence": [{"deny": ["a", "b"]}, {"deny": ["b", "a"]}]},
        decision_log=str(tmp_path / "decisions.jsonl"),
        decision_log_arguments=True,
    )  # fmt: skip
    a, b = _tools("a", "b")
    set_user("u-calm", roles=["r"])
    with ThreadPoolExecutor(1) as pool:
        assert submit_with_context(pool, a, _ITEMS).result() == "a"
        error = submit_with_context(pool, b, _ITEMS).exception()
    assert isinstance(error, PermissionDeniedError)
    assert error.reason == "sequence_violation"


async def test_an_audited_sequence_rule_completed_while_the_store_answered_is_reported(
    configure: Any, redis_url: str
) -> None:
    # an audited rule only reports: the call that completes it runs, but the
    # decision log must say enforce would have refused it, also when the call that
    # completed it was admitted while this one's budget take was in flight
    import asyncio

    import redis

    records: list[dict[str, Any]] = []
    configure(
        {"role": "r",
         "permissions": [{"tool": "read", "limits": [{"max": 100, "per": "user", "window": "1d"}]},
                         "write"],
         "sequence": [{"deny": ["write", "read"], "audit": True}]},
        store=redis_url,
        decision_log=records.append,
    )  # fmt: skip

    async def read_body() -> str:
        return "read"

    async def write_body() -> str:
        return "write"

    read = d2_guard("read")(read_body)
    write = d2_guard("write")(write_body)
    set_user("u-audit", roles=["r"])
    client = redis.Redis.from_url(redis_url)
    try:
        client.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    finally:
        client.close()
    first = asyncio.ensure_future(read())
    await asyncio.sleep(0.1)
    assert await write() == "write"
    assert await first == "read"  # audited: it runs
    from d2.core.decisionlog import DecisionLog
    from d2.core.evaluate import evaluator_for

    log = evaluator_for("default").log
    assert isinstance(log, DecisionLog)
    log.flush()
    decided = [(r["tool_id"], r["decision"]) for r in records]
    assert ("read", "would_deny") in decided, decided
