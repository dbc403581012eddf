"""The storage interface of the control plane and the records it exchanges.

:class:`Storage` is what the service needs from a database; :mod:`d2.server.store`
implements it on SQLite and PostgreSQL. The write paths that must be atomic
(:meth:`Storage.publish`, :meth:`Storage.refresh_bundle`) hand their decision to a
callback that runs inside the transaction, after the state it decides on was read
under a lock that concurrent writers of the same state wait for.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Quotas

__all__ = [
    "Account",
    "App",
    "Bundle",
    "BundleState",
    "Draft",
    "EventCap",
    "EventUsage",
    "KeyRegistration",
    "NewVersion",
    "PollState",
    "Principal",
    "SMALLEST_EVENT_BYTES",
    "PublishState",
    "SigningKeyRecord",
    "Storage",
    "StoredEvent",
    "rows_to_free",
]


@dataclass(frozen=True)
class Account:
    """An account and its plan quotas."""

    id: str
    quotas: Quotas
    created_at: float


@dataclass(frozen=True)
class App:
    """An app of an account; tokens, bundles, drafts and events belong to one app."""

    id: int
    account_id: str
    name: str


@dataclass(frozen=True)
class Principal:
    """Who a bearer token speaks for: one account, one app, some scopes."""

    token_hash: str
    account: Account
    app: App
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class SigningKeyRecord:
    """A stored server signing key.

    ``retired_at`` is set when a newer key replaced it; the key stays in the JWKS
    until ``remove_at``. Bundles signed before ``refresh_until`` carry
    ``jwks_refresh: true`` (set for a key that replaced another).
    """

    kid: str
    alg: str
    pem: bytes
    jwk: dict[str, Any]
    created_at: float
    refresh_until: float | None = None
    retired_at: float | None = None
    remove_at: float | None = None


@dataclass(frozen=True)
class Bundle:
    """One signing of one policy version."""

    app_id: int
    version: int
    jws: str
    etag: str
    kid: str
    iat: int
    exp: int


@dataclass(frozen=True)
class BundleState:
    """What ``GET /v1/policy/bundle`` serves for an app.

    ``current_version`` is 0 before the first publish. ``bundle`` is the newest
    signing of the current version; ``document`` its canonical policy JSON.
    """

    current_version: int
    revoked: bool
    bundle: Bundle | None
    document: str | None


@dataclass(frozen=True)
class PollState:
    """What a conditional poll (``GET /v1/policy/bundle`` with ``If-None-Match``)
    decides on, read for one token hash in a single statement, so from one snapshot.

    ``scopes``: the token's. ``app_id``, ``current_version``, ``revoked``: its app's. ``etag``,
    ``bundle_kid``, ``bundle_iat``: the newest signing of the current version (all
    ``None`` when there is none). ``active_kid`` / ``active_refresh_until``: the
    active signing key (``None`` when there is none). ``epoch``: see below.
    """

    scopes: tuple[str, ...]
    app_id: int
    current_version: int
    revoked: bool
    etag: str | None
    bundle_kid: str | None
    bundle_iat: int | None
    active_kid: str | None
    active_refresh_until: float | None
    epoch: str | None = None
    """The poll epoch (:meth:`Storage.poll_epoch`) of the same snapshot; ``None``
    when the database has none (nothing read under it may be cached)."""


@dataclass(frozen=True)
class PublishState:
    """The state a publish decides on, read inside the write transaction.

    ``etags``: every ETag served for the current version (a re-signing adds one).
    ``device_public_key``: the raw Ed25519 key registered under the request's key
    id for the app being published, or ``None``. ``live_apps``: apps of the
    account with a policy in force (published and not revoked).
    """

    current_version: int
    revoked: bool
    etags: frozenset[str]
    device_public_key: bytes | None
    live_apps: int
    signing_key: SigningKeyRecord | None


@dataclass(frozen=True)
class NewVersion:
    """What a successful publish stores."""

    version: int
    document: str
    body: bytes
    device_key_id: str
    signature: bytes
    bundle: Bundle


@dataclass(frozen=True)
class Draft:
    """An app's draft policy."""

    version: int
    document: str
    updated_at: float


