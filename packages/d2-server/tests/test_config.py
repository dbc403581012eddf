"""Settings and quotas are validated when built."""

from __future__ import annotations

from typing import Any

import pytest
from d2.server import Quotas, ServerConfig
from d2.server.config import EVENTS_MAX_BYTES


def test_quotas_report_exactly_the_protocol_keys() -> None:
    assert set(Quotas().reported()) == {
        "max_tools",
        "bundle_size_bytes",
        "event_batch",
        "ingest_interval",
    }


@pytest.mark.parametrize("field", ["max_tools", "bundle_size_bytes", "event_batch", "max_apps"])
def test_quotas_must_be_positive_integers(field: str) -> None:
    for bad in (0, True):
        kwargs: dict[str, Any] = {field: bad}
        with pytest.raises(ValueError, match=field):
            Quotas(**kwargs)


def test_bundles_refresh_at_half_their_lifetime_unless_told() -> None:
    assert ServerConfig(bundle_lifetime=100).refresh_after == 50
    assert ServerConfig(bundle_lifetime=100, bundle_refresh=10).refresh_after == 10


@pytest.mark.parametrize(
    "kwargs",
    [{"poll_seconds": 0}, {"bundle_lifetime": -1}, {"ingest_window": 0}, {"bundle_refresh": 0}],
)
def test_server_settings_must_be_positive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ServerConfig(**kwargs)


def test_bundles_must_be_refreshed_before_they_expire() -> None:
    with pytest.raises(ValueError, match="shorter than bundle_lifetime"):
        ServerConfig(bundle_lifetime=100, bundle_refresh=100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"events_retention_days": 0},
        {"events_retention_days": 36_501},
        {"events_retention_days": 1.5},
        {"events_retention_days": True},
        {"events_max_per_app": 0},
        {"events_max_bytes_per_app": EVENTS_MAX_BYTES - 1},
        {"events_prune_interval": 0},
        {"events_prune_interval": float("inf")},
        {"events_prune_interval": float("nan")},
        {"events_prune_batch": 0},
        {"events_prune_batch": 100_001},
    ],
)
def test_retention_settings_out_of_range_are_refused_by_name(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"^{name} must be"):
        ServerConfig(**kwargs)


def test_retention_defaults_are_the_documented_ones() -> None:
    config = ServerConfig()
    assert config.events_retention_days == 30 and config.events_retention_seconds == 30 * 86400
    assert config.events_max_per_app == 1_000_000
    assert config.events_max_bytes_per_app == 256 * 1024 * 1024
    assert config.events_prune_interval == 3600 and config.events_prune_batch == 5000
    bounds = ServerConfig(events_retention_days=36_500, events_max_bytes_per_app=EVENTS_MAX_BYTES)
    assert bounds.events_retention_days == 36_500
