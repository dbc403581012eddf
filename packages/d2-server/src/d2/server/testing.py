"""A real d2-server for tests: uvicorn on a free 127.0.0.1 port, a temporary SQLite
file (or a PostgreSQL database), a clock the test controls, tokens, and helpers
that speak the protocol. :func:`postgres_server` (a throwaway PostgreSQL) and
:class:`PostgresDatabases` come from :mod:`d2.server.testing_postgres`.

Needs ``httpx`` (a development dependency of the workspace), imported here only::

    from d2.server.testing import start_server

    with start_server(tmp_path) as server:
        server.register_key()
        server.publish(server.policy({"role": "r", "permissions": ["t"]}))
        r = server.fetch_bundle()                       # 200 {"jws", "version": 1}
        server.clock.advance(3600)                      # server time moves on
        server.rotate_key("ES256", overlap=600)         # next bundles: jwks_refresh

``tests-integration/conftest.py`` wraps it in the ``d2_server`` and
``d2_server_factory`` fixtures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("d2.server.testing needs httpx: pip install httpx") from exc

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.types import ASGIApp

from .app import create_app
from .config import Quotas, ServerConfig
from .retention import EventPruner
from .service import ControlPlane
from .signing import DEFAULT_ALGORITHM
from .storage import App, SigningKeyRecord, StoredEvent
from .store import SQLStorage
from .testing_postgres import PostgresDatabases, postgres_binaries, postgres_server

__all__ = [
    "AppTokens",
    "D2Server",
    "DeviceKey",
    "FakeClock",
    "LiveServer",
    "PostgresDatabases",
    "postgres_binaries",
    "postgres_server",
    "start_server",
]

_UNSET: Any = object()


class FakeClock:
    """A clock that stands still until told: ``clock()`` is the time,
    ``advance(seconds)`` and ``set(epoch)`` move it. Starts at the real time (so
    bundles' ``exp`` mean something to a client on the real clock). Thread-safe."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds``; returns the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, epoch: float) -> None:
        """Jump to ``epoch`` (seconds since the epoch)."""
        with self._lock:
            self._now = float(epoch)


class _QuickServer(uvicorn.Server):
    """uvicorn's server, checking ``should_exit`` every 10 ms instead of 100 ms so a
    test's teardown does not wait."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.01)


class LiveServer:
    """An ASGI app served by uvicorn in a background thread (with its own event
    loop) on ``127.0.0.1`` and a port the OS chose, lifespan on (the app's startup
    runs before :meth:`start` returns, its shutdown in :meth:`stop`)."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1") -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose
        # proto says TCP; without it every keep-alive response waits ~40 ms for a
        # delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = _QuickServer(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()


