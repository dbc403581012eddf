"""Guard overhead per call and its scaling with policy size.

For policies of 10, 1,000 and 10,000 tools (each its own instance, ``bench-<n>``),
a guarded sync call, a guarded async call, a denied call and the decision alone
(``Evaluator.check``), all in one round robin with the bare calls.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from d2 import (
    InMemorySource,
    Limits,
    PermissionDeniedError,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    is_allowed,
    set_user,
    shutdown_rbac,
)
from d2.core.evaluate import evaluator_for

from benchmarks.common import (
    Batch,
    Pair,
    Settings,
    Table,
    Target,
    async_batch,
    interleaved,
    make_document,
    ns,
    progress,
    raising_batch,
    ratio,
    sync_batch,
    tool_ids,
)

INSTANCE = "bench"  # instance names bench-<size>: nothing of the default instance is touched

SIZES = (10, 1_000, 10_000)
ROLES_FOR_SIZE = {10: 4, 1_000: 10, 10_000: 50}

TARGET_SYNC_NS = 1_000
TARGET_ASYNC_NS = 1_500
TARGET_DENY_NS = 3_000
TARGET_SCALING = 1.3


class BareDenied(Exception):
    """What the bare 'denied' function raises."""


def bare_sync(x: Any) -> Any:
    return x


async def bare_async(x: Any) -> Any:
    return x


def bare_raise(x: Any) -> Any:
    raise BareDenied(x)


@dataclass(frozen=True)
class Guarded:
    """One policy size, configured as its own instance, and its guarded functions."""

    n_tools: int
    n_roles: int
    instance: str
    tool_count: int
    allowed: Callable[[Any], Any]
    allowed_async: Callable[[Any], Awaitable[Any]]
    denied: Callable[[Any], Any]
    check: Callable[[str], Any]  # the instance's Evaluator.check
    allowed_id: str


def setup_size(n_tools: int) -> Guarded:
    """Configure instance ``bench-<n>`` with an ``n_tools`` policy and guard the bare
    functions with an allowed and a denied tool id (checked here)."""
    instance = f"{INSTANCE}-{n_tools}"
    n_roles = ROLES_FOR_SIZE[n_tools]
    manager = configure_rbac_sync(
        instance_name=instance,
        source=InMemorySource(make_document(n_tools, n_roles), name=f"<bench {n_tools} tools>"),
        limits=Limits.unlimited(),
    )
    assert manager.policy is not None
    tools = tool_ids(n_tools)
    allowed_id, denied_id = tools[1], tools[3]  # granted to role1 / to role3 only
    assert is_allowed(allowed_id, instance_name=instance), allowed_id
    assert not is_allowed(denied_id, instance_name=instance), denied_id
    guarded = Guarded(
        n_tools,
        n_roles,
        instance,
        manager.policy.tool_count,
        d2_guard(allowed_id, instance_name=instance)(bare_sync),
        d2_guard(allowed_id, instance_name=instance)(bare_async),
        d2_guard(denied_id, instance_name=instance)(bare_sync),
        evaluator_for(instance).check,
        allowed_id,
    )
    try:
        guarded.denied(1)
    except PermissionDeniedError as err:
        reason = err.reason
    else:
        raise AssertionError("the denied tool ran")
    assert reason == "not_granted", reason
    return guarded


@dataclass(frozen=True)
class SizeResult:
    n_tools: int
    n_roles: int
    tool_count: int
    sync: Pair
    async_: Pair
    deny: Pair
    deny_abs: float  # denied guarded call minus a bare (non-raising) call
    decision: float  # Evaluator.check per call


def measure_sizes(settings: Settings) -> tuple[list[SizeResult], list[float]]:
    """Every figure for every size, in one round robin (see :func:`interleaved`) so
    the sizes, the bare calls and the call kinds all see the same machine. Also
    returns the bare sync call's per-batch times (how steady the machine was)."""
    set_user("alice", roles=["role1", "role2"])
    loop = asyncio.new_event_loop()
    sizes: list[Guarded] = []
    try:
        sizes = [setup_size(n) for n in SIZES]
        partial = functools.partial
        batches: dict[Any, Batch] = {
            ("sync", "bare"): partial(sync_batch, bare_sync, 1),
            ("async", "bare"): partial(async_batch, loop, bare_async),
            ("deny", "bare"): partial(raising_batch, bare_raise, BareDenied),
        }
        for g in sizes:
            batches[("sync", g.n_tools)] = partial(sync_batch, g.allowed, 1)
            batches[("async", g.n_tools)] = partial(async_batch, loop, g.allowed_async)
            batches[("deny", g.n_tools)] = partial(raising_batch, g.denied, PermissionDeniedError)
            batches[("check", g.n_tools)] = partial(sync_batch, g.check, g.allowed_id)
        sync_batch(bare_sync, 1, 2_000_000 if settings.quick else 10_000_000)  # warm up
        gc.collect()
        progress(
            f"guard overhead: {len(batches)} call kinds x {settings.batches} rounds, interleaved"
        )
        times = interleaved(batches, settings)
    finally:
        loop.close()
        for g in sizes:
            shutdown_rbac(g.instance)
        clear_user_context()
    med = {key: statistics.median(values) for key, values in times.items()}
    results = [
        SizeResult(
            g.n_tools,
            g.n_roles,
            g.tool_count,
            Pair(med[("sync", "bare")], med[("sync", g.n_tools)]),
            Pair(med[("async", "bare")], med[("async", g.n_tools)]),
            Pair(med[("deny", "bare")], med[("deny", g.n_tools)]),
            deny_abs=med[("deny", g.n_tools)] - med[("sync", "bare")],
            decision=med[("check", g.n_tools)],
        )
        for g in sizes
    ]
    return results, times[("sync", "bare")]


