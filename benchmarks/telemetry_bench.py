"""Telemetry: what OpenTelemetry metrics cost a guarded call, and that turning them
off costs nothing.

A sync allowed call under an RBAC-only policy (the 10-tool policy of ``overhead``),
each configuration on its own instance (``bench-telemetry-*``), all in one round
robin with the bare call:

- (a) ``D2_TELEMETRY=off``: configured with it set; no timer, no observer;
- (b) no OpenTelemetry: configured while ``import opentelemetry`` fails
  (``sys.modules["opentelemetry"] = None``), as in a process without it installed;
- (c) metrics on: :class:`d2.core.telemetry.Metrics` on an SDK ``MeterProvider`` with
  an ``InMemoryMetricReader``, attached as ``evaluator.timer`` and an observer;
- (d) (reference) the same hooks on the API's no-op meter: what D2's timed path
  costs when no SDK records anything;

plus each ``Metrics`` hook alone. (a) and (b) are also measured in child processes,
alternating: one whose app set an SDK meter provider and runs with
``D2_TELEMETRY=off``, one where the import of ``opentelemetry`` is blocked.

This section imports the OpenTelemetry SDK into the benchmark process, so it is
registered last in ``run.py``: sections that configure instances in-process run
before it. It sets no global meter provider and leaves ``d2.core.telemetry`` as it
found it.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import d2
import d2.core.telemetry as d2_telemetry
from d2 import (
    InMemorySource,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    set_user,
    shutdown_rbac,
)
from d2.core.evaluate import Evaluator, evaluator_for
from d2.core.telemetry import Metrics

from benchmarks.baseline import child_env, run_ok, tail
from benchmarks.common import (
    ROOT,
    Batch,
    Pair,
    Settings,
    Table,
    Target,
    interleaved,
    make_document,
    ns,
    progress,
    ratio,
    sync_batch,
    tool_ids,
)

INSTANCE = "bench-telemetry"  # instances bench-telemetry-<config>
N_TOOLS, N_ROLES = 10, 4
ROLES = ["role1", "role2"]
ALLOWED = tool_ids(N_TOOLS)[1]  # granted to role1

TARGET_OFF_RATIO = 1.1  # (a) vs (b): overhead within 1.1x ...
TARGET_OFF_NS = 30  # ... or within 30 ns
TARGET_METRICS_NS = 2_000  # (c) over (a), per call

# Run in a child process: argv = mode ("off" | "none"), batches, ns per batch, and a
# JSON object: n_tools, n_roles, tool, roles. Prints the medians (ns per call) of the
# bare and the guarded call as JSON.
CHILD_SCRIPT = """\
import json, os, sys
mode, batches, batch_ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
job = json.loads(sys.argv[4])
if mode == "none":
    sys.modules["opentelemetry"] = None  # as if it were not installed
else:  # an app using OpenTelemetry, with D2_TELEMETRY=off
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    metrics.set_meter_provider(MeterProvider())
    assert os.environ["D2_TELEMETRY"] == "off"
sys.path.insert(0, os.getcwd())
import statistics
from d2 import InMemorySource, configure_rbac_sync, d2_guard, set_user
from d2.core.evaluate import evaluator_for
from benchmarks.common import Settings, interleaved, make_document, sync_batch
configure_rbac_sync(source=InMemorySource(make_document(job["n_tools"], job["n_roles"])))
ev = evaluator_for("default")
assert ev.timer is None and ev.observers == () and ev.observer is None
if mode == "none":
    try:
        import opentelemetry.metrics
    except ImportError:
        pass
    else:
        raise AssertionError("opentelemetry importable")
def bare(x):
    return x
tool = d2_guard(job["tool"])(bare)
set_user("alice", roles=job["roles"])
assert tool(1) == 1
settings = Settings(False, batches, batch_ns, 1, 1, False)
times = interleaved({"bare": lambda n: sync_batch(bare, 1, n),
                     "guarded": lambda n: sync_batch(tool, 1, n)}, settings)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""
