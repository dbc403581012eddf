"""A throwaway identity provider for tests of apps that use :func:`~d2.asgi.jwt_extractor`.

:class:`TokenIssuer` holds a signing key (RSA 2048 by default), publishes its JWKS
from a tiny ASGI app (serve it with uvicorn on 127.0.0.1 and point
``jwks_url`` at it) and mints tokens::

    issuer = TokenIssuer(audience="refund-desk")
    token = issuer.token("dana", roles=["finance_lead"])
    headers = {"Authorization": f"Bearer {token}"}

The same app answers OIDC discovery too: ``GET <prefix>/.well-known/openid-configuration``
gives ``{"issuer": issuer.issuer, "jwks_uri": "<this server><prefix>/jwks"}`` (set
``issuer.issuer`` to the ``oidc_issuer`` you configure; ``discovery`` overrides
fields of the document).

Needs ``pip install "d2-asgi[jwt]"``. Never use its keys outside tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .types import Receive, Scope, Send

__all__ = ["TokenIssuer"]

_DISCOVERY = "/.well-known/openid-configuration"


class TokenIssuer:
    """A signing key, its JWKS and tokens signed with it.

    ``algorithm``: ``RS256`` (default), ``PS256``, ``ES256`` or ``EdDSA``;
    ``issuer`` / ``audience``: the ``iss`` and ``aud`` of the tokens it mints
    unless told otherwise; ``kid``: the key id (default: ``<algorithm>-1``).
    ``fetches`` counts the JWKS documents :meth:`jwks_app` served; set
    ``available = False`` to make it answer 503, ``delay`` to make it slow;
    ``discoveries`` counts the discovery documents served, and ``discovery`` holds
    fields that replace the document's (``{"issuer": ...}``, ``{"jwks_uri": ...}``).
    """

    def __init__(
        self,
        *,
        algorithm: str = "RS256",
        issuer: str = "https://issuer.test.invalid/",
        audience: str = "d2-approvals",
        kid: str | None = None,
    ) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        private: Any
        if algorithm in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"TokenIssuer signs with RS256, PS256, ES256 or EdDSA: {algorithm}")
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self.kid = kid or f"{algorithm}-1"
        self.private_key = private
        self.extra_keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.discoveries = 0
        self.discovery: dict[str, Any] = {}
        self.available = True
        self.delay = 0.0

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK of the signing key (with its ``kid``, ``use: sig``)."""
        from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

        public = self.private_key.public_key()
        writer: Any = {"RS256": RSAAlgorithm, "PS256": RSAAlgorithm, "ES256": ECAlgorithm}.get(
            self.algorithm, OKPAlgorithm
        )
        jwk = json.loads(writer.to_jwk(public))
        jwk.update(kid=self.kid, use="sig")
        return dict(jwk)

    @property
    def jwks(self) -> dict[str, Any]:
        """The JWKS document: the signing key's public JWK and ``extra_keys``."""
        return {"keys": [self.public_jwk(), *self.extra_keys]}

    def token(
        self,
        sub: str | None,
        roles: Iterable[str] | str | None = (),
        *,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        expires_in: float = 300.0,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        roles_claim: str = "roles",
    ) -> str:
        """A signed token for user ``sub`` with ``roles`` (a list, or a string kept
        as is), expiring ``expires_in`` seconds from now (negative: expired);
        ``claims`` add to or replace the claims (``None`` values drop one)."""
        import jwt

        now = int(time.time())
        body: dict[str, Any] = {
            "iss": issuer if issuer is not None else self.issuer,
            "aud": audience if audience is not None else self.audience,
            "iat": now,
            "exp": now + int(expires_in),
        }
        if sub is not None:
            body["sub"] = sub
        if roles is not None:
            body[roles_claim] = roles if isinstance(roles, str) else list(roles)
        for name, value in (claims or {}).items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return jwt.encode(
            body,
            self.private_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )

    def discovery_document(self, base: str) -> dict[str, Any]:
        """The OIDC discovery document served under ``base`` (scheme, host and the
        path prefix before ``/.well-known/openid-configuration``)."""
        return {"issuer": self.issuer, "jwks_uri": f"{base}/jwks", **self.discovery}

    def jwks_app(self) -> Any:
        """A plain ASGI app answering ``GET .../.well-known/openid-configuration``
        with the discovery document and every other GET with the JWKS (JSON)."""

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            if self.delay:
                import asyncio

                await asyncio.sleep(self.delay)
            path = str(scope.get("path") or "")
            document: dict[str, Any]
            if path.endswith(_DISCOVERY):
                self.discoveries += 1
                host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
                base = f"{scope.get('scheme', 'http')}://{host}{path[: -len(_DISCOVERY)]}"
                document = self.discovery_document(base)
            else:
                self.fetches += 1
                document = self.jwks
            status = 200 if self.available else 503
            body = json.dumps(document if self.available else {"error": "down"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})

        return app
