"""The guardrails workload: its two policies, the ~1 MB result, the guarded tools,
and a check that every guardrail really acts (so the timings measure working rules).

- ``bench-guardrails``: ``crm.lookup`` with three input rules; ``reports.export`` with
  output rules (``filter`` and ``redact`` on every item of a ~1 MB result).
- ``bench-guardrails-seq``: one role with 50 sequence deny rules. A separate instance,
  because a policy with sequence rules records the history of every call it guards,
  which would weigh on the input figure.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from d2 import (
    InMemorySource,
    Limits,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
    set_user,
)

from benchmarks.common import expires_soon

INSTANCE, SEQ_INSTANCE = "bench-guardrails", "bench-guardrails-seq"
USER, ROLES = "agent-7", ["agent"]
HISTORIES = (1_000, 10_000)  # allowed calls in the request before the timed ones
ITEMS = 5_400  # items of the ~1 MB result

# Sequence policy: the timed tool, tools called in the history, tools never called.
TIMED = "crm.lookup"
SOURCES = ("db.query_users", "db.query_orders", "db.query_invoices", "files.read",
           "kb.search", "calendar.list", "tickets.read")  # fmt: skip
EGRESS = ("http.request", "email.send", "slack.post", "s3.upload")
NEVER = ("secrets.get", "admin.reset", "vault.read", "shell.exec")
OTHERS = ("weather.get", "math.eval", "time.now", "translate.text")  # in no rule
HISTORY_TOOLS = (*SOURCES, *OTHERS, TIMED)  # what the history is filled with

CALL: dict[str, Any] = {"customer_id": "c_12345", "limit": 25, "mode": "full"}


def lookup(customer_id: str, limit: int = 10, mode: str = "fast") -> str:
    return customer_id


def bare_sync(x: Any) -> Any:
    return x


def io_document() -> dict[str, Any]:
    """Three input rules on ``crm.lookup``; output rules on ``reports.export``."""
    return {
        "metadata": {"name": "bench-guardrails", "expires": expires_soon()},
        "policies": [{"role": "agent", "permissions": [
            {"tool": "crm.lookup", "conditions": {"input": {
                "customer_id": {"type": "string", "matches": "^c_[0-9]+$"},
                "limit": {"type": "int", "min": 1, "max": 100},
                "mode": {"in": ["fast", "full"]},
            }}},
            {"tool": "reports.export", "conditions": {"output": {
                "items.ssn": {"action": "filter"},
                "items.notes": {"matches": r"\d{3}-\d{2}-\d{4}", "action": "redact"},
            }}},
        ]}],
    }  # fmt: skip


def sequence_rules(seed: int = 5) -> list[dict[str, Any]]:
    """50 deny rules of 2-3 steps over tool ids and ``@egress``. None of them can
    complete in the benchmark: each has a step that is never called (an egress or
    a NEVER tool), so every call of the history and every timed call is allowed."""
    rng = random.Random(seed)
    called = (*SOURCES, TIMED)
    pairs = [(a, b) for a in called for b in called if a != b]
    rules: list[list[str]] = [[s, "@egress"] for s in called]  # 8
    rules += [[a, b, "@egress"] for a, b in rng.sample(pairs, 16)]  # 16
    rules += [[n, TIMED] for n in NEVER]  # 4: TIMED last, never completed
    rules += [[n, rng.choice(SOURCES), TIMED] for n in NEVER]  # 4
    rules += [[n, "@egress"] for n in NEVER]  # 4
    rules += [[rng.choice(called), rng.choice(NEVER)] for _ in range(6)]  # 6
    rules += [[rng.choice(NEVER), rng.choice(SOURCES)] for _ in range(4)]  # 4
    rules += [[rng.choice(NEVER), a, b] for a, b in rng.sample(pairs, 4)]  # 4
    assert len(rules) == 50
    return [{"deny": r, "reason": f"rule {i}"} for i, r in enumerate(rules)]


def sequence_document() -> dict[str, Any]:
    tools = [*SOURCES, TIMED, *NEVER, *OTHERS]
    return {
        "metadata": {
            "name": "bench-guardrails-seq",
            "expires": expires_soon(),
            "tool_groups": {"egress": list(EGRESS)},
        },
        "policies": [
            {"role": "agent", "permissions": [*tools, "@egress"], "sequence": sequence_rules()}
        ],
    }


def big_result(items: int = ITEMS) -> dict[str, Any]:
    """A nested result of about 1 MB of JSON; every item has an SSN and a note with
    an SSN-like number in it."""
    return {
        "items": [
            {
                "id": i,
                "name": f"Customer {i:05d}",
                "ssn": "123-45-6789",
                "notes": f"Renewal due in {i % 12 + 1} months; call 555-12-3456 before "
                "the end of the quarter.",
                "tags": ["vip", "emea", f"segment-{i % 7}"],
            }
            for i in range(items)
        ],
        "count": items,
    }


def denial(call: Callable[[], Any]) -> str:
    """The reason ``call()`` is denied with (it must be)."""
    try:
        call()
    except PermissionDeniedError as err:
        return err.reason
    raise AssertionError(f"{call} was allowed")


@dataclass(frozen=True)
class Setup:
    lookup: Callable[..., Any]  # input rules
    timed: Callable[[Any], Any]  # sequence rules
    prefills: dict[int, list[Callable[[Any], Any]]]
    fetch: Callable[[Any], Any]  # bare: returns the ~1 MB value
    export: Callable[[Any], Any]  # guarded fetch, output rules
    value: dict[str, Any]
    mentions: tuple[int, int]  # rules naming TIMED, and of those where it is last


def setup() -> Setup:
    """Configure both instances, guard the functions and check that each guardrail
    does what it should (so the timings measure working rules)."""
    unlimited = Limits.unlimited()
    for name, doc in ((INSTANCE, io_document()), (SEQ_INSTANCE, sequence_document())):
        configure_rbac_sync(instance_name=name, source=InMemorySource(doc), limits=unlimited)
    set_user(USER, roles=ROLES)

    guarded_lookup = d2_guard("crm.lookup", instance_name=INSTANCE)(lookup)
    assert guarded_lookup(**CALL) == CALL["customer_id"]
    bad = functools.partial(guarded_lookup, customer_id="x", limit=500, mode="slow")
    assert denial(bad) == "input_validation"

    def guard(tool_id: str) -> Callable[[Any], Any]:
        return d2_guard(tool_id, instance_name=SEQ_INSTANCE)(bare_sync)

    pool = [guard(t) for t in HISTORY_TOOLS]
    timed = pool[-1]
    rng = random.Random(3)
    prefills = {h: [rng.choice(pool) for _ in range(h)] for h in HISTORIES}
    for fn in prefills[HISTORIES[0]]:  # all allowed (a denial raises)
        fn(1)
    assert denial(functools.partial(guard(EGRESS[0]), 1)) == "sequence_violation"

    value = big_result()
    before = json.dumps(value)

    def fetch(x: Any) -> Any:
        return value

    export = d2_guard("reports.export", instance_name=INSTANCE)(fetch)
    out = export(1)["items"]
    assert len(out) == ITEMS and all("ssn" not in item for item in out)
    assert all("555-12-3456" not in item["notes"] for item in out)
    assert json.dumps(value) == before, "the tool's value was changed"

    rules = [r["deny"] for r in sequence_rules()]
    mentions = (sum(TIMED in r for r in rules), sum(r[-1] == TIMED for r in rules))
    set_user(USER, roles=ROLES)
    return Setup(guarded_lookup, timed, prefills, fetch, export, value, mentions)
