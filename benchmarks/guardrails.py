"""Guardrails: what a call pays for the layers beyond RBAC (POLICY.md steps 4-8).

- input rules: a grant with three argument rules, called with arguments that pass;
- sequence rules: 50 deny rules of one role, checked against a request whose history
  already holds 1,000 (or 10,000) allowed calls;
- output sanitizing: a tool returning a ~1 MB nested result, ``filter`` and ``redact``
  rules on every item, set against ``json.dumps`` of the same value.

Each against a bare call with the same arguments, all in one round robin. The
workload (policies, data, guarded tools) is in ``guardrails_setup``.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from d2 import clear_user_context, set_user, shutdown_rbac

from benchmarks.common import (
    Batch,
    Pair,
    Settings,
    Table,
    Target,
    interleaved,
    ms,
    ns,
    progress,
    ratio,
    sync_batch,
)
from benchmarks.guardrails_setup import (
    CALL,
    HISTORIES,
    HISTORY_TOOLS,
    INSTANCE,
    ITEMS,
    ROLES,
    SEQ_INSTANCE,
    TIMED,
    USER,
    bare_sync,
    lookup,
    setup,
)

CHUNK = 1_000  # timed calls per request: the history grows by at most this much

TARGET_INPUT_NS = 3_000
TARGET_SEQUENCE_NS = 3_000
TARGET_HISTORY = 1.3
TARGET_SANITIZE = 2.0


def kwargs_batch(fn: Callable[..., Any], kwargs: dict[str, Any], n: int) -> int:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in itertools.repeat(None, n):
        fn(**kwargs)
    return clock() - t0


def history_batch(prefill: list[Callable[[Any], Any]], tool: Callable[[Any], Any], n: int) -> int:
    """``n`` timed calls of ``tool``, in requests of at most :data:`CHUNK` calls,
    each request first filled (untimed) with the calls of ``prefill``."""
    clock = time.perf_counter_ns
    total = 0
    while n > 0:
        k = min(n, CHUNK)
        set_user(USER, roles=ROLES)  # a new request: empty history
        for fn in prefill:
            fn(1)
        t0 = clock()
        for _ in itertools.repeat(None, k):
            tool(1)
        total += clock() - t0
        n -= k
    return total


def guardrails_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    try:
        s = setup()
        partial = functools.partial
        batches: dict[Any, Batch] = {
            ("input", "bare"): partial(kwargs_batch, lookup, CALL),
            ("input", "guarded"): partial(kwargs_batch, s.lookup, CALL),
            ("sequence", "bare"): partial(sync_batch, bare_sync, 1),
            ("output", "bare"): partial(sync_batch, s.fetch, 1),
            ("output", "guarded"): partial(sync_batch, s.export, 1),
            ("output", "json"): partial(sync_batch, json.dumps, s.value),
        }
        for h in HISTORIES:
            batches[("sequence", h)] = partial(history_batch, s.prefills[h], s.timed)
        gc.collect()
        progress(f"guardrails: {len(batches)} call kinds x {settings.batches} rounds, interleaved")
        times = interleaved(batches, settings)
    finally:
        clear_user_context()
        shutdown_rbac(INSTANCE)
        shutdown_rbac(SEQ_INSTANCE)
    med = {key: statistics.median(values) for key, values in times.items()}
    size = len(json.dumps(s.value))

    calls = Table(
        "Guardrails per call (medians)",
        ["guardrail", "call", "bare", "guarded", "overhead", "ratio"],
        align="llrrrr",
    )
    inputs = Pair(med[("input", "bare")], med[("input", "guarded")])
    seqs = {h: Pair(med[("sequence", "bare")], med[("sequence", h)]) for h in HISTORIES}
    sanitize = Pair(med[("output", "bare")], med[("output", "guarded")])
    dumps = med[("output", "json")]
    rows = [("input rules (3)", "arguments that pass", inputs)]
    rows += [("sequence (50 rules)", f"after {h:,} calls", seqs[h]) for h in HISTORIES]
    for label, call, pair in rows:
        calls.add(
            label, call, ns(pair.bare), ns(pair.guarded), ns(pair.overhead), ratio(pair.ratio)
        )
    named, last = s.mentions
    calls.notes += [
        "input rules: `customer_id: {type: string, matches: '^c_[0-9]+$'}`, "
        "`limit: {type: int, min: 1, max: 100}`, `mode: {in: [fast, full]}` on the grant; "
        "bare and guarded called with the same keyword arguments.",
        f"sequence: one role, 50 deny rules of 2-3 steps (tool ids and an @egress group); "
        f"the timed tool {TIMED!r} is a step of {named} rules (the last of {last}). Each "
        f"request is filled (untimed) with {' or '.join(f'{h:,}' for h in HISTORIES)} "
        f"allowed calls of {len(HISTORY_TOOLS)} tools, then timed for at most {CHUNK:,} "
        "calls (which join the history); bare: the same function undecorated.",
    ]

    out = Table(
        f"Output sanitizing, ~{size / 1e6:.1f} MB result (medians)",
        ["what", "median", "note"],
        align="lrl",
    )
    out.add("bare call", ns(sanitize.bare), "the tool returns the pre-built value")
    out.add("guarded call", ms(sanitize.guarded), "check + output rules on every item")
    out.add("sanitize (guarded - bare)", ms(sanitize.overhead), f"{ITEMS:,} items")
    out.add("sanitize per item", ns(sanitize.overhead / ITEMS), "")
    out.add("json.dumps(value)", ms(dumps), f"{size:,} bytes, same value, same run")
    out.add("sanitize / json.dumps", ratio(sanitize.overhead / dumps), "")
    out.notes.append(
        "output rules: `items.ssn: {action: filter}` and "
        "`items.notes: {matches: '\\d{3}-\\d{2}-\\d{4}', action: redact}`; every item has "
        "both fields, so every item is copied."
    )

    worst = max(seqs.values(), key=lambda p: p.overhead)
    lo, hi = seqs[HISTORIES[0]], seqs[HISTORIES[-1]]
    targets = [
        Target(
            "input rules (3), added per passing call",
            ns(inputs.overhead),
            "<= 3,000 ns",
            inputs.overhead <= TARGET_INPUT_NS,
        ),
        Target(
            "sequence check, 50 rules (worst history)",
            ns(worst.overhead),
            "<= 3,000 ns",
            worst.overhead <= TARGET_SEQUENCE_NS,
        ),
        Target(
            "sequence check, 10,000 vs 1,000 calls of history",
            ratio(hi.overhead / lo.overhead),
            f"<= {TARGET_HISTORY}x",
            hi.overhead <= TARGET_HISTORY * lo.overhead,
        ),
        Target(
            "sanitize ~1 MB result vs json.dumps",
            f"{ratio(sanitize.overhead / dumps)} ({ms(sanitize.overhead)} vs {ms(dumps)})",
            f"<= {TARGET_SANITIZE}x",
            sanitize.overhead <= TARGET_SANITIZE * dumps,
        ),
    ]
    return [calls, out], targets