CHILD_JOB = json.dumps({"n_tools": N_TOOLS, "n_roles": N_ROLES, "tool": ALLOWED, "roles": ROLES})


def bare_sync(x: Any) -> Any:
    return x


@contextmanager
def environ(**changes: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for the block."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def opentelemetry_blocked() -> Iterator[None]:
    """``import opentelemetry`` fails in the block, as if it were not installed;
    ``D2_TELEMETRY`` unset (the default, ``all``). What ``get_metrics`` remembers
    (it tries once per process) is put back afterwards."""
    missing = object()
    saved_module = sys.modules.get("opentelemetry", missing)
    saved_state = (d2_telemetry._metrics, d2_telemetry._tried)
    d2_telemetry._metrics, d2_telemetry._tried = None, False
    sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    try:
        with environ(D2_TELEMETRY=None, OTEL_EXPORTER_OTLP_ENDPOINT=None):
            yield
    finally:
        if saved_module is missing:
            sys.modules.pop("opentelemetry", None)
        else:
            sys.modules["opentelemetry"] = saved_module  # type: ignore[assignment]
        d2_telemetry._metrics, d2_telemetry._tried = saved_state


def configure(config: str) -> tuple[Evaluator, Callable[[Any], Any]]:
    """Instance ``bench-telemetry-<config>`` with the 10-tool policy, and the bare
    function guarded by it (checked: allowed, no telemetry attached yet)."""
    instance = f"{INSTANCE}-{config}"
    configure_rbac_sync(
        instance_name=instance,
        source=InMemorySource(make_document(N_TOOLS, N_ROLES), name=f"<{instance}>"),
    )
    evaluator = evaluator_for(instance)
    assert evaluator.timer is None and evaluator.observers == (), config
    assert evaluator.observer is None, config
    return evaluator, d2_guard(ALLOWED, instance_name=instance)(bare_sync)


def attach(evaluator: Evaluator, metrics: Metrics) -> None:
    evaluator.timer = metrics
    evaluator.add_observer(metrics.observe)


def detach(evaluator: Evaluator, metrics: Metrics) -> None:
    evaluator.remove_observer(metrics.observe)
    evaluator.timer = None


def recorded(reader: Any) -> dict[str, int]:
    """Data points per instrument name collected by ``reader`` (counts summed)."""
    out: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "count", None)
                    if value is None:
                        value = point.value
                    out[metric.name] = out.get(metric.name, 0) + int(value)
    return out


@dataclass(frozen=True)
class InProcess:
    pairs: dict[str, Pair]  # config -> bare vs guarded
    hooks: dict[str, float]  # Metrics hook -> ns per call
    points: dict[str, int]
    steadiness: list[float]


