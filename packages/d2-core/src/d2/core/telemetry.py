"""OpenTelemetry metrics, through ``opentelemetry-api`` only and only when it is
importable (extra ``d2-core[otel]``); ``D2_TELEMETRY`` = ``off|metrics|usage|all``
(default ``all``) turns them off. Metrics off costs nothing on a guarded call: no
observer and no timer are installed, so the guard does exactly what it does without
OpenTelemetry.

Metrics are set up at configure time when the app already imported OpenTelemetry,
when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, or when ``D2_TELEMETRY`` is set to
``metrics`` or ``all`` explicitly; otherwise D2 does not import OpenTelemetry (it costs
tens of milliseconds of start-up and records nothing without a meter provider).

Auto-configuration: when the OpenTelemetry SDK and its OTLP HTTP exporter are
installed, ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the app has not set a meter
provider, D2 sets one that exports there. An app's own provider is never replaced,
and exporter failures stay inside the SDK (logged), never reaching the app.

Instruments (all under ``d2.``; see docs/telemetry.md): ``d2.decisions`` (counter:
``tool``, ``result``, ``reason``; counted in-process, reported at collection),
``d2.decision.duration`` and ``d2.tool.duration`` (histograms, seconds; one call in
``SAMPLE`` is recorded), ``d2.policy.loads``, ``d2.policy.polls``,
``d2.policy.poll_failures``, ``d2.jwks.fetches``, ``d2.jwks.rotations``,
``d2.events.dropped``, ``d2.decision_log.dropped`` (counters) and
``d2.bundle.age`` (gauge, seconds). ``result`` is ``allowed``, ``denied`` or
``would_deny`` (audit). The three per-tool instruments also carry the tool's labels
(:mod:`d2.core.labels`, e.g. d2-gateway's ``upstream``).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from .context import UserContext
from .labels import tool_labels

__all__ = ["Metrics", "get_metrics", "metrics_enabled", "telemetry_mode", "usage_enabled"]

_MODES = ("off", "metrics", "usage", "all")
SAMPLE = 16  # one duration in SAMPLE is recorded


def telemetry_mode() -> str:
    """``D2_TELEMETRY``, normalised; an unknown value means ``all`` (logged)."""
    raw = os.environ.get("D2_TELEMETRY", "all").strip().lower() or "all"
    if raw not in _MODES:
        import logging

        logging.getLogger("d2").warning(
            "d2: D2_TELEMETRY=%r is not one of %s; using 'all'", raw, "|".join(_MODES)
        )
        return "all"
    return raw


def metrics_enabled() -> bool:
    """Metrics are wanted (``all`` or ``metrics``)."""
    return telemetry_mode() in ("all", "metrics")


def usage_enabled() -> bool:
    """Usage events are wanted (``all`` or ``usage``; cloud mode only)."""
    return telemetry_mode() in ("all", "usage")


class Metrics:
    """D2's instruments on one meter."""

    def __init__(self, meter: Any) -> None:
        # Decisions are counted here (one C-level ``next`` on a per-key counter) and
        # reported when the SDK collects: calling the SDK on every guarded call costs
        # about 6 us per instrument. Durations are sampled: 1 call in SAMPLE.
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._decision_ticks = itertools.count()
        self._run_ticks = itertools.count()
        meter.create_observable_counter(
            "d2.decisions",
            callbacks=[self._report_decisions],
            unit="{decision}",
            description="Guarded-call decisions",
        )
        self.decision_duration = meter.create_histogram(
            "d2.decision.duration", unit="s", description="Time to decide a guarded call"
        )
        self.tool_duration = meter.create_histogram(
            "d2.tool.duration", unit="s", description="Run time of allowed guarded tools"
        )
        self.policy_loads = meter.create_counter(
            "d2.policy.loads", description="Policies put in force"
        )
        self.polls = meter.create_counter("d2.policy.polls", description="Bundle polls (cloud)")
        self.poll_failures = meter.create_counter(
            "d2.policy.poll_failures", description="Failed bundle polls (cloud)"
        )
        self.jwks_fetches = meter.create_counter("d2.jwks.fetches", description="JWKS fetches")
        self.jwks_rotations = meter.create_counter(
            "d2.jwks.rotations", description="JWKS fetches that changed the keys"
        )
        self.events_dropped = meter.create_counter(
            "d2.events.dropped", description="Usage events dropped (buffer full or refused)"
        )
        meter.create_observable_counter(
            "d2.decision_log.dropped",
            callbacks=[self._log_dropped],
            unit="{record}",
            description="Decision-log records dropped (queue full)",
        )
        self.bundle_loaded_at: float | None = None
        meter.create_observable_gauge(
            "d2.bundle.age",
            callbacks=[self._bundle_age],
            unit="s",
            description="Age of the policy bundle in force (cloud)",
        )

    def _report_decisions(self, options: Any) -> Any:
        from opentelemetry.metrics import Observation

        out = []
        for (tool, result, reason), counter in list(self._counts.items()):
            seen = int(repr(counter)[6:-1])  # "count(N)": N calls counted so far
            attributes = {**tool_labels(tool), "tool": tool, "result": result, "reason": reason}
            out.append(Observation(seen, attributes))
        return out

    def _log_dropped(self, options: Any) -> Any:
        from opentelemetry.metrics import Observation

        from .decisionlog import dropped_total

        return [Observation(dropped_total())]

    def _bundle_age(self, options: Any) -> Any:
        from opentelemetry.metrics import Observation

        if self.bundle_loaded_at is None:
            return []
        return [Observation(time.time() - self.bundle_loaded_at)]

    # -- hooks called by the evaluator and the guard (cheap, never raise) ---------------
    def observe(
        self, tool_id: str, ctx: UserContext, reason: str | None, decision: str = "allowed"
    ) -> None:
        """Evaluator observer: count the decision (thread-safe, no lock)."""
        key = (tool_id, "allowed", "none") if reason is None else (tool_id, decision, reason)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts.setdefault(key, itertools.count(0))
        next(counter)

    def decided(self, tool_id: str, seconds: float) -> None:
        """Record how long a decision took (sampled: one call in ``SAMPLE``)."""
        if not next(self._decision_ticks) % SAMPLE:
            self.decision_duration.record(seconds, {**tool_labels(tool_id), "tool": tool_id})

    def ran(self, tool_id: str, seconds: float) -> None:
        """Record how long an allowed tool ran (sampled: one call in ``SAMPLE``)."""
        if not next(self._run_ticks) % SAMPLE:
            self.tool_duration.record(seconds, {**tool_labels(tool_id), "tool": tool_id})