class DeviceKey:
    """An Ed25519 device key as the CLI keeps one: ``key_id``, the public key in
    base64, and :meth:`sign` for publish bodies."""

    def __init__(
        self, key_id: str = "test-device", private_key: ed25519.Ed25519PrivateKey | None = None
    ) -> None:
        self.key_id = key_id
        self.private_key = private_key or ed25519.Ed25519PrivateKey.generate()

    @property
    def public_key_b64(self) -> str:
        """Base64 of the raw 32-byte public key (the ``POST /v1/keys`` form)."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    def sign(self, body: bytes) -> str:
        """Base64 Ed25519 signature of ``body`` (the ``X-D2-Signature`` value)."""
        return base64.b64encode(self.private_key.sign(body)).decode("ascii")

    @property
    def registration(self) -> bytes:
        """The ``POST /v1/keys`` body that registers this key."""
        return json.dumps(
            {"key_id": self.key_id, "algorithm": "Ed25519", "public_key": self.public_key_b64}
        ).encode()


@dataclass(frozen=True)
class AppTokens:
    """An app with a runtime and a developer token."""

    account_id: str
    app_name: str
    runtime_token: str
    developer_token: str


def _body(document: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(document, bytes):
        return document
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass
class D2Server:
    """Handles on a running test server.

    ``base_url``, ``jwks_url``; ``account_id`` / ``app_name`` and their
    ``runtime_token`` (``policy:read events:write``) and ``developer_token``
    (adds ``policy:write``); ``clock`` (a :class:`FakeClock` unless another clock
    was given); ``plane`` / ``storage`` for direct access; ``db_path`` (the
    SQLite file; unused on PostgreSQL); ``db``, the ``--db`` of its database (that
    path or the ``postgresql://`` URL); ``pruner``,
    the server's background usage-event pruner.
    """

    base_url: str
    account_id: str
    app_name: str
    runtime_token: str
    developer_token: str
    clock: Any
    plane: ControlPlane
    db_path: Path
    pruner: EventPruner | None = None
    device_key: DeviceKey | None = None
    db: str = ""
    _clients: list[httpx.Client] = field(default_factory=list, repr=False)
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def jwks_url(self) -> str:
        """The JWKS URL (``D2_JWKS_URL`` for a client)."""
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def storage(self) -> SQLStorage:
        """The server's storage."""
        storage = self.plane.storage
        assert isinstance(storage, SQLStorage)
        return storage

    @property
    def app(self) -> App:
        """The default app's record."""
        return self.plane.app(self.account_id, self.app_name)

    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment variables pointing a D2 client at this server."""
        return {
            "D2_TOKEN": token or self.runtime_token,
            "D2_API_URL": self.base_url,
            "D2_JWKS_URL": self.jwks_url,
        }

    def client(self, token: str | None = None) -> httpx.Client:
        """An ``httpx.Client`` on ``base_url`` sending ``token`` (default: the
        developer token; pass ``""`` for none). Closed when the server stops."""
        tok = self.developer_token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)
        self._clients.append(client)
        return client

    def _request(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        tok = self.developer_token if token is None else token
        headers = dict(kwargs.pop("headers", {}) or {})
        if tok:
            headers.setdefault("Authorization", f"Bearer {tok}")
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=30.0)
        return self._http.request(method, path, headers=headers, **kwargs)

    def policy(self, *entries: Mapping[str, Any], **metadata: Any) -> dict[str, Any]:
        """A valid policy document for this app (``metadata.name`` set); without
        entries, one role ``user`` allowed ``ping``."""
        meta = {"name": self.app_name, **metadata}
        roles = [dict(e) for e in entries] or [{"role": "user", "permissions": ["ping"]}]
        return {"metadata": meta, "policies": roles}

    def register_key(self, key: DeviceKey | None = None, *, token: str | None = None) -> DeviceKey:
        """Register ``key`` (default: a new one) for the app of ``token`` (default:
        the developer token of this app). Device keys belong to one app: the first
        key registered for this app is kept as ``device_key``, the default of
        :meth:`publish`; publishing for another app needs its own key."""
        key = key or DeviceKey()
        r = self._request(
            "POST",
            "/v1/keys",
            token,
            json={"key_id": key.key_id, "algorithm": "Ed25519", "public_key": key.public_key_b64},
        )
        if r.status_code != 201:
            raise AssertionError(f"registering the device key failed: {r.status_code} {r.text}")
        if self.device_key is None and token in (None, self.developer_token):
            self.device_key = key
        return key

    def current_etag(self, token: str | None = None) -> str | None:
        """The ETag of the bundle in force, or ``None`` (none published, or revoked)."""
        r = self.fetch_bundle(token=token)
        return r.headers["etag"] if r.status_code == 200 else None

    def publish(
        self,
        document: Mapping[str, Any] | bytes,
        *,
        key: DeviceKey | None = None,
        if_match: str | None = _UNSET,
        if_none_match: str | None = _UNSET,
        signature: str | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        """``POST /v1/policy/publish`` of ``document`` (a mapping is sent as compact
        JSON; bytes are sent as they are), signed by ``key`` (default: this app's
        registered device key, registering one first if needed; pass a key
        registered for the token's app when ``token`` is another app's).

        Preconditions default to the right ones: ``If-Match`` with the current ETag,
        or ``If-None-Match: *`` when no policy is in force. Pass ``if_match`` /
        ``if_none_match`` explicitly (``None`` to omit) to test refusals."""
        body = _body(document)
        if key is None:
            key = self.device_key or self.register_key()
        headers = {"X-D2-Key-Id": key.key_id, "X-D2-Signature": signature or key.sign(body)}
        if if_match is _UNSET and if_none_match is _UNSET:
            etag = self.current_etag(token)
            if_match, if_none_match = (etag, None) if etag else (None, "*")
        if if_match not in (_UNSET, None):
            headers["If-Match"] = if_match
        if if_none_match not in (_UNSET, None):
            headers["If-None-Match"] = if_none_match
        return self._request("POST", "/v1/policy/publish", token, content=body, headers=headers)

    def fetch_bundle(self, etag: str | None = None, *, token: str | None = None) -> httpx.Response:
        """``GET /v1/policy/bundle`` (with ``If-None-Match: etag`` when given),
        with the runtime token unless ``token`` is given."""
        headers = {"If-None-Match": etag} if etag else {}
        tok = self.runtime_token if token is None else token
        return self._request("GET", "/v1/policy/bundle", tok, headers=headers)

    def revoke(self, *, token: str | None = None) -> httpx.Response:
        """``POST /v1/policy/revoke``."""
        return self._request("POST", "/v1/policy/revoke", token)

    def jwks(self) -> dict[str, Any]:
        """The current JWKS."""
        r = self._request("GET", "/.well-known/jwks.json", "")
        data: dict[str, Any] = r.json()
        return data

    def verify(self, jws: str, jwks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Verify a bundle against ``jwks`` (default: fetched now) as a client
        would: ``kid`` lookup, the key's own algorithm, ``aud`` of this app, ``exp``
        on the server's clock. Returns the claims; raises ``jwt`` errors
        (``jwt.InvalidKeyError`` for a ``kid`` missing from the JWKS)."""
        keys = jwt.PyJWKSet.from_dict(dict(jwks or self.jwks()))
        kid = jwt.get_unverified_header(jws).get("kid")
        found = [k for k in keys.keys if k.key_id == kid]
        if not found:
            raise jwt.InvalidKeyError(f"kid {kid!r} is not in the JWKS")
        key = found[0]
        decoder = jwt.PyJWT({"verify_iat": False})
        claims: dict[str, Any] = decoder.decode(
            jws,
            key.key,
            algorithms=[key.algorithm_name],
            audience=f"d2-policy:{self.account_id}:{self.app_name}",
            options={"verify_exp": False},
        )
        if claims["exp"] <= self.clock():
            raise jwt.ExpiredSignatureError("bundle expired (server clock)")
        return claims

    def rotate_key(
        self, alg: str = DEFAULT_ALGORITHM, *, overlap: float = 3600.0
    ) -> SigningKeyRecord:
        """``d2-server rotate-key``: a new active key, the old one kept ``overlap``
        seconds (of the server's clock) in the JWKS."""
        return self.plane.rotate_key(alg, overlap=overlap)

    def add_app(self, name: str) -> AppTokens:
        """Another app of the same account, with its own tokens."""
        app = self.plane.app(self.account_id, name)
        return AppTokens(
            self.account_id,
            name,
            self.plane.create_token(app, "runtime"),
            self.plane.create_token(app, "developer"),
        )

    def token(self, scopes: str = "runtime", app_name: str | None = None) -> str:
        """A new token for this account (``scopes`` as in ``d2-server token create``)."""
        app = self.plane.app(self.account_id, app_name or self.app_name)
        return self.plane.create_token(app, scopes)

    def events(self, app_name: str | None = None) -> list[StoredEvent]:
        """The usage events stored for the app, oldest first."""
        app = self.plane.app(self.account_id, app_name or self.app_name)
        return self.storage.events(app.id)

    def close_clients(self) -> None:
        """Close the clients made by :meth:`client` and the helpers' own."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self._http is not None:
            self._http.close()
            self._http = None


@contextmanager
def start_server(
    directory: str | Path,
    *,
    app_name: str = "test-app",
    quotas: Quotas | None = None,
    alg: str = DEFAULT_ALGORITHM,
    clock: Any = None,
    poll_seconds: int = 5,
    bundle_lifetime: int = 86400,
    bundle_refresh: int | None = None,
    ingest_burst: int = 1000,
    ingest_window: float = 60.0,
    max_body_bytes: int = 8 * 1024 * 1024,
    events_retention_days: int = 30,
    events_max_per_app: int = 1_000_000,
    events_max_bytes_per_app: int = 256 * 1024 * 1024,
    events_prune_interval: float = 3600.0,
    events_prune_batch: int = 5000,
    db: str | None = None,
) -> Iterator[D2Server]:
    """Run a d2-server on a free 127.0.0.1 port with its database in ``directory``
    (``d2-server.db``, created, or opened when it exists; or ``db``, a
    ``postgresql://`` URL or a file path, migrated), one new account and app
    (``app_name``) with a runtime and a developer token, signing with ``alg``; stop
    it and close everything on exit.

    ``clock`` defaults to a new :class:`FakeClock`; the other arguments are
    :class:`~d2.server.config.ServerConfig` / :class:`~d2.server.config.Quotas`
    fields (``ingest_burst`` is high by default; lower it to provoke 429)."""
    clock = clock if clock is not None else FakeClock()
    config = ServerConfig(
        poll_seconds=poll_seconds,
        bundle_lifetime=bundle_lifetime,
        bundle_refresh=bundle_refresh,
        ingest_burst=ingest_burst,
        ingest_window=ingest_window,
        max_body_bytes=max_body_bytes,
        events_retention_days=events_retention_days,
        events_max_per_app=events_max_per_app,
        events_max_bytes_per_app=events_max_bytes_per_app,
        events_prune_interval=events_prune_interval,
        events_prune_batch=events_prune_batch,
        clock=clock,
    )
    db_path = Path(db) if db and "://" not in db else Path(directory) / "d2-server.db"
    storage = SQLStorage(db if db else db_path, migrate=True)
    try:
        plane = ControlPlane(storage, config)
        plane.ensure_signing_key(alg)
        account, app = plane.create_account(app_name, quotas)
        asgi = create_app(plane)
        live = LiveServer(asgi)
        server = D2Server(
            base_url=live.base_url,
            account_id=account.id,
            app_name=app.name,
            runtime_token=plane.create_token(app, "runtime"),
            developer_token=plane.create_token(app, "developer"),
            clock=clock,
            plane=plane,
            db_path=db_path,
            db=db if db and "://" in db else str(db_path),
        )
        live.start()
        server.pruner = asgi.state.pruner
        try:
            yield server
        finally:
            server.close_clients()
            live.stop()
    finally:
        storage.close()
