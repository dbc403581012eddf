"""The local-mode limits (the free tier), in one value.

``configure_rbac_sync(limits=Limits(max_tools=10_000))`` raises them for
self-hosted setups and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a local policy must respect to load.

    ``max_tools``: distinct tool ids and prefix patterns the policy names
    (``*`` is not counted). ``max_bytes``: size of the policy file.
    ``max_expiry_seconds``: how far ahead ``metadata.expires`` may be.
    """

    max_tools: int = 25
    max_bytes: int = 512 * 1024
    max_expiry_seconds: float = 7 * 24 * 3600.0

    @classmethod
    def unlimited(cls) -> Limits:
        """Limits that never refuse a policy (``metadata.expires`` is still required)."""
        inf = 1 << 62
        return cls(max_tools=inf, max_bytes=inf, max_expiry_seconds=float("inf"))
