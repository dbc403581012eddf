"""The control plane: what each endpoint does, independent of HTTP.

:class:`ControlPlane` ties the storage, the signing keys, the rate limiter and the
clock together. Its methods are synchronous (the HTTP layer runs them in a thread
pool) and raise :class:`~d2.server.errors.ApiError` to refuse a request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .bodies import Draft, DraftIn, Events, Identity, Jwks, Key, KeyIn, PlanQuotas, parse_body
from .config import Quotas, ServerConfig
from .devicekeys import DEVICE_KEY_ALGORITHM, decode_base64, valid_key_id, verify_signature
from .errors import ApiError
from .keyseal import (
    SECRET_ENV,
    KeySealer,
    KeySecretError,
    check_rotation,
    check_stored_keys,
    private_pem,
)
from .policycheck import check_policy, check_size, parse_policy
from .preconditions import ETagSet, check_publish_precondition, matches
from .ratelimit import RateLimiter
from .signing import (
    DEFAULT_ALGORITHM,
    KeyCache,
    SigningKey,
    bundle_etag,
    bundle_payload,
    carries_jwks_refresh,
)
from .storage import (
    Account,
    App,
    Bundle,
    BundleState,
    EventCap,
    KeyRegistration,
    NewVersion,
    PollState,
    Principal,
    PublishState,
    SigningKeyRecord,
    Storage,
)
from .strictjson import canonical_json
from .tokens import (
    EVENTS_WRITE,
    POLICY_READ,
    POLICY_WRITE,
    TOKEN_PREFIX,
    hash_token,
    looks_like_token,
    new_token,
    parse_scopes,
)

__all__ = ["APP_NAME", "ControlPlane", "check_app_name"]

APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""App names: they appear in ``aud`` (``d2-policy:<account>:<app>``), so no ``:``."""