def overhead_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    results, steadiness = measure_sizes(settings)

    calls = Table(
        "Guard overhead per call (medians)",
        ["policy", "call", "bare", "guarded", "overhead", "ratio"],
        align="llrrrr",
    )
    for r in results:
        size = f"{r.n_tools:,} tools / {r.n_roles} roles"
        for label, pair in (
            ("sync allowed", r.sync),
            ("async allowed (awaited)", r.async_),
            ("denied (raise + catch)", r.deny),
        ):
            calls.add(
                size, label, ns(pair.bare), ns(pair.guarded), ns(pair.overhead), ratio(pair.ratio)
            )
        calls.add(
            size,
            "denied vs a bare call",
            ns(r.sync.bare),
            ns(r.deny.guarded),
            ns(r.deny_abs),
            ratio(r.deny.guarded / r.sync.bare),
        )
    calls.notes += [
        "bare: the same function undecorated (sync: `def f(x): return x`; async: the "
        "`async def` awaited in a running loop; denied: a function raising and catching "
        "a plain exception). overhead = guarded - bare.",
        "'denied vs a bare call': the denied guarded call against the plain sync call "
        "(the whole cost of a refusal, exception included).",
        "each policy: exact-id grants for every tool (round robin over the roles), "
        "`billing:*` and `crm:*` prefix wildcards, a 20-tool group and one "
        "`allow: false`; the user has two roles.",
        f"all {len(results) * 4 + 3} series run round robin: {settings.batches} rounds of "
        f"~{settings.batch_ns / 1e6:g} ms batches. Steadiness of the machine: the bare sync "
        f"call took {ns(min(steadiness))} (fastest round), {ns(statistics.median(steadiness))} "
        f"(median), {ns(max(steadiness))} (slowest); when the median drifts far from the "
        "fastest, the machine was busy: rerun.",
    ]

    base = results[0]
    scaling = Table(
        "Scaling with policy size",
        ["policy", "tool ids", "decision", "vs 10 tools", "sync overhead", "vs 10 tools"],
    )
    for r in results:
        scaling.add(
            f"{r.n_tools:,} tools",
            f"{r.tool_count:,}",
            ns(r.decision),
            ratio(r.decision / base.decision),
            ns(r.sync.overhead),
            ratio(r.sync.overhead / base.sync.overhead),
        )
    scaling.notes.append(
        "decision: `Evaluator.check(tool_id)` alone (what the guard runs before the "
        "function), loop cost included; tool ids = distinct exact ids + prefix patterns."
    )

    worst = max(results, key=lambda r: r.sync.overhead)
    worst_async = max(results, key=lambda r: r.async_.overhead)
    worst_deny = max(results, key=lambda r: r.deny.overhead)
    largest = results[-1]
    targets = [
        Target(
            "sync allowed overhead (worst size)",
            ns(worst.sync.overhead),
            "<= 1,000 ns",
            worst.sync.overhead <= TARGET_SYNC_NS,
        ),
        Target(
            "async allowed overhead (worst size)",
            ns(worst_async.async_.overhead),
            "<= 1,500 ns",
            worst_async.async_.overhead <= TARGET_ASYNC_NS,
        ),
        Target(
            "denied overhead vs bare raise (worst size)",
            ns(worst_deny.deny.overhead),
            "<= 3,000 ns",
            worst_deny.deny.overhead <= TARGET_DENY_NS,
        ),
        Target(
            "decision, 10,000 vs 10 tools",
            ratio(largest.decision / base.decision),
            f"<= {TARGET_SCALING}x",
            largest.decision <= TARGET_SCALING * base.decision,
        ),
    ]
    return [calls, scaling], targets
