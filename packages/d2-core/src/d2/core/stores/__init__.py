"""Where budgets and approvals live: the store protocol and the in-process store.

A :class:`Store` keeps the ``per: user`` budget counters and the approval requests
of an instance, every key under the app's namespace (the policy's ``metadata.name``,
or the cloud app): apps sharing one store never read each other's. The in-process
:class:`MemoryStore` is the default (a ``per: user`` limit is then per process);
:class:`d2.core.stores.redis.RedisStore` (extra
``d2-core[redis]``) is shared by every process of an app. ``per: request`` budgets
never reach a store: they live in the request scope.

Every method has an ``async`` twin (``take_async`` ...), used by async tools so a
network store never blocks the event loop. Times are Unix seconds passed in by the
caller (the evaluator's clock), so tests control them. A store that cannot answer
raises :class:`StoreUnavailableError`; the guard then denies with reason
``budget_unavailable``.
"""

from __future__ import annotations

from .base import (
    APPROVAL_MISSING,
    TAKEN,
    ApprovalKey,
    ApprovalState,
    Counter,
    Store,
    StoreUnavailableError,
)
from .memory import MemoryStore

__all__ = [
    "APPROVAL_MISSING",
    "TAKEN",
    "ApprovalKey",
    "ApprovalState",
    "Counter",
    "MemoryStore",
    "Store",
    "StoreUnavailableError",
    "store_from_url",
]


def store_from_url(url: str) -> Store:
    """A store for ``url``: ``memory://`` or ``redis://host:port/db``
    (``rediss://`` for TLS; needs ``d2-core[redis]``)."""
    text = url.strip()
    if text in ("", "memory", "memory://"):
        return MemoryStore()
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore.from_url(text)
    from ..errors import ConfigurationError

    scheme, _, rest = text.partition("://")
    host = rest.rsplit("@", 1)[-1].split("?", 1)[0].split("/", 1)[0]
    shown = f"{scheme}://{host}" if rest else "<not a URL>"
    raise ConfigurationError(
        f"D2_STORE_URL / store= {shown!r} is not a store URL: use memory:// or redis://host:port/db"
    )
