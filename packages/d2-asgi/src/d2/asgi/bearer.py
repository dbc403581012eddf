"""The user from a verified bearer JWT: :func:`jwt_extractor`.

``jwt_extractor(jwks_url=..., audience=...)`` returns a user extractor (for
:class:`~d2.asgi.ASGIMiddleware`, the approvals inbox, or any ASGI code) that reads
``Authorization: Bearer <JWT>``, verifies it against the keys of a JWKS endpoint
and answers ``(user_id, roles)``, or ``None`` (no user) for anything it cannot
verify: no token, a malformed one, a bad signature, an unknown key, an expired or
not-yet-valid token, another audience or issuer.

What is accepted, decided by the key, never by the token:

* Only asymmetric signatures: ``RS256/384/512`` and ``PS256/384/512`` (RSA keys of
  2048 bits or more), ``ES256`` / ``ES384`` / ``ES512`` (EC keys on P-256, P-384,
  P-521: one algorithm per curve) and ``EdDSA`` (Ed25519 / Ed448 keys). ``none``
  and every HMAC algorithm are refused before any key is read, and a token whose
  ``alg`` is not one its key admits is refused (no algorithm confusion). A key
  that declares ``alg`` admits that algorithm only.
* ``exp`` and ``aud`` are required (``aud`` must name ``audience``; a list that
  names it is accepted, as RFC 7519 allows); ``iss`` must equal ``issuer`` when
  one is given; ``nbf`` and ``iat`` are checked when present; all with ``leeway``
  seconds of clock skew. A token with a ``crit`` or ``b64`` header is refused, and
  so is one whose ``typ`` header is present and is not ``JWT`` or ``at+jwt``
  (``application/`` prefix optional, any case): a logout token, a security event
  token or a DPoP proof of the same provider is not a login. An ID token usually
  says ``JWT`` (or nothing) and is accepted like an access token: give the inbox
  an audience of its own, which only tokens meant for it name.

The JWKS is fetched with httpx's async client (never blocking the event loop) on
first use, again after ``cache_seconds``, and when a token names a key id it does
not know (at most once per ``refresh_floor`` seconds, so made-up key ids cannot
hammer the identity provider); concurrent requests share one fetch. A request
whose key is known does not wait for a fetch under way (keys older than
``cache_seconds`` are fetched again in the background, the known ones answering
meanwhile). Each document must arrive
whole within ``timeout`` seconds. A failed fetch keeps the keys it had. The floor
has a cost: a key the provider has just rotated in is refused for up to
``refresh_floor`` seconds (30) after any fetch, for example one that a made-up
key id triggered; publish a new key in the JWKS before signing with it, as
providers do. ``jwks_url`` must be ``https://`` except on the loopback interface.

OIDC discovery: give ``oidc_issuer`` instead of ``jwks_url`` and the JWKS URL is
read from ``{oidc_issuer without a trailing slash}/.well-known/openid-configuration``,
fetched the same way (async, bounded, no redirects, ``https://`` except on
loopback) on first use and again after ``cache_seconds``. The document's
``issuer`` must be *identical* to ``oidc_issuer`` (OpenID Connect Discovery 1.0,
4.3: a document naming another issuer is another provider's, the mix-up attack)
and its ``jwks_uri`` must pass the same URL check; otherwise it is refused and the
log says why. ``issuer`` defaults to ``oidc_issuer``, so the token's ``iss`` must
match it too. Until a discovery succeeds every token is refused (fail closed),
retried at most once per ``refresh_floor``; a later failed discovery keeps the JWKS
URL and the keys already known.

The claims: ``user_claim`` (default ``sub``) is the user id; ``roles_claim``
(default ``roles``) the roles, a list of strings or a space-separated string (as
OAuth's ``scope``). Both are claim names or dotted paths into nested objects
(``realm_access.roles``); a claim whose full name holds dots
(``https://example.invalid/roles``) is read by that name first. See
:func:`identity_from_claims`.

Needs ``pip install "d2-asgi[jwt]"`` (PyJWT with its crypto backend, and httpx);
this module imports them only when an extractor is made.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from d2.core import ConfigurationError

from ._idp import check_issuer_url, check_url, get_json, jwks_uri_of
from .types import Scope

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JWTExtractor",
    "bearer_token",
    "identity_from_claims",
    "jwt_extractor",
]

log = logging.getLogger("d2.asgi")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""The signature algorithms a verified-JWT extractor can ever accept."""