def measure_in_process(settings: Settings) -> InProcess:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    set_user("alice", roles=ROLES)
    # Not the global provider. The hooks timed alone record into a provider of their
    # own, so ``reader`` sees exactly the guarded calls of (c).
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics(provider.get_meter("d2", d2.__version__))
    hook_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    hook_metrics = Metrics(hook_provider.get_meter("d2", d2.__version__))
    noop = Metrics(NoOpMeterProvider().get_meter("d2"))
    attached: list[tuple[Evaluator, Metrics]] = []
    configs = ("off", "none", "metrics", "noop")
    try:
        with environ(D2_TELEMETRY="off"):
            _, off = configure("off")
        with opentelemetry_blocked():
            _, none = configure("none")
            assert d2_telemetry._tried, "get_metrics did not try the (blocked) import"
        with environ(D2_TELEMETRY="off"):
            ev_metrics, on = configure("metrics")
            ev_noop, on_noop = configure("noop")
        for evaluator, m in ((ev_metrics, metrics), (ev_noop, noop)):
            attach(evaluator, m)
            attached.append((evaluator, m))
        for fn in (off, none, on, on_noop):
            assert fn(1) == 1
        assert recorded(reader).get("d2.decisions") == 1, recorded(reader)

        ctx = get_user_context()
        partial = functools.partial
        batches: dict[Any, Batch] = {"bare": partial(sync_batch, bare_sync, 1)}
        for config, fn in zip(configs, (off, none, on, on_noop), strict=True):
            batches[config] = partial(sync_batch, fn, 1)
        hooks = hook_metrics
        batches["observe"] = partial(sync_batch, partial(hooks.observe, ALLOWED, ctx), None)
        batches["decided"] = partial(sync_batch, partial(hooks.decided, ALLOWED), 2e-7)
        batches["ran"] = partial(sync_batch, partial(hooks.ran, ALLOWED), 3e-8)
        sync_batch(bare_sync, 1, 2_000_000 if settings.quick else 10_000_000)  # warm up
        gc.collect()
        progress(f"telemetry: {len(batches)} call kinds x {settings.batches} rounds, interleaved")
        times = interleaved(batches, settings)
        points = recorded(reader)
        # decisions are all counted; durations are sampled (one call in SAMPLE)
        calls = ("d2.decisions", "d2.decision.duration", "d2.tool.duration")
        assert all(points.get(name, 0) > 0 for name in calls), points
    finally:
        for evaluator, m in attached:
            detach(evaluator, m)
        for config in configs:
            shutdown_rbac(f"{INSTANCE}-{config}")
        clear_user_context()
        provider.shutdown()
        hook_provider.shutdown()
    med = {key: statistics.median(values) for key, values in times.items()}
    return InProcess(
        {config: Pair(med["bare"], med[config]) for config in configs},
        {hook: med[hook] for hook in ("observe", "decided", "ran")},
        points,
        times["bare"],
    )