_metrics: Metrics | None = None
_tried = False


def _auto_configure(otel_metrics: Any) -> None:
    """Set an OTLP-exporting provider when the SDK and exporter are installed, the
    endpoint is configured and the app has not set a provider of its own."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError:
        return
    current = otel_metrics.get_meter_provider()
    if type(current).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider"):
        return  # the app set its own: never override it
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def _wanted() -> bool:
    # Importing opentelemetry costs ~28 ms; without a meter provider its API records
    # nothing anyway. So: when the app already uses OpenTelemetry, when an OTLP
    # endpoint is configured, or when D2_TELEMETRY asks for metrics explicitly.
    import sys

    return (
        "opentelemetry" in sys.modules
        or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        or os.environ.get("D2_TELEMETRY", "").strip().lower() in ("metrics", "all")
    )


def get_metrics() -> Metrics | None:
    """D2's instruments, or None when metrics are off, not wanted (see above) or
    OpenTelemetry is absent."""
    global _metrics, _tried
    if not metrics_enabled():
        return None
    if _metrics is None and not _tried and _wanted():
        _tried = True
        try:
            from opentelemetry import metrics as otel_metrics
        except ImportError:
            return None
        try:
            _auto_configure(otel_metrics)
        except Exception as exc:  # telemetry never breaks the app
            import logging

            logging.getLogger("d2").warning("d2: OpenTelemetry auto-configuration failed: %s", exc)
        from ._version import __version__

        _metrics = Metrics(otel_metrics.get_meter("d2", __version__))
    return _metrics
