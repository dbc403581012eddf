"""Fakes for the cloud tests: a control plane behind ``httpx.MockTransport`` (fault
injection and the adversarial cases a real server never produces), signing keys and
a settable clock."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

BASE = "http://127.0.0.1:9"  # never contacted: the mock transport answers


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Signer:
    """One signing key and its public JWK."""

    def __init__(self, alg: str = "EdDSA", kid: str = "k1", bits: int = 2048) -> None:
        self.alg, self.kid = alg, kid
        if alg == "EdDSA":
            self.private: Any = ed25519.Ed25519PrivateKey.generate()
            jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, "typ": "d2-policy+jwt", **header}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


def policy_claims(
    version: int,
    clock: Clock,
    *,
    account: str = "acc1",
    app: str = "app1",
    permissions: list[Any] | None = None,
    ttl: float = 3600,
) -> dict[str, Any]:
    return {
        "aud": f"d2-policy:{account}:{app}",
        "iat": int(clock()),
        "exp": int(clock() + ttl),
        "version": version,
        "metadata": {"name": app},
        "policies": [{"role": "agent", "permissions": permissions or ["search"]}],
    }


class FakePlane:
    """Answers PROTOCOL.md's endpoints from attributes a test can change."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.signer = Signer()
        self.keys = [self.signer]
        self.me: dict[str, Any] = {
            "account_id": "acc1",
            "app_name": "app1",
            "plan": "free",
            "poll_seconds": 30,
            "quotas": {
                "max_tools": 100,
                "bundle_size_bytes": 65536,
                "event_batch": 100,
                "ingest_interval": 10,
            },
            "scopes": ["policy:read", "events:write"],
        }
        self.version = 1
        self.jws: str | None = self.signer.sign(policy_claims(1, clock))
        self.fail: dict[str, tuple[int, dict[str, str]]] = {}  # path -> status, headers
        self.calls: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.ingest_bodies: list[int] = []
        self.network_down = False
        self.delay = 0.0

    def publish(self, version: int, **kwargs: Any) -> str:
        self.version = version
        self.jws = self.signer.sign(policy_claims(version, self.clock, **kwargs))
        return self.jws

    def etag(self) -> str:
        return f'"v{self.version}-{hash(self.jws) & 0xFFFF}"'

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls[path] = self.calls.get(path, 0) + 1
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        if self.network_down:
            raise httpx.ConnectError("connection refused", request=request)
        if path in self.fail:
            status, headers = self.fail[path]
            return httpx.Response(status, json={"detail": f"status {status}"}, headers=headers)
        if request.headers.get("Authorization") != "Bearer d2_test":
            return httpx.Response(401, json={"detail": "bad token"})
        if path == "/v1/accounts/me":
            return httpx.Response(200, json=self.me)
        if path == "/.well-known/jwks.json":
            return httpx.Response(200, json={"keys": [k.jwk for k in self.keys]})
        if path == "/v1/policy/bundle":
            if self.jws is None:
                return httpx.Response(404, json={"detail": "no_policy"})
            if request.headers.get("If-None-Match") == self.etag():
                return httpx.Response(304, headers={"X-D2-Poll-Seconds": "30"})
            return httpx.Response(
                200,
                json={"jws": self.jws, "version": self.version},
                headers={"ETag": self.etag(), "X-D2-Poll-Seconds": "30"},
            )
        if path == "/v1/events/ingest":
            self.ingest_bodies.append(len(request.content))
            self.events += json.loads(request.content)["events"]
            return httpx.Response(202, json={"accepted": True})
        return httpx.Response(404, json={"detail": "not_found"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
