"""The JWKS cache: verification keys by ``kid``.

Refreshed when a bundle names an unknown ``kid`` or carries ``jwks_refresh``, but
never more often than ``floor`` seconds, so a flood of made-up ``kid`` values cannot
hammer the control plane. A failed refresh keeps the keys it had. With pinning
(``D2_JWKS_THUMBPRINTS``) only keys whose RFC 7638 thumbprint is pinned are used.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from d2.core.errors import InvalidSignatureError

from .verify import Key

__all__ = ["JWKSCache", "usable_keys"]

log = logging.getLogger("d2.cloud")


def usable_keys(document: Mapping[str, Any], pins: frozenset[str] | None) -> dict[str, Key]:
    """The usable keys of a JWKS ``document`` by ``kid`` (with ``pins``, only pinned
    ones); others are skipped and logged. Raises :class:`InvalidSignatureError`
    when none is left."""
    raw = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(raw, list):
        raise InvalidSignatureError("JWKS document has no 'keys' list")
    keys: dict[str, Key] = {}
    for jwk in raw:
        if not isinstance(jwk, Mapping):
            continue
        try:
            key = Key(jwk)
        except InvalidSignatureError as exc:
            log.warning("d2: skipping JWKS key: %s", exc)
            continue
        if pins is not None and key.thumbprint not in pins:
            log.warning("d2: skipping JWKS key %r: thumbprint not pinned", key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise InvalidSignatureError("JWKS document has no usable (or pinned) key")
    return keys


class JWKSCache:
    """Keys by ``kid``; ``fetch`` returns the JWKS document."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        clock: Callable[[], float],
        *,
        floor: float = 30.0,
        pins: frozenset[str] | None = None,
        on_fetch: Callable[[bool], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self.floor = floor
        self.pins = pins
        self.keys: dict[str, Key] = {}
        self.document: dict[str, Any] = {"keys": []}
        self._last_refresh: float | None = None
        self.refreshes = 0
        self._on_fetch = on_fetch  # told of each fetch: did the key ids change?

    def load(self, document: Mapping[str, Any]) -> None:
        """Replace the keys with those of ``document`` (unusable keys are skipped
        and logged; a document with no usable key changes nothing)."""
        keys = usable_keys(document, self.pins)
        self.keys = keys
        self.document = {"keys": [k.jwk for k in keys.values()]}

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the JWKS again unless done less than ``floor`` seconds ago
        (``force`` ignores the floor: the first fetch). True when keys changed."""
        now = self._clock()
        if not force and self._last_refresh is not None and now - self._last_refresh < self.floor:
            return False
        self._last_refresh = now
        self.refreshes += 1
        try:
            self.load(await self._fetch())
        except Exception as exc:  # network, HTTP or content: keep what we have
            log.warning("d2: JWKS refresh failed, keeping %d known key(s): %s", len(self.keys), exc)
            return False
        return True

    async def key_for(self, kid: object, *, refresh: bool = False) -> Key | None:
        """The key for ``kid``; refreshes first when asked or when ``kid`` is
        unknown (both subject to the floor)."""
        if refresh or not isinstance(kid, str) or kid not in self.keys:
            await self.refresh()
        return self.keys.get(kid) if isinstance(kid, str) else None
