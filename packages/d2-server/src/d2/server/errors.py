"""The one exception the HTTP layer turns into a JSON error response.

Every refusal of the server is an :class:`ApiError` carrying the HTTP status and a
``detail`` code (``{"detail": "<code>"}`` on the wire, as PROTOCOL.md says), plus
optional extra fields (``errors`` for 422, ``limit`` for 402) and headers
(``Retry-After`` for 429).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ApiError"]


class ApiError(Exception):
    """A request refused with ``status`` and a JSON body ``{"detail": detail, **extra}``."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"detail": self.detail, **self.extra}
