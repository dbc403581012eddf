"""Compile time and memory of a large policy (10,000 tools x 1,000 roles), and the
cost of the per-tool rules memo."""

from __future__ import annotations

import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from d2 import Limits
from d2.core.policy import compile_policy, load_policy_bytes

from benchmarks.common import (
    Settings,
    Table,
    Target,
    make_document,
    mib,
    ms,
    ns,
    progress,
    tool_ids,
)

COMPILE_TOOLS, COMPILE_ROLES = 10_000, 1_000
TARGET_COMPILE_S = 1.0


def traced(fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """Run ``fn`` under tracemalloc: (result, peak bytes, retained bytes)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base, current - base


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time (ns) of ``fn()`` over ``repeats`` runs (gc on, as in real use)."""
    samples = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def compile_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    progress(f"compile, {COMPILE_TOOLS:,} tools x {COMPILE_ROLES:,} roles")
    document = make_document(COMPILE_TOOLS, COMPILE_ROLES, extra=(0, 40))
    data = json.dumps(document).encode()
    grants = sum(len(e["permissions"]) for e in document["policies"])
    unlimited = Limits.unlimited()
    tools = tool_ids(COMPILE_TOOLS)

    compile_ns = timed(lambda: compile_policy(document), settings.compile_repeats)
    load_ns = timed(
        lambda: load_policy_bytes(data, "<bench>.json", unlimited), settings.compile_repeats
    )
    policy, peak, retained = traced(lambda: compile_policy(document))

    def fill() -> None:
        for tool in tools:
            policy.rules_for(tool)

    memo_fill_ns = timed(fill, 1)  # the first decision of every tool fills the memo
    memo_hit_ns = timed(fill, max(3, settings.compile_repeats))
    fresh = compile_policy(document)

    def fill_fresh() -> None:
        for tool in tools:
            fresh.rules_for(tool)

    _, _, memo_bytes = traced(fill_fresh)
    assert len(policy.concrete_tools) == COMPILE_TOOLS

    table = Table("Compile time and memory", ["what", "median", "note"], align="lrl")
    table.add(
        "compile_policy(document)",
        ms(compile_ns),
        f"{COMPILE_TOOLS:,} tools, {COMPILE_ROLES:,} roles, {grants:,} grants",
    )
    table.add(
        "load_policy_bytes(JSON)",
        ms(load_ns),
        f"parse + compile + limits, {len(data) / 1024:,.0f} KiB of JSON",
    )
    table.add("compile: peak traced memory", mib(peak), "tracemalloc, above the document")
    table.add("compile: retained memory", mib(retained), "the CompiledPolicy (document excluded)")
    table.add(
        "first decision per tool (memo fill)",
        ns(memo_fill_ns / COMPILE_TOOLS),
        f"rules_for() over all {COMPILE_TOOLS:,} ids once",
    )
    table.add(
        "later decisions per tool (memo hit)",
        ns(memo_hit_ns / COMPILE_TOOLS),
        "rules_for() again, same ids",
    )
    table.add("memo for all tools: retained memory", mib(memo_bytes), "one ToolRules per id")
    table.notes.append(
        f"compile times: median of {settings.compile_repeats} run(s), gc enabled; "
        "memory: one traced run."
    )
    targets = [
        Target(
            "compile 10,000 tools x 1,000 roles",
            ms(compile_ns),
            "<= 1,000 ms",
            compile_ns <= TARGET_COMPILE_S * 1e9,
        )
    ]
    return [table], targets
