"""Helpers of the CLI tests (a module name no other test directory uses).

``Proxy``: a transport between the CLI and the real test server; it records every
request and lets a test answer chosen requests itself, or act just before they are
forwarded (e.g. publish from "another developer" to provoke a 412).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from typer.testing import Result

__all__ = ["Invoke", "Proxy", "Seen", "as_json"]

Invoke = Callable[..., Result]


def as_json(result: Result) -> Any:
    """The JSON document a ``--json`` command printed."""
    return json.loads(result.stdout)


@dataclass
class Seen:
    """A request the CLI sent."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Rule:
    method: str
    path: str
    times: int
    answer: httpx.Response | None = None
    before: Callable[[], None] | None = None


@dataclass
class Proxy:
    """Rules are matched in order; each applies ``times`` times (then retires)."""

    requests: list[Seen] = field(default_factory=list)
    rules: list[_Rule] = field(default_factory=list)

    def answer(self, method: str, path: str, response: httpx.Response, times: int = 1) -> None:
        """Answer the next ``times`` ``method path`` requests with ``response``."""
        self.rules.append(_Rule(method, path, times, answer=response))

    def before(self, method: str, path: str, action: Callable[[], None], times: int = 1) -> None:
        """Run ``action`` before forwarding the next ``times`` such requests."""
        self.rules.append(_Rule(method, path, times, before=action))

    def count(self, method: str, path: str) -> int:
        """How many ``method path`` requests were sent."""
        return sum(1 for r in self.requests if r.method == method and r.path == path)

    def transport(self) -> httpx.AsyncBaseTransport:
        """A new transport (each CLI client closes its own)."""
        return _Transport(self)

    def _match(self, request: httpx.Request) -> _Rule | None:
        for rule in self.rules:
            if rule.times > 0 and rule.method == request.method and rule.path == request.url.path:
                rule.times -= 1
                return rule
        return None


class _Transport(httpx.AsyncBaseTransport):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.proxy.requests.append(
            Seen(request.method, request.url.path, dict(request.headers), body)
        )
        rule = self.proxy._match(request)
        if rule is not None and rule.answer is not None:
            answer = rule.answer
            return httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        if rule is not None and rule.before is not None:
            rule.before()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