_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_RSA_MIN_BITS = 2048
_MAX_TOKEN = 16 * 1024  # characters: a bigger "token" is refused unread
_DISCOVERY = "/.well-known/openid-configuration"
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token
_SPACE = " \t\r\n\f\v"
_MISSING = object()
_AUTHORIZATION = b"authorization"
# the "typ" headers of a token that says who is calling (RFC 7519, RFC 9068), with
# or without the "application/" prefix, in any case (RFC 7515 4.1.9); absent is fine
_TYPES = frozenset({"jwt", "application/jwt", "at+jwt", "application/at+jwt"})

Identity = tuple[str, tuple[str, ...]]


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named ``path``, else the value at its dotted path; ``_MISSING``."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _roles(value: Any) -> tuple[str, ...] | None:
    """Roles from a claim value: a list of strings, or a space-separated string;
    ``None`` for any other shape (read as no roles)."""
    if value is _MISSING or value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None
    roles: list[str] = []
    for item in items:
        if not isinstance(item, str):
            return None  # a list that mixes in other values: none of it is trusted
        role = item.strip(_SPACE)
        if role and role not in roles:
            roles.append(role)
    return tuple(roles)


def identity_from_claims(
    claims: Mapping[str, Any], *, user_claim: str = "sub", roles_claim: str = "roles"
) -> Identity | None:
    """``(user_id, roles)`` from verified ``claims``, or ``None`` (no user).

    The user id is ``claims[user_claim]``: a string (trimmed; empty means no
    user) or an integer. The roles are ``claims[roles_claim]``: a list of strings
    or one space-separated string; each is trimmed, empties and repeats dropped.
    A missing roles claim means no roles; a roles claim of any other shape (a
    number, an object, a list holding anything but strings) also gives no roles,
    never a part of it. Both names are looked up whole first, then as dotted paths
    into nested objects."""
    raw = _claim(claims, user_claim)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return None
    user = str(raw).strip(_SPACE)
    if not user:
        return None
    roles = _roles(_claim(claims, roles_claim))
    if roles is None:
        log.warning(
            "d2: the %r claim of user %r is not a list of strings or a string: no roles",
            roles_claim,
            user,
        )
        roles = ()
    return user, roles


def bearer_token(scope: Scope) -> str | None:
    """The token of the one ``Authorization: Bearer <token>`` header of an ASGI
    ``scope``; ``None`` when there is none, the header is repeated, the scheme is
    another, or the token is not an RFC 6750 token (or over 16 KiB)."""
    found: bytes | None = None
    for name, value in scope.get("headers") or ():
        if name.lower() == _AUTHORIZATION:
            if found is not None:
                return None  # two Authorization headers: ambiguous
            found = value
    if found is None:
        return None
    try:
        text = found.decode("ascii").strip(_SPACE)
    except UnicodeDecodeError:
        return None
    scheme, _, token = text.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or len(token) > _MAX_TOKEN or not _TOKEN.fullmatch(token):
        return None
    return token


class _Key:
    """One verification key: the public key object and the algorithms it admits."""

    __slots__ = ("algorithms", "kid", "public_key")

    def __init__(self, kid: str | None, public_key: Any, algorithms: frozenset[str]) -> None:
        self.kid = kid
        self.public_key = public_key
        self.algorithms = algorithms


