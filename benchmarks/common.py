"""What every benchmark section shares: run settings, result tables and targets,
number formatting, the benchmark policies, and the timing loops.

Every per-call figure is the median, over interleaved batches, of the time per call
of a batch (:func:`interleaved`); each guarded figure is set against a bare call
measured in the same round robin (:class:`Pair`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    quick: bool
    batches: int  # timed batches per measurement (median taken)
    batch_ns: int  # target length of one batch
    compile_repeats: int
    cold_runs: int
    baseline: bool  # measure d2-sdk 1.2.2 (installing it when needed)

    @classmethod
    def make(cls, quick: bool, baseline: bool) -> Settings:
        if quick:
            return cls(True, 5, 3_000_000, 1, 3, False)
        return cls(False, 21, 25_000_000, 7, 15, baseline)


# -- reporting ---------------------------------------------------------------------------


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    align: str = ""  # one "l" or "r" per column; default: first left, the rest right
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        row = [str(c) for c in cells]
        self.rows.append(row + [""] * (len(self.headers) - len(row)))

    def _align(self) -> str:
        return self.align or "l" + "r" * (len(self.headers) - 1)

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            parts = [
                c.ljust(w) if a == "l" else c.rjust(w)
                for c, w, a in zip(cells, widths, self._align(), strict=True)
            ]
            return "  ".join(parts).rstrip()

        out = [self.title, "=" * len(self.title), line(self.headers)]
        out.append("  ".join("-" * w for w in widths))
        out += [line(r) for r in self.rows]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        rule = {"l": ":---", "r": "---:"}
        out = [f"### {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join(rule[a] for a in self._align()) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


@dataclass
class Target:
    name: str
    measured: str
    limit: str
    ok: bool | None  # None: not measured


def ns(value: float) -> str:
    return f"{value:,.0f} ns"


def ms(value_ns: float) -> str:
    return f"{value_ns / 1e6:,.1f} ms"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def mib(value: float) -> str:
    return f"{value / (1 << 20):,.1f} MiB"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


# -- policies ----------------------------------------------------------------------------

# Ten services, so a prefix pattern such as `billing:*` matches a tenth of the tools.
SERVICES = (
    "billing",
    "crm",
    "docs",
    "mail",
    "search",
    "calendar",
    "files",
    "analytics",
    "support",
    "infra",
)


def tool_ids(count: int) -> list[str]:
    """``billing:op0``, ``crm:op1``, ...: ten services, so ``svc:*`` patterns match."""
    return [f"{SERVICES[i % len(SERVICES)]}:op{i}" for i in range(count)]


def expires_soon(days: float = 6) -> str:
    """An RFC 3339 UTC time ``days`` ahead (local policies may be at most 7 days)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + days * 86400))


def make_document(
    n_tools: int, n_roles: int, extra: tuple[int, int] = (0, 0), seed: int = 7
) -> dict[str, Any]:
    """A policy naming ``n_tools`` distinct tool ids across ``n_roles`` roles.

    Every tool is granted by exact id to one role (round robin); each role also gets
    between ``extra[0]`` and ``extra[1]`` random exact ids. On top: two prefix
    wildcards (role0 ``billing:*``, role1 ``crm:*``), a tool group of ``docs:`` ids
    granted to role2, and an ``allow: false`` for the last role.
    """
    rng = random.Random(seed)
    tools = tool_ids(n_tools)
    roles = [f"role{r}" for r in range(n_roles)]
    perms: dict[str, list[Any]] = {r: [] for r in roles}
    for i, tool in enumerate(tools):
        perms[roles[i % n_roles]].append(tool)
    lo, hi = extra
    for role in roles:
        if hi:
            perms[role].extend(rng.sample(tools, rng.randint(lo, hi)))
    perms[roles[0]].append("billing:*")
    perms[roles[1 % n_roles]].append("crm:*")
    perms[roles[2 % n_roles]].append("@readonly_docs")
    perms[roles[-1]].append({"tool": tools[-1], "allow": False})
    readonly = [t for t in tools if t.startswith("docs:")][:20]
    return {
        "metadata": {
            "name": f"bench-{n_tools}-tools",
            "expires": expires_soon(),
            "tool_groups": {"readonly_docs": readonly},
        },
        "policies": [{"role": r, "permissions": perms[r]} for r in roles],
    }


# -- timing ------------------------------------------------------------------------------

Batch = Callable[[int], int]  # run n calls, return elapsed nanoseconds


def sync_batch(fn: Callable[[Any], Any], arg: Any, n: int) -> int:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in itertools.repeat(None, n):
        fn(arg)
    return clock() - t0


def raising_batch(fn: Callable[[Any], Any], exc: type[BaseException], n: int) -> int:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in itertools.repeat(None, n):
        try:  # not contextlib.suppress: it would add its own cost to each call
            fn(1)
        except exc:
            continue
    return clock() - t0


async def _async_loop(fn: Callable[[Any], Awaitable[Any]], n: int) -> int:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in itertools.repeat(None, n):
        await fn(1)
    return clock() - t0


def async_batch(
    loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Awaitable[Any]], n: int
) -> int:
    """Await ``fn`` n times inside a task of a running loop; only the loop is timed."""
    return loop.run_until_complete(_async_loop(fn, n))


def calibrate(batch: Batch, target_ns: int) -> int:
    """Calls per batch so that one batch takes about ``target_ns``."""
    n = 16
    while True:
        elapsed = batch(n)
        if elapsed >= target_ns // 8:
            return max(1, round(n * target_ns / elapsed))
        n *= 4


def interleaved(batches: dict[Any, Batch], settings: Settings) -> dict[Any, list[float]]:
    """Time per call (ns) of each batch function, one value per round.

    Each side gets its own calls-per-batch (so every batch lasts about
    ``settings.batch_ns``), then all sides run round robin for ``settings.batches``
    rounds, in alternating order: a slow spell of the machine hits every side alike
    instead of one whole measurement.
    """
    sizes = {key: calibrate(batch, settings.batch_ns) for key, batch in batches.items()}
    for key, batch in batches.items():
        batch(max(1, sizes[key] // 10))  # warm-up
    times: dict[Any, list[float]] = {key: [] for key in batches}
    keys = list(batches)
    for i in range(settings.batches):
        for key in keys if i % 2 == 0 else keys[::-1]:
            times[key].append(batches[key](sizes[key]) / sizes[key])
    return times


@dataclass(frozen=True)
class Pair:
    bare: float  # ns per call
    guarded: float

    @property
    def overhead(self) -> float:
        return self.guarded - self.bare

    @property
    def ratio(self) -> float:
        return self.guarded / self.bare
