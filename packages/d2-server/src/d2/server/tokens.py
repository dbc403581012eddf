"""API tokens: generation, hashing (only hashes are stored) and scopes.

A token is ``d2_`` followed by 43 URL-safe characters (32 random bytes). It is
stored as its SHA-256: the token has 256 bits of entropy, so a fast hash is enough
(no password hashing needed) and a lookup is one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

__all__ = [
    "ALL_SCOPES",
    "DEVELOPER_SCOPES",
    "EVENTS_WRITE",
    "POLICY_READ",
    "POLICY_WRITE",
    "RUNTIME_SCOPES",
    "TOKEN_PREFIX",
    "hash_token",
    "looks_like_token",
    "new_token",
    "parse_scopes",
]

TOKEN_PREFIX = "d2_"
POLICY_READ = "policy:read"
EVENTS_WRITE = "events:write"
POLICY_WRITE = "policy:write"
RUNTIME_SCOPES: tuple[str, ...] = (POLICY_READ, EVENTS_WRITE)
DEVELOPER_SCOPES: tuple[str, ...] = (POLICY_READ, EVENTS_WRITE, POLICY_WRITE)
ALL_SCOPES = DEVELOPER_SCOPES
_PRESETS = {"runtime": RUNTIME_SCOPES, "developer": DEVELOPER_SCOPES}
_MAX_TOKEN_LEN = 200


def new_token() -> str:
    """A fresh random token (show it once; store :func:`hash_token` of it)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before any lookup: prefix, bounded length, ASCII."""
    return value.startswith(TOKEN_PREFIX) and len(value) <= _MAX_TOKEN_LEN and value.isascii()


def hash_token(token: str) -> str:
    """The stored form of ``token``: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Scopes from ``"runtime"``, ``"developer"``, or scope names separated by spaces
    or commas (``"policy:read events:write"``), in canonical order.

    Raises :class:`ValueError` naming an unknown scope; an empty set is refused.
    """
    words = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for word in words:
        if word in _PRESETS:
            chosen.update(_PRESETS[word])
        elif word in ALL_SCOPES:
            chosen.add(word)
        else:
            known = ", ".join((*_PRESETS, *ALL_SCOPES))
            raise ValueError(f"unknown scope {word!r}; use one of: {known}")
    if not chosen:
        raise ValueError("a token needs at least one scope")
    return tuple(s for s in ALL_SCOPES if s in chosen)