def _parse_key(jwk: Mapping[str, Any]) -> _Key:
    """A usable verification key from a JWK; raises ``ValueError`` saying why not."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError(f"kid {kid!r} is not a string")
    if "d" in jwk:
        raise ValueError("it holds private key material; a JWKS publishes public keys only")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"not a signing key (use={jwk.get('use')!r})")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError(f"key_ops {ops!r} does not allow verify")
    kty, crv, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    text = json.dumps(dict(jwk))
    public_key: Any
    if kty == "RSA":
        admits = _RSA
        public_key = RSAAlgorithm.from_jwk(text)
        if public_key.key_size < _RSA_MIN_BITS:
            raise ValueError(f"an RSA key of {public_key.key_size} bits (2048 at least)")
    elif kty == "EC" and crv in _EC_CURVES:
        admits = frozenset({_EC_CURVES[crv]})
        public_key = ECAlgorithm.from_jwk(text)
    elif kty == "OKP" and crv in _OKP_CURVES:
        admits = frozenset({"EdDSA"})
        public_key = OKPAlgorithm.from_jwk(text)
    else:
        raise ValueError(f"unsupported key type {kty!r}/{crv!r} (RSA, EC P-256/384/521, OKP)")
    if hasattr(public_key, "private_bytes"):
        raise ValueError("it is a private key")
    if declared is not None:
        if declared not in admits:
            raise ValueError(f"it declares alg {declared!r}, which a {kty} key cannot use here")
        admits = frozenset({declared})
    return _Key(kid, public_key, admits)


class JWTExtractor:
    """A user extractor that verifies bearer JWTs against a JWKS, given directly
    (``jwks_url``) or named by the OIDC discovery document of ``oidc_issuer`` (see
    the module docstring); made by :func:`jwt_extractor`.

    Call it with an ASGI scope (``await extractor(scope)``) for ``(user_id,
    roles)`` or ``None``; :meth:`verify` checks a token string; :meth:`refresh`
    fetches the keys now (for example at startup, to fail fast)."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        oidc_issuer: str | None = None,
        audience: str,
        issuer: str | None = None,
        roles_claim: str = "roles",
        user_claim: str = "sub",
        algorithms: Iterable[str] | None = None,
        leeway: float = 30.0,
        cache_seconds: float = 300.0,
        refresh_floor: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            import httpx  # noqa: F401
            import jwt  # noqa: F401
            from jwt.algorithms import has_crypto
        except ImportError as exc:
            raise ImportError(
                'jwt_extractor needs PyJWT and httpx: pip install "d2-asgi[jwt]" '
                '(or "d2-sdk[jwt]")',
                name=exc.name,
            ) from exc
        if not has_crypto:
            raise ImportError(
                'jwt_extractor needs PyJWT\'s crypto backend: pip install "d2-asgi[jwt]"',
                name="cryptography",
            )
        if (jwks_url is None) == (oidc_issuer is None):
            given = "both" if jwks_url is not None else "neither"
            raise ConfigurationError(
                "give exactly one of jwks_url (the identity provider's JWKS) or oidc_issuer "
                f"(its issuer URL, whose discovery document names the JWKS); got {given}"
            )
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("audience must be a non-empty string (the token's 'aud')")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigurationError("issuer must be a non-empty string, or None")
        for name, claim in (("roles_claim", roles_claim), ("user_claim", user_claim)):
            if not isinstance(claim, str) or not claim:
                raise ConfigurationError(f"{name} must be a claim name or a dotted path")
        allowed = ASYMMETRIC_ALGORITHMS if algorithms is None else frozenset(algorithms)
        if not allowed or not allowed <= ASYMMETRIC_ALGORITHMS:
            raise ConfigurationError(
                f"algorithms must be some of {sorted(ASYMMETRIC_ALGORITHMS)} (asymmetric "
                f"signatures only), got {sorted(allowed)}"
            )
        self.oidc_issuer: str | None = None
        self.discovery_url: str | None = None
        self.jwks_url: str | None = None
        if oidc_issuer is not None:
            self.oidc_issuer = check_issuer_url(oidc_issuer)
            self.discovery_url = oidc_issuer.rstrip("/") + _DISCOVERY
            if issuer is None:
                issuer = oidc_issuer
        else:
            assert jwks_url is not None
            self.jwks_url = check_url(jwks_url)
        self.audience = audience
        self.issuer = issuer
        self.roles_claim = roles_claim
        self.user_claim = user_claim
        self.algorithms = allowed
        self.leeway = float(leeway)
        self.cache_seconds = float(cache_seconds)
        self.refresh_floor = float(refresh_floor)
        self.timeout = float(timeout)
        self._transport = transport
        self._keys: dict[str | None, _Key] = {}
        self._fetched: float | None = None  # monotonic time of the last fetch attempt
        self._loaded: float | None = None  # ... of the last successful one
        self._inflight: asyncio.Task[None] | None = None
        self._discovered: float | None = None  # monotonic time of the last good discovery

    def __repr__(self) -> str:
        source = f"oidc_issuer={self.oidc_issuer!r}" if self.oidc_issuer else ""
        source = source or f"jwks_url={self.jwks_url!r}"
        return f"<JWTExtractor {source} audience={self.audience!r}>"

    async def __call__(self, scope: Scope) -> Identity | None:
        token = bearer_token(scope)
        return None if token is None else await self.verify(token)

    async def verify(self, token: str) -> Identity | None:
        """``(user_id, roles)`` from a bearer ``token`` that verifies, else ``None``.
        Never raises for a bad token; may wait for a JWKS fetch."""
        claims = await self.claims(token)
        if claims is None:
            return None
        return identity_from_claims(
            claims, user_claim=self.user_claim, roles_claim=self.roles_claim
        )

    async def claims(self, token: str) -> dict[str, Any] | None:
        """The verified claims of ``token``, or ``None`` when it does not verify."""
        import jwt

        if not isinstance(token, str) or len(token) > _MAX_TOKEN:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return None  # none, HS*, anything not asymmetric or not allowed here
        if "crit" in header or "b64" in header:
            return None
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _TYPES):
            return None  # a logout token, an event token, a DPoP proof: not an access
        if kid is not None and not isinstance(kid, str):
            return None
        key = await self._key(kid)
        if key is None or alg not in key.algorithms:
            return None
        required = ["exp", "aud"] + (["iss"] if self.issuer is not None else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.PyJWTError:
            return None
        except Exception:  # a key/alg mismatch the library reports otherwise
            log.warning("d2: a bearer token failed verification unexpectedly", exc_info=True)
            return None
        return claims

    def _lookup(self, kid: str | None) -> _Key | None:
        if kid is not None:
            return self._keys.get(kid)
        keys = list(self._keys.values())
        return keys[0] if len(keys) == 1 else None  # no kid: only with exactly one key

    async def _key(self, kid: str | None) -> _Key | None:
        task = self._inflight
        if (
            task is not None
            and not task.done()
            and task.get_loop() is asyncio.get_running_loop()
            and self._lookup(kid) is None
        ):
            # a fetch under way may bring this key (the first fetch: any key): wait for
            # it, as its starter does. A token whose key is known does not wait: anyone
            # can start a fetch with a made-up key id, and a slow provider would hold
            # every login for as long as it takes
            await asyncio.shield(task)
        now = time.monotonic()
        stale = self._loaded is None or now - self._loaded >= self.cache_seconds
        key = self._lookup(kid)
        recent = self._fetched is not None and now - self._fetched < self.refresh_floor
        if (stale or key is None) and not recent:
            if key is not None:
                self._fetch_soon()  # known keys past cache_seconds: refreshed meanwhile
            else:
                await self.refresh()
                key = self._lookup(kid)
        return key

    def _fetch_soon(self) -> asyncio.Task[None]:
        """The fetch under way on this loop, or a new one (shared by every caller)."""
        task = self._inflight
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._inflight = loop.create_task(self._fetch())
        return task

    async def refresh(self) -> bool:
        """Fetch the JWKS now (concurrent callers share one fetch); True when the
        keys were loaded. A failure keeps the keys already known, and is logged."""
        await asyncio.shield(self._fetch_soon())
        return self._loaded is not None and self._fetched == self._loaded

    async def _discover(self) -> None:
        """Read the JWKS URL from the discovery document when it is due; a failure
        is logged and keeps the JWKS URL already known (none at first: fail closed)."""
        if self.discovery_url is None or self.oidc_issuer is None:
            return
        now = time.monotonic()
        if self._discovered is not None and now - self._discovered < self.cache_seconds:
            return
        try:
            document = await get_json(
                self.discovery_url, timeout=self.timeout, transport=self._transport
            )
            uri = jwks_uri_of(document, self.oidc_issuer)
        except Exception as exc:
            after = (
                f"keeping the JWKS {self.jwks_url}"
                if self.jwks_url
                else "every token is refused until it succeeds"
            )
            log.warning(
                "d2: OIDC discovery at %s failed (%s: %s); %s",
                self.discovery_url,
                type(exc).__name__,
                exc,
                after,
            )
            return
        if self.jwks_url is not None and uri != self.jwks_url:
            log.info("d2: the JWKS of %s moved to %s", self.oidc_issuer, uri)
        self.jwks_url = uri
        self._discovered = now

    async def _fetch(self) -> None:
        self._fetched = time.monotonic()
        loaded = await self._fetch_keys()
        self._fetched = time.monotonic()  # the floor counts from the end of the attempt
        if loaded:
            self._loaded = self._fetched

    async def _fetch_keys(self) -> bool:
        """Discover (when due) and fetch the JWKS; True when new keys were loaded.
        Never raises: a failure is logged and keeps what was known."""
        await self._discover()
        if self.jwks_url is None:
            return False  # discovery has not succeeded yet: no keys, every token refused
        try:
            document = await get_json(
                self.jwks_url, timeout=self.timeout, transport=self._transport
            )
            keys = self._parse(document)
        except Exception as exc:
            log.warning(
                "d2: fetching the JWKS %s failed (%s: %s); keeping %d known key(s)",
                self.jwks_url,
                type(exc).__name__,
                exc,
                len(self._keys),
            )
            return False
        self._keys = keys
        return True

    def _parse(self, document: Any) -> dict[str | None, _Key]:
        raw = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(raw, list):
            raise ValueError("the document has no 'keys' list")
        keys: dict[str | None, _Key] = {}
        for jwk in raw:
            if not isinstance(jwk, Mapping):
                continue
            try:
                key = _parse_key(jwk)
            except Exception as exc:
                log.warning("d2: skipping JWKS key %r: %s", jwk.get("kid"), exc)
                continue
            if key.kid in keys:
                log.warning("d2: skipping JWKS key %r: its kid is repeated", key.kid)
                keys[key.kid] = _Key(key.kid, None, frozenset())  # ambiguous: usable by none
                continue
            keys[key.kid] = key
        usable = {kid: key for kid, key in keys.items() if key.public_key is not None}
        if None in usable and len(usable) > 1:
            del usable[None]  # a key without kid is only usable as the only key
        if not usable:
            raise ValueError("the document has no usable key")
        return usable


def jwt_extractor(
    *,
    jwks_url: str | None = None,
    oidc_issuer: str | None = None,
    audience: str,
    issuer: str | None = None,
    roles_claim: str = "roles",
    user_claim: str = "sub",
    algorithms: Iterable[str] | None = None,
    leeway: float = 30.0,
    cache_seconds: float = 300.0,
    refresh_floor: float = 30.0,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> JWTExtractor:
    """A user extractor that trusts only a verified ``Authorization: Bearer`` JWT.

    ``jwks_url``: the identity provider's JWKS (``https://``, or ``http://`` on
    loopback); or instead ``oidc_issuer``: its issuer URL, whose OIDC discovery
    document (``/.well-known/openid-configuration``) names the JWKS and must name
    exactly this issuer (give one of the two). ``audience``: the ``aud`` the token
    must name; ``issuer``: the ``iss`` it must have (recommended; defaults to
    ``oidc_issuer``). ``roles_claim`` / ``user_claim``: where
    the roles and the user id are (names or dotted paths; see
    :func:`identity_from_claims`). ``algorithms``: restrict the accepted
    algorithms further (default: every one of :data:`ASYMMETRIC_ALGORITHMS`, each
    only with a key of its type). ``leeway``: seconds of clock skew allowed on
    ``exp`` / ``nbf`` / ``iat``. ``cache_seconds``, ``refresh_floor``, ``timeout``:
    how long keys are kept, how often an unknown ``kid`` may trigger a fetch, and
    the seconds each document (JWKS, discovery) has to arrive whole.
    ``transport``: an httpx transport (tests, proxies).

    Use it wherever a user extractor goes::

        app.add_middleware(ASGIMiddleware, user_extractor=jwt_extractor(
            jwks_url="https://idp.example.invalid/jwks.json", audience="refund-desk",
            issuer="https://idp.example.invalid/"))

    or, with discovery::

        users = jwt_extractor(oidc_issuer="https://idp.example.invalid/realms/desk",
                              audience="refund-desk")
    """
    return JWTExtractor(
        jwks_url=jwks_url,
        oidc_issuer=oidc_issuer,
        audience=audience,
        issuer=issuer,
        roles_claim=roles_claim,
        user_claim=user_claim,
        algorithms=algorithms,
        leeway=leeway,
        cache_seconds=cache_seconds,
        refresh_floor=refresh_floor,
        timeout=timeout,
        transport=transport,
    )