def check_app_name(name: str) -> None:
    """``ValueError`` unless ``name`` is a valid app name (:data:`APP_NAME`)."""
    if not APP_NAME.fullmatch(name):
        raise ValueError(
            f"invalid app name {name!r}: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


_SERVED_MAX = 4096
_SERVED_MAX_BYTES = 64 * 1024 * 1024
_log = logging.getLogger("d2.server")


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="d2"'})


class ControlPlane:
    """The reference control plane over a :class:`~d2.server.storage.Storage`.

    ``secret`` encrypts the private signing keys at rest (:mod:`d2.server.keyseal`);
    ``None`` reads it from ``D2_SERVER_SECRET``. Without one, new keys are stored in
    clear and :meth:`check_signing_keys` warns; a set but weak (or empty) secret
    raises :class:`~d2.server.keyseal.KeySecretError` here."""

    def __init__(
        self, storage: Storage, config: ServerConfig | None = None, *, secret: str | None = None
    ) -> None:
        if secret is None:
            secret = os.environ.get(SECRET_ENV)
        self._sealer = KeySealer(secret) if secret is not None else None
        self.storage = storage
        self.config = config or ServerConfig()
        self.clock = self.config.clock
        self.limiter = RateLimiter(self.config.ingest_burst, self.config.ingest_window, self.clock)
        self.event_cap = EventCap(
            self.config.events_max_per_app, self.config.events_max_bytes_per_app
        )
        self._keys = KeyCache()
        # ETag -> (a bundle this process served, whether it carries
        # ``jwks_refresh``). An ETag is a digest of the JWS (``bundle_etag``), so
        # an entry can never go stale; at most _SERVED_MAX entries and about
        # _SERVED_MAX_BYTES of JWS (emptied when either is reached).
        self._served: dict[str, tuple[Bundle, bool]] = {}
        self._served_bytes = 0
        self._served_lock = threading.Lock()

    def now(self) -> float:
        """The current time of the injected clock."""
        return float(self.clock())

    # administration (CLI, test harness)
    def create_account(
        self,
        app_name: str = "default",
        quotas: Quotas | None = None,
        *,
        account_id: str | None = None,
    ) -> tuple[Account, App]:
        """A new account with one app (stored together: both or neither); creates
        the first signing key if none exists. ``ValueError`` for an invalid app
        name, before anything is stored."""
        check_app_name(app_name)
        self.ensure_signing_key()
        account_id = account_id or "acc_" + secrets.token_hex(8)
        return self.storage.create_account_with_app(
            account_id, quotas or Quotas(), app_name, self.now()
        )

    def app(self, account_id: str, name: str) -> App:
        """The app ``name`` of the account, created when missing."""
        check_app_name(name)
        if self.storage.get_account(account_id) is None:
            raise ValueError(f"no account {account_id!r}")
        return self.storage.ensure_app(account_id, name, self.now())

    def create_token(self, app: App, scopes: str | Sequence[str] = "runtime") -> str:
        """A new token for ``app`` (returned once; only its hash is stored)."""
        token = new_token()
        self.storage.add_token(hash_token(token), app, parse_scopes(scopes), self.now())
        return token

    def revoke_token(self, token: str) -> Principal:
        """Delete ``token`` (given in full: only its hash is stored); the principal
        it was. ``ValueError`` when it is not a token of this server."""
        token = token.strip()
        if not looks_like_token(token):
            raise ValueError(f"that is not a d2-server token (they start with {TOKEN_PREFIX})")
        principal = self.storage.delete_token(hash_token(token))
        if principal is None:
            raise ValueError("no such token in this database (already revoked?)")
        return principal

    def ensure_signing_key(self, alg: str = DEFAULT_ALGORITHM) -> SigningKeyRecord:
        """The active signing key, generated with ``alg`` when there is none."""
        active = self.storage.active_signing_key()
        return active if active is not None else self.rotate_key(alg, overlap=0.0)

    def rotate_key(
        self,
        alg: str = DEFAULT_ALGORITHM,
        *,
        overlap: float = 86400.0,
        replace_secret: bool = False,
    ) -> SigningKeyRecord:
        """Make a new key active; the previous one stays in the JWKS for ``overlap``
        seconds and bundles signed meanwhile carry ``jwks_refresh: true``. The
        current version of every app is re-signed on its next fetch, and once more
        after the overlap (without the flag).

        Before anything is stored, this process's secret must open every published
        encrypted key (:func:`~d2.server.keyseal.check_rotation`;
        :class:`~d2.server.keyseal.KeySecretError` otherwise).
        ``replace_secret=True`` stores the new key under this secret without that
        check, to replace a lost or leaked secret: it needs ``overlap=0``
        (``ValueError`` otherwise), so no key under the old secret stays published."""
        if overlap < 0:
            raise ValueError("overlap must be >= 0")
        if replace_secret and overlap != 0:
            raise ValueError(
                "replacing the secret needs --overlap 0: keys under the old secret must "
                "leave the JWKS with the rotation, or no replica could start with either "
                "secret during the overlap"
            )
        now = self.now()
        check_rotation(
            self.storage.published_signing_keys(now),
            self._sealer,
            self._signing_key,
            replace_secret=replace_secret,
        )
        key = SigningKey.generate(alg)
        pem = key.pem() if self._sealer is None else self._sealer.seal(key.pem(), key.kid, alg)
        record = SigningKeyRecord(key.kid, alg, pem, key.jwk, now)
        self.storage.add_signing_key(record, overlap=overlap, now=now)
        stored = self.storage.active_signing_key()
        assert stored is not None
        return stored

    def _signing_key(self, record: SigningKeyRecord) -> SigningKey:
        key = self._keys.cached(record.kid)
        if key is None:
            key = self._keys.load(record.kid, private_pem(record, self._sealer), record.alg)
        return key

    def check_signing_keys(self) -> None:
        """Refuse to serve with signing keys this process cannot use, before the
        first request (the app's lifespan calls it): see
        :func:`~d2.server.keyseal.check_stored_keys`. Each key it decrypts is loaded."""
        active = self.storage.active_signing_key()
        check_stored_keys(
            self.storage.published_signing_keys(self.now()),
            active.kid if active is not None else None,
            self._sealer,
            self._signing_key,
        )

    def health(self) -> None:
        """Raise when the database cannot answer a cheap query."""
        self.storage.schema_revision()

    # authentication
    @staticmethod
    def _token_hash(authorization: str | None) -> str:
        if not authorization:
            raise _unauthorized("missing_token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not looks_like_token(token):
            raise _unauthorized("invalid_token")
        return hash_token(token)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header; 401 otherwise."""
        principal = self.storage.find_token(self._token_hash(authorization))
        if principal is None:
            raise _unauthorized("invalid_token")
        return principal

    @staticmethod
    def require(principal: Principal, scope: str) -> None:
        """403 ``missing_scope`` unless the token holds ``scope``."""
        if scope not in principal.scopes:
            raise ApiError(403, "missing_scope", scope=scope)

    # identity and keys
    def identity(self, principal: Principal) -> Identity:
        """The ``GET /v1/accounts/me`` body."""
        quotas = principal.account.quotas
        return Identity(
            account_id=principal.account.id,
            app_name=principal.app.name,
            plan=quotas.plan,
            poll_seconds=self.config.poll_seconds,
            quotas=PlanQuotas(**quotas.reported()),
            scopes=list(principal.scopes),
        )

    def jwks(self) -> Jwks:
        """The ``GET /.well-known/jwks.json`` body."""
        keys = [k.jwk for k in self.storage.published_signing_keys(self.now())]
        return Jwks.model_validate({"keys": keys})

    # bundles
    def _sign(
        self,
        record: SigningKeyRecord,
        app: App,
        version: int,
        document: dict[str, Any],
        iat: int,
        exp: int,
    ) -> Bundle:
        try:
            key = self._signing_key(record)
        except KeySecretError as exc:
            _log.error("cannot sign: %s", exc)
            raise ApiError(503, "signing_key_unavailable") from None
        payload = bundle_payload(
            account_id=app.account_id,
            app_name=app.name,
            version=version,
            iat=iat,
            exp=exp,
            document=document,
        )
        jws = key.sign(payload, jwks_refresh=self._in_rotation(record))
        return Bundle(app.id, version, jws, bundle_etag(jws), key.kid, iat, exp)

    def bundle(self, principal: Principal) -> Bundle:
        """The app's current bundle, re-signed first when it is old or was signed
        with a key that is no longer active. 404 ``no_policy``, 410 ``revoked``."""
        self.require(principal, POLICY_READ)
        app = principal.app
        state = self.storage.bundle_state(app.id)
        state = self._check_served(state)
        assert state.bundle is not None
        active = self.storage.active_signing_key()
        if active is not None and self._needs_resign(state.bundle, active):
            state = self._check_served(
                self.storage.refresh_bundle(
                    app.id, lambda st, key: self._resign(principal, st, key), self.now()
                )
            )
        assert state.bundle is not None
        self._flag(state.bundle)  # remembered for the fast path
        return state.bundle

    def _flag(self, bundle: Bundle) -> bool:
        """Whether ``bundle`` carries ``jwks_refresh``, parsed once per ETag; the
        bundle is remembered for :meth:`servable`."""
        served = self._served.get(bundle.etag)
        if served is not None:
            return served[1]
        flagged = carries_jwks_refresh(bundle.jws)
        with self._served_lock:
            if (
                len(self._served) >= _SERVED_MAX
                or self._served_bytes + len(bundle.jws) > _SERVED_MAX_BYTES
            ):
                self._served.clear()
                self._served_bytes = 0
            if bundle.etag not in self._served:
                self._served[bundle.etag] = (bundle, flagged)
                self._served_bytes += len(bundle.jws)
        return flagged

    def poll_token_hash(self, authorization: str | None) -> str | None:
        """The token hash a poll's :class:`~d2.server.storage.PollState` is read
        for, or ``None`` when the header is no bearer token (the full path then
        answers 401)."""
        try:
            return self._token_hash(authorization)
        except ApiError:
            return None

    def servable(self, state: PollState | None) -> Bundle | None:
        """The fast path of a poll: the bundle :meth:`bundle` would serve as it is
        in ``state``, when this process has served it before; ``None`` when the
        request needs :meth:`authenticate` and :meth:`bundle` (any refusal, a
        bundle due for re-signing, a bundle this process has not served).

        No storage access, no signing: ``state`` is one read
        (:meth:`~d2.server.storage.Storage.poll_state`, or the
        :class:`~d2.server.pollcache.PollCache`). The only memo is keyed by ETag
        (a digest of the signed bytes), so another process's publish, revocation,
        key rotation or token change in ``state`` is what decides."""
        if (
            state is None
            or POLICY_READ not in state.scopes
            or state.current_version == 0
            or state.revoked
            or state.etag is None
            or state.bundle_kid is None
            or state.bundle_iat is None
            or state.active_kid is None
        ):
            return None
        served = self._served.get(state.etag)
        if served is None:
            return None
        bundle, flagged = served
        if (
            bundle.app_id != state.app_id
            or bundle.version != state.current_version
            or bundle.kid != state.bundle_kid
            or bundle.iat != state.bundle_iat
        ):
            return None
        if self._resign_due(
            state.bundle_kid,
            state.bundle_iat,
            state.active_kid,
            state.active_refresh_until,
            lambda: flagged,
        ):
            return None
        return bundle

    @staticmethod
    def _check_served(state: BundleState) -> BundleState:
        if state.current_version == 0 or state.bundle is None:
            raise ApiError(404, "no_policy")
        if state.revoked:
            raise ApiError(410, "revoked")
        return state

    def _in_rotation(self, record: SigningKeyRecord) -> bool:
        """Whether bundles signed by ``record`` now carry ``jwks_refresh``: until
        the key it replaced leaves the JWKS."""
        return self._rotating(record.refresh_until)

    def _rotating(self, refresh_until: float | None) -> bool:
        return refresh_until is not None and self.now() < refresh_until

    def _needs_resign(self, bundle: Bundle, active: SigningKeyRecord) -> bool:
        """Re-sign a bundle signed by another key, or old, or still flagged
        ``jwks_refresh`` after the rotation's overlap ended."""
        return self._resign_due(
            bundle.kid,
            bundle.iat,
            active.kid,
            active.refresh_until,
            lambda: self._flag(bundle),
        )

    def _resign_due(
        self,
        kid: str,
        iat: int,
        active_kid: str,
        active_refresh_until: float | None,
        flagged: Callable[[], bool],
    ) -> bool:
        return (
            kid != active_kid
            or self.now() - iat >= self.config.refresh_after
            or (not self._rotating(active_refresh_until) and flagged())
        )

    def _resign(
        self, principal: Principal, state: BundleState, active: SigningKeyRecord
    ) -> Bundle | None:
        old = state.bundle
        if old is None or state.document is None or not self._needs_resign(old, active):
            return None
        # a key change (or dropping jwks_refresh) alone keeps the claims byte for byte
        iat, exp = old.iat, old.exp
        if self.now() - old.iat >= self.config.refresh_after:
            iat = int(self.now())
            exp = iat + self.config.bundle_lifetime
        document = json.loads(state.document)
        return self._sign(active, principal.app, old.version, document, iat, exp)

    def bundle_matches(self, bundle: Bundle, if_none_match: ETagSet | None) -> bool:
        """Whether ``If-None-Match`` names the bundle being served (-> 304)."""
        return if_none_match is not None and matches(if_none_match, frozenset({bundle.etag}))

    # authoring
    def publish(
        self,
        principal: Principal,
        body: bytes,
        *,
        key_id: str | None,
        signature: str | None,
        if_match: ETagSet | None,
        if_none_match: ETagSet | None,
    ) -> NewVersion:
        """Publish ``body`` (the policy document's JSON bytes) as the next version.

        In one transaction: the device key's signature over the exact bytes (401),
        size and tool limits (402), validation (422), the precondition (412/428), the
        app quota (403), then the version bump and the signed bundle."""
        self.require(principal, POLICY_WRITE)
        if not key_id:
            raise _unauthorized("missing_key_id")
        if not valid_key_id(key_id):
            raise _unauthorized("unknown_key")
        if not signature:
            raise _unauthorized("missing_signature")
        raw_signature = decode_base64(signature)
        if raw_signature is None or len(raw_signature) != 64:
            raise _unauthorized("bad_signature")
        quotas = principal.account.quotas
        now = self.now()

        def decide(state: PublishState) -> NewVersion:
            if state.device_public_key is None:
                raise _unauthorized("unknown_key")
            if not verify_signature(state.device_public_key, raw_signature, body):
                raise _unauthorized("bad_signature")
            check_size(len(body), quotas)
            document = parse_policy(body)
            canonical = check_policy(document, app_name=principal.app.name, quotas=quotas, now=now)
            check_publish_precondition(
                if_match=if_match,
                if_none_match=if_none_match,
                current_version=state.current_version,
                revoked=state.revoked,
                etags=state.etags,
            )
            in_force = state.current_version > 0 and not state.revoked
            if not in_force and state.live_apps >= quotas.max_apps:
                raise ApiError(
                    403,
                    "quota_apps_exceeded",
                    limit=quotas.max_apps,
                    message="the plan's app limit is reached; revoke an unused app or upgrade",
                )
            if state.signing_key is None:
                raise ApiError(503, "no_signing_key")
            version = state.current_version + 1
            iat = int(now)
            exp = iat + self.config.bundle_lifetime
            bundle = self._sign(state.signing_key, principal.app, version, document, iat, exp)
            return NewVersion(version, canonical, body, key_id, raw_signature, bundle)

        return self.storage.publish(principal.app, key_id, decide, now)

    def revoke(self, principal: Principal) -> int:
        """Revoke the app's policy; returns the revoked version. 404 ``no_policy``."""
        self.require(principal, POLICY_WRITE)
        version = self.storage.revoke(principal.app.id, self.now())
        if version is None:
            raise ApiError(404, "no_policy")
        return version

    def put_draft(self, principal: Principal, body: bytes) -> int:
        """Store the app's draft; returns its version."""
        self.require(principal, POLICY_WRITE)
        draft = parse_body(DraftIn, body, "invalid_draft")
        version, document = draft.version, draft.bundle.root
        quotas = principal.account.quotas
        check_size(len(canonical_json(document).encode()), quotas)
        now = self.now()
        canonical = check_policy(document, app_name=principal.app.name, quotas=quotas, now=now)
        self.storage.put_draft(principal.app.id, version, canonical, now)
        return version

    def get_draft(self, principal: Principal) -> Draft:
        """The ``GET /v1/policy/draft`` body; 404 ``no_draft``."""
        self.require(principal, POLICY_WRITE)
        draft = self.storage.get_draft(principal.app.id)
        if draft is None:
            raise ApiError(404, "no_draft")
        return Draft(version=draft.version, bundle=json.loads(draft.document))

    def register_key(self, principal: Principal, body: bytes) -> Key:
        """Register a device key for the token's app (publishes to that app only);
        409 ``key_id_conflict`` when the app has another key under that id."""
        self.require(principal, POLICY_WRITE)
        key = parse_body(KeyIn, body, "invalid_key")
        outcome = self.storage.add_device_key(
            principal.app.id, key.key_id, key.raw_public_key, self.now()
        )
        if outcome is KeyRegistration.CONFLICT:
            raise ApiError(409, "key_id_conflict")
        return Key(key_id=key.key_id, algorithm=DEVICE_KEY_ALGORITHM)

    # events
    def admit_events(self, principal: Principal) -> None:
        """Scope and rate-limit checks of an ingest, before its body is read."""
        self.require(principal, EVENTS_WRITE)
        wait = self.limiter.acquire(principal.token_hash)
        if wait:
            raise ApiError(
                429, "rate_limited", headers={"Retry-After": str(wait)}, retry_after=wait
            )

    def ingest(self, principal: Principal, body: bytes) -> int:
        """Store a batch of usage events; returns how many. An app at its event
        cap keeps the newest: the same transaction deletes its oldest events."""
        self.require(principal, EVENTS_WRITE)
        batch = principal.account.quotas.event_batch
        parsed = parse_body(Events, body, "invalid_events", context={"max_events": batch})
        if not parsed.events:
            return 0
        events = [event.row() for event in parsed.events]
        return self.storage.add_events(
            principal.app.id,
            principal.token_hash,
            events,
            self.now(),
            cap=self.event_cap,
            # the storage deletes what this upload stored (its bytes as stored, not
            # the body's: canonical JSON can be larger); up to a prune batch more
            # catches up on an app whose cap was lowered
            trim_limit=self.config.events_prune_batch,
        )
