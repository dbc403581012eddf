"""Settings and quotas are validated when built."""

from __future__ import annotations

from typing import Any

import pytest
from d2.server import Quotas, ServerConfig


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