def measure_children(settings: Settings) -> tuple[dict[str, Pair], int]:
    """(a) and (b) in child processes, alternating; medians over the runs."""
    runs = 1 if settings.quick else 3
    found: dict[str, list[Pair]] = {"off": [], "none": []}
    progress(f"telemetry: {runs * 2} child processes, (a) and (b) alternating")
    for i in range(runs):
        for mode in ("off", "none") if i % 2 == 0 else ("none", "off"):
            argv = [mode, str(settings.batches), str(settings.batch_ns // 2), CHILD_JOB]
            done = run_ok(
                [sys.executable, "-c", CHILD_SCRIPT, *argv],
                env=child_env(D2_TELEMETRY="off") if mode == "off" else child_env(),
                cwd=str(ROOT),
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"telemetry child ({mode}) failed: {tail(done.stderr, 8)}")
            medians = json.loads(done.stdout.strip().splitlines()[-1])
            found[mode].append(Pair(float(medians["bare"]), float(medians["guarded"])))
    return {
        mode: Pair(
            statistics.median(p.bare for p in pairs), statistics.median(p.guarded for p in pairs)
        )
        for mode, pairs in found.items()
    }, runs


def off_vs_none(off: Pair, none: Pair) -> tuple[str, bool]:
    diff = off.overhead - none.overhead
    ok = off.overhead <= TARGET_OFF_RATIO * none.overhead or diff <= TARGET_OFF_NS
    return (
        f"{ns(off.overhead)} vs {ns(none.overhead)} "
        f"({ratio(off.overhead / none.overhead)}, {diff:+,.0f} ns)",
        ok,
    )


def telemetry_section(settings: Settings) -> tuple[list[Table], list[Target]]:
    inproc = measure_in_process(settings)
    children, runs = measure_children(settings)
    pairs = inproc.pairs
    off = pairs["off"]

    calls = Table(
        "Telemetry overhead per call, sync allowed, RBAC only (medians)",
        ["configuration", "where", "bare", "guarded", "overhead", "vs (a)"],
        align="llrrrr",
    )
    rows = [
        ("(a) D2_TELEMETRY=off", "in-process", pairs["off"], off),
        ("(b) no OpenTelemetry (import blocked)", "in-process", pairs["none"], off),
        ("(c) metrics on, SDK + InMemoryMetricReader", "in-process", pairs["metrics"], off),
        ("(d) metrics on, API no-op meter (reference)", "in-process", pairs["noop"], off),
        ("(a) D2_TELEMETRY=off, app's SDK provider set", "child process", children["off"], None),
        ("(b) no OpenTelemetry (import blocked)", "child process", children["none"], None),
    ]
    for label, where, pair, ref in rows:
        versus = "-" if ref is None or pair is ref else f"{pair.guarded - ref.guarded:+,.0f} ns"
        calls.add(label, where, ns(pair.bare), ns(pair.guarded), ns(pair.overhead), versus)
    calls.notes += [
        f"policy: the {N_TOOLS}-tool policy of the overhead section (no conditions); tool "
        f"{ALLOWED!r}, user with roles {ROLES}; each configuration its own instance; "
        "bare: the same function undecorated. vs (a): guarded call minus (a)'s guarded "
        "call in the same round robin (in-process rows only; compare the child rows by "
        "their overheads, each against the bare call of its own process).",
        "(c): `Metrics(MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter(...))`"
        " attached as `evaluator.timer = m; evaluator.add_observer(m.observe)`; per call it "
        "records d2.decisions (counter, 3 attributes), d2.decision.duration and "
        "d2.tool.duration (histograms, 1 attribute). (d): the same on "
        "`NoOpMeterProvider().get_meter(...)`: D2's timing and hook calls with instruments "
        "that record nothing.",
        f"in-process rows: one round robin of {len(pairs) + 4} series (with the hooks "
        f"below), {settings.batches} rounds of ~{settings.batch_ns / 1e6:g} ms. Child rows: "
        f"median over {runs} run(s) of each child, alternating, each {settings.batches} "
        f"rounds of ~{settings.batch_ns / 2e6:g} ms batches of its own bare and guarded call.",
        f"steadiness: the bare call took {ns(min(inproc.steadiness))} (fastest round), "
        f"{ns(statistics.median(inproc.steadiness))} (median), "
        f"{ns(max(inproc.steadiness))} (slowest).",
    ]

    hooks = Table(
        "Metrics hooks alone, OpenTelemetry SDK (medians)",
        ["hook", "records", "per call"],
        align="llr",
    )
    per_hook = inproc.hooks
    hooks.add("observe(tool, ctx, None)", "d2.decisions (3 attributes)", ns(per_hook["observe"]))
    hooks.add("decided(tool, seconds)", "d2.decision.duration (tool)", ns(per_hook["decided"]))
    hooks.add("ran(tool, seconds)", "d2.tool.duration (tool)", ns(per_hook["ran"]))
    hooks.add("sum", "what (c) records per call", ns(sum(per_hook.values())))
    hooks.notes += [
        "each hook called directly on a second `Metrics` (its own MeterProvider and "
        "InMemoryMetricReader), in the same round robin as the table above.",
        "what (c)'s reader collected over the run (calibration and warm-up included; "
        "every decision is counted; durations are sampled one call in SAMPLE): "
        + ", ".join(f"{name} {count:,}" for name, count in sorted(inproc.points.items())),
    ]

    in_text, in_ok = off_vs_none(off, pairs["none"])
    child_text, child_ok = off_vs_none(children["off"], children["none"])
    added = pairs["metrics"].guarded - off.guarded
    limit_off = f"<= {TARGET_OFF_RATIO}x or <= +{TARGET_OFF_NS} ns"
    targets = [
        Target("telemetry off vs no OpenTelemetry, in-process", in_text, limit_off, in_ok),
        Target(
            "telemetry off vs no OpenTelemetry, child processes", child_text, limit_off, child_ok
        ),
        Target(
            "metrics on (SDK), added per call over off",
            ns(added),
            f"<= {TARGET_METRICS_NS:,} ns",
            added <= TARGET_METRICS_NS,
        ),
    ]
    return [calls, hooks], targets
