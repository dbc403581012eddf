"""The local-mode limits (the free tier), in one value.

``configure_rbac_sync(limits=Limits(max_tools=10_000))`` raises them for
self-hosted setups and benchmarks.
"""

from __future__ import annotations

from .errors import ConfigurationError

__all__ = ["Limits"]


class Limits:
    """Bounds a local policy must respect to load.

    ``max_tools``: distinct tool ids and prefix patterns the policy names
    (``*`` is not counted). ``max_bytes``: size of the policy file.
    ``max_expiry_seconds``: how far ahead ``metadata.expires`` may be.
    """

    __slots__ = ("max_bytes", "max_expiry_seconds", "max_tools")

    max_tools: int
    max_bytes: int
    max_expiry_seconds: float

    def __init__(
        self,
        max_tools: int = 25,
        max_bytes: int = 512 * 1024,
        max_expiry_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        for name, value in (
            ("max_tools", max_tools),
            ("max_bytes", max_bytes),
            ("max_expiry_seconds", max_expiry_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(
                    f"Limits({name}=...) must be a positive number, got {value!r}"
                )
        object.__setattr__(self, "max_tools", max_tools)
        object.__setattr__(self, "max_bytes", max_bytes)
        object.__setattr__(self, "max_expiry_seconds", float(max_expiry_seconds))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Limits is immutable; build a new one")

    def __reduce__(self) -> tuple[type[Limits], tuple[int, int, float]]:
        return (Limits, (self.max_tools, self.max_bytes, self.max_expiry_seconds))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limits):
            return NotImplemented
        return (self.max_tools, self.max_bytes, self.max_expiry_seconds) == (
            other.max_tools,
            other.max_bytes,
            other.max_expiry_seconds,
        )

    def __hash__(self) -> int:
        return hash((self.max_tools, self.max_bytes, self.max_expiry_seconds))

    def __repr__(self) -> str:
        return (
            f"Limits(max_tools={self.max_tools}, max_bytes={self.max_bytes}, "
            f"max_expiry_seconds={self.max_expiry_seconds:g})"
        )

    @classmethod
    def unlimited(cls) -> Limits:
        """Limits that never refuse a policy (``metadata.expires`` is still required)."""
        inf = 1 << 62
        return cls(max_tools=inf, max_bytes=inf, max_expiry_seconds=float("inf"))