@dataclass(frozen=True)
class StoredEvent:
    """One usage event as stored."""

    event_type: str
    payload: str
    occurred_at: str
    received_at: float


@dataclass(frozen=True)
class EventCap:
    """The most events, and bytes of event data, one app keeps."""

    max_events: int
    max_bytes: int


@dataclass(frozen=True)
class EventUsage:
    """What an app's stored events take: how many, and their bytes of data
    (``event_type``, ``payload`` and ``occurred_at`` in UTF-8)."""

    events: int
    bytes: int


SMALLEST_EVENT_BYTES = 23
"""The fewest bytes one event the API accepts is stored in: a 1-character
``event_type``, the payload ``{}`` and a 20-character RFC 3339 time
(``parse_events``). So freeing ``n`` bytes never takes more than
``ceil(n / 23)`` of the oldest events."""


def rows_to_free(added: EventUsage) -> int:
    """The most of an app's oldest events that can be needed to free what one
    upload ``added`` (its events and the bytes they are stored in)."""
    return max(added.events, -(-added.bytes // SMALLEST_EVENT_BYTES))


class KeyRegistration(enum.Enum):
    """Outcome of registering a device key."""

    CREATED = "created"
    EXISTS = "exists"  # the same id with the same key: nothing to do
    CONFLICT = "conflict"  # the id exists with another key


class Storage(abc.ABC):
    """Everything the control plane keeps. Every method is synchronous and safe to
    call from several threads at once."""

    local_reads: bool = False
    """Whether a read of the poll path (:meth:`poll_state`) is a local lookup of a
    few tens of microseconds that never waits on the network or on a lock (SQLite
    in WAL mode): the HTTP layer then runs it on the event loop instead of paying
    a thread-pool hop that costs ten times more. A storage behind a network
    connection keeps ``False``: its reads run in the thread pool."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection."""

    @abc.abstractmethod
    def schema_revision(self) -> str | None:
        """The schema revision the database is at."""

    # accounts, apps, tokens
    @abc.abstractmethod
    def create_account(self, account_id: str, quotas: Quotas, now: float) -> Account:
        """Store a new account."""

    @abc.abstractmethod
    def create_account_with_app(
        self, account_id: str, quotas: Quotas, app_name: str, now: float
    ) -> tuple[Account, App]:
        """Store a new account and its first app in one transaction (both or
        neither)."""

    @abc.abstractmethod
    def get_account(self, account_id: str) -> Account | None:
        """The account, or ``None``."""

    @abc.abstractmethod
    def accounts(self) -> list[Account]:
        """Every account, oldest first."""

    @abc.abstractmethod
    def ensure_app(self, account_id: str, name: str, now: float) -> App:
        """The app ``name`` of the account, created when missing."""

    @abc.abstractmethod
    def apps(self, account_id: str) -> list[App]:
        """The account's apps, oldest first."""

    @abc.abstractmethod
    def add_token(self, token_hash: str, app: App, scopes: Sequence[str], now: float) -> None:
        """Store a token (its hash only) for ``app`` with ``scopes``."""

    @abc.abstractmethod
    def delete_token(self, token_hash: str) -> Principal | None:
        """Delete the token with this hash; its principal as it was, or ``None``
        when there is none."""

    @abc.abstractmethod
    def find_token(self, token_hash: str) -> Principal | None:
        """The principal of a token hash, or ``None``."""

    @abc.abstractmethod
    def poll_state(self, token_hash: str) -> PollState | None:
        """In one statement (one snapshot): the token's scopes, its app's current
        version and revocation, the newest bundle of that version (ETag, ``kid``,
        ``iat``) and the active signing key (``kid``, ``refresh_until``); ``None``
        when no token has this hash. Nothing is cached: every call reads the
        database, so what another process wrote is seen at once."""

    @abc.abstractmethod
    def poll_epoch(self) -> str:
        """A token that changes, in the same transaction, with every change of
        what :meth:`poll_state` reads, for any token hash (random, so a database
        restored from a backup never repeats one with other contents). Read by
        one cheap statement: a state read under an epoch stays the answer for as
        long as a later read of the epoch returns the same token."""

    # server signing keys
    @abc.abstractmethod
    def add_signing_key(self, record: SigningKeyRecord, *, overlap: float, now: float) -> None:
        """Make ``record`` the active key; the previous active key is retired and
        stays published for ``overlap`` seconds."""

    @abc.abstractmethod
    def active_signing_key(self) -> SigningKeyRecord | None:
        """The key new bundles are signed with."""

    @abc.abstractmethod
    def published_signing_keys(self, now: float) -> list[SigningKeyRecord]:
        """The keys in the JWKS at ``now`` (active first, then retired ones whose
        overlap has not ended)."""

    # device keys
    @abc.abstractmethod
    def add_device_key(
        self, app_id: int, key_id: str, public_key: bytes, now: float
    ) -> KeyRegistration:
        """Register a device key for the app (key ids are unique per app)."""

    @abc.abstractmethod
    def device_key(self, app_id: int, key_id: str) -> bytes | None:
        """The raw public key registered under ``key_id`` for the app, or ``None``."""

    # policy
    @abc.abstractmethod
    def bundle_state(self, app_id: int) -> BundleState:
        """What the app serves now."""

    @abc.abstractmethod
    def publish(
        self,
        app: App,
        device_key_id: str,
        decide: Callable[[PublishState], NewVersion],
        now: float,
    ) -> NewVersion:
        """In one write transaction: read :class:`PublishState`, call ``decide``
        (which raises to refuse), store the :class:`NewVersion` it returns and make
        it current (clearing a revocation). Two concurrent calls are serialized,
        so a precondition checked in ``decide`` can never be passed by both."""

    @abc.abstractmethod
    def refresh_bundle(
        self,
        app_id: int,
        decide: Callable[[BundleState, SigningKeyRecord], Bundle | None],
        now: float,
    ) -> BundleState:
        """In one write transaction: re-read the state and the active key, call
        ``decide``; store the bundle it returns (a re-signing of the current
        version). Returns the state after the transaction."""

    @abc.abstractmethod
    def revoke(self, app_id: int, now: float) -> int | None:
        """Revoke the current version; ``None`` when nothing was ever published."""

    # drafts
    @abc.abstractmethod
    def put_draft(self, app_id: int, version: int, document: str, now: float) -> None:
        """Store (replace) the app's draft."""

    @abc.abstractmethod
    def get_draft(self, app_id: int) -> Draft | None:
        """The app's draft, or ``None``."""

    # events
    @abc.abstractmethod
    def add_events(
        self,
        app_id: int,
        token_hash: str,
        events: Sequence[tuple[str, str, str]],
        now: float,
        *,
        cap: EventCap | None = None,
        trim_limit: int = 5000,
    ) -> int:
        """Store ``(event_type, payload JSON, occurred_at)`` items received at
        ``now``; returns how many. With ``cap``, the same transaction then deletes
        the app's oldest events until the app is within both limits of ``cap``,
        deleting at most ``max(trim_limit, rows_to_free(what was stored))`` events.
        That bound is measured on the bytes actually stored (not on the request
        body, which canonical JSON can expand), so an app within its cap before an
        upload is within it after, and the request's work stays bounded; an app
        already far over (its cap was lowered) is caught up by the pruner."""

    @abc.abstractmethod
    def events(self, app_id: int, limit: int = 1000) -> list[StoredEvent]:
        """The app's newest events, oldest first."""

    @abc.abstractmethod
    def event_usage(self, app_id: int) -> EventUsage:
        """How many events the app has stored, and their bytes."""

    @abc.abstractmethod
    def delete_events_before(self, cutoff: float, limit: int) -> int:
        """In one short transaction, delete up to ``limit`` events (of any app)
        received before ``cutoff``, oldest first, through an index; returns how
        many."""

    @abc.abstractmethod
    def apps_over_event_cap(self, cap: EventCap) -> list[int]:
        """The ids of the apps whose stored events exceed ``cap``."""

    @abc.abstractmethod
    def trim_events(self, app_id: int, cap: EventCap, limit: int) -> int:
        """In one short transaction, delete up to ``limit`` of the app's oldest
        events, as many as it takes to bring the app within ``cap``; returns how
        many."""
