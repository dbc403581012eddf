"""OpenTelemetry metrics, read back with the SDK's in-memory reader."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from d2.core import PermissionDeniedError, d2_guard, set_user
from d2.core.evaluate import evaluator_for
from d2.core.telemetry import Metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader


@pytest.fixture
def reader(configure: Any, monkeypatch: pytest.MonkeyPatch) -> InMemoryMetricReader:
    monkeypatch.setattr("d2.core.telemetry.SAMPLE", 1)  # record every duration
    configure(
        {
            "role": "r",
            "permissions": [
                "plain",
                {
                    "tool": "checked",
                    "conditions": {
                        "input": {"x": {"max": 1}},
                        "output": {"secret": {"action": "deny"}},
                    },
                },
            ],
            "sequence": [{"deny": ["plain", "after"]}],
        },
        {"role": "r", "permissions": ["after", "flow"]},
        metadata={"data_flow": {"labels": {"plain": ["L"]}, "blocks": {"L": ["flow"]}}},
    )
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("d2"))
    evaluator = evaluator_for("default")
    evaluator.timer = metrics
    evaluator.add_observer(metrics.observe)
    return reader


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_decisions_are_counted_by_tool_result_and_reason(reader: InMemoryMetricReader) -> None:
    plain = d2_guard("plain")(lambda: None)
    checked = d2_guard("checked")(lambda x, secret=False: {"secret": 1} if secret else {})
    after = d2_guard("after")(lambda: None)
    flow = d2_guard("flow")(lambda: None)
    unknown = d2_guard("unknown")(lambda: None)
    set_user("u", roles=["r"])
    checked(1)
    for call in (lambda: checked(5), lambda: checked(1, secret=True), unknown):
        with pytest.raises(PermissionDeniedError):
            call()
    plain()
    for call in (after, flow):
        with pytest.raises(PermissionDeniedError):
            call()
    set_user(None)
    with pytest.raises(PermissionDeniedError):
        plain()
    counted = {
        (p.attributes["tool"], p.attributes["result"], p.attributes["reason"]): p.value
        for p in points(reader)["d2.decisions"]
    }
    assert counted == {
        ("checked", "allowed", "none"): 2,  # the second is then refused on output
        ("checked", "denied", "input_validation"): 1,
        ("checked", "denied", "output_sanitization"): 1,
        ("unknown", "denied", "unknown_tool"): 1,
        ("plain", "allowed", "none"): 1,
        ("after", "denied", "sequence_violation"): 1,
        ("flow", "denied", "data_flow_violation"): 1,
        ("plain", "denied", "no_user"): 1,
    }
    durations = {p.attributes["tool"]: p.count for p in points(reader)["d2.decision.duration"]}
    assert durations["plain"] == 2 and durations["checked"] == 3
    runs = {p.attributes["tool"]: p.count for p in points(reader)["d2.tool.duration"]}
    assert runs == {"checked": 2, "plain": 1}


async def test_async_tool_run_time_is_recorded(reader: InMemoryMetricReader) -> None:
    import asyncio

    @d2_guard("plain")
    async def slow() -> str:
        await asyncio.sleep(0.02)
        return "done"

    set_user("u", roles=["r"])
    assert await slow() == "done"
    (point,) = points(reader)["d2.tool.duration"]
    assert point.sum >= 0.02


def test_telemetry_off_installs_nothing(configure: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D2_TELEMETRY", "off")
    configure({"role": "r", "permissions": ["x"]})
    evaluator = evaluator_for("default")
    assert evaluator.timer is None and evaluator.observer is None


def run(code: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"D2_SILENT": "1", **env, "PATH": "/usr/bin:/bin"},
    )
    return proc.stdout.strip()


SETUP = (
    "import time, d2.core as c\n"
    "exp = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 86400))\n"
    "doc = {'metadata': {'expires': exp}, 'policies': [{'role': 'r', 'permissions': ['t']}]}\n"
)


def test_an_apps_own_meter_provider_is_never_replaced() -> None:
    out = run(
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "mine = MeterProvider(); metrics.set_meter_provider(mine)\n"
        + SETUP
        + "c.configure_rbac_sync(source=c.InMemorySource(doc))\n"
        "print(metrics.get_meter_provider() is mine)\n",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    assert out == "True"


def test_auto_configuration_exports_when_the_endpoint_is_set() -> None:
    out = run(
        SETUP + "c.configure_rbac_sync(source=c.InMemorySource(doc))\n"
        "from opentelemetry import metrics\n"
        "print(type(metrics.get_meter_provider()).__name__)\n"
        "c.set_user('u', roles=['r']); c.d2_guard('t')(lambda: 1)()\n",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    assert out == "MeterProvider"  # exporter failures (nothing listens) stay in the SDK


def test_no_import_of_opentelemetry_unless_wanted() -> None:
    out = run(
        SETUP + "c.configure_rbac_sync(source=c.InMemorySource(doc))\n"
        "import sys; print('opentelemetry' in sys.modules)\n"
    )
    assert out == "False"


def test_would_deny_and_budget_reasons_and_log_drops_are_metrics(configure: Any) -> None:
    from d2.core.decisionlog import DecisionLog, dropped_total

    configure(
        {"role": "r", "permissions": [{"tool": "b", "limits": [{"max": 1, "per": "request"}]}]},
        metadata={"mode": "audit"},
    )
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("d2"))
    evaluator = evaluator_for("default")
    evaluator.set_timer(metrics)
    evaluator.add_observer(metrics.observe)
    log = DecisionLog(lambda record: None, capacity=1, interval=3600)
    evaluator.set_log(log)
    before = dropped_total()
    tool = d2_guard("b")(lambda: None)
    set_user("u", roles=["r"])
    tool()
    tool()  # would exceed the budget: runs (audit), counted as would_deny
    counted = {
        (p.attributes["tool"], p.attributes["result"], p.attributes["reason"]): p.value
        for p in points(reader)["d2.decisions"]
    }
    assert counted == {("b", "allowed", "none"): 1, ("b", "would_deny", "budget_exceeded"): 1}
    (dropped,) = points(reader)["d2.decision_log.dropped"]
    assert dropped.value == dropped_total() and dropped_total() - before == 1
    log.close()


def test_a_tools_labels_are_attributes_of_its_metrics(reader: InMemoryMetricReader) -> None:
    from d2.core.labels import set_tool_labels

    set_tool_labels("plain", {"upstream": "git"})
    try:
        plain = d2_guard("plain")(lambda: None)
        flow = d2_guard("flow")(lambda: None)
        set_user("u", roles=["r"])
        plain()
        with pytest.raises(PermissionDeniedError):
            flow()
        found = points(reader)
        decisions = {p.attributes["tool"]: dict(p.attributes) for p in found["d2.decisions"]}
        assert decisions["plain"] == {
            "tool": "plain",
            "result": "allowed",
            "reason": "none",
            "upstream": "git",
        }
        assert "upstream" not in decisions["flow"]  # unlabelled tools are as before
        for name in ("d2.decision.duration", "d2.tool.duration"):
            (point,) = [p for p in found[name] if p.attributes["tool"] == "plain"]
            assert point.attributes["upstream"] == "git"
    finally:
        set_tool_labels("plain", {})
