"""The control plane's authoring endpoints (PROTOCOL.md, "Authoring"), on top of
d2-cloud's :class:`~d2.cloud.client.ControlPlane` (same HTTP client, same error
type), and what each refusal means for the person at the keyboard.

Reads and the answers that say nothing was done (429, 503) are retried a few
times, honouring ``Retry-After``; 402 and 403 never are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from d2.cloud.client import ApiError, ControlPlane

from .output import FAILED, USAGE, CliError
from .settings import CloudSettings

__all__ = ["Api", "Refused", "explain_refusal", "transport_factory"]

transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None
"""Tests set a factory of transports here (fault injection); ``None`` in real use.
Each client gets a new transport: a client closes its transport when done."""

_ATTEMPTS = 3
_MAX_WAIT = 10.0


class Refused(ApiError):
    """A refusal with the whole JSON ``body`` (``errors`` of a 422, ``limit`` of a
    402, ``message``...)."""

    def __init__(
        self, status: int, detail: str, retry_after: float | None, body: Mapping[str, Any]
    ) -> None:
        super().__init__(status, detail, retry_after)
        self.body = dict(body)

    @property
    def errors(self) -> list[str]:
        """The ``errors`` list of the body (422), as text."""
        errors = self.body.get("errors")
        return [str(e) for e in errors] if isinstance(errors, list) else []

    @property
    def message(self) -> str | None:
        """The server's human ``message``, when it sent one."""
        message = self.body.get("message")
        return message if isinstance(message, str) else None


class Api(ControlPlane):
    """A control-plane client for the CLI (``async with Api(settings) as api``)."""

    def __init__(self, settings: CloudSettings, *, timeout: float = 30.0) -> None:
        super().__init__(
            settings.api_url,
            settings.token,
            jwks_url=settings.jwks_url,
            timeout=timeout,
            transport=transport_factory() if transport_factory else None,
        )
        self.settings = settings

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Every request of this client (the inherited ones too), retried when that
        is safe: reads on network errors, 429 and 5xx; writes on 429 and 503 only
        (answers that say nothing was done)."""
        read = method == "GET"
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = await super()._send(method, url, **kwargs)
            except ApiError:
                if not read or attempt == _ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)
                continue
            status = response.status_code
            if attempt == _ATTEMPTS or not (status in (429, 503) or (read and status >= 500)):
                return response
            wait = self._fail(response).retry_after
            await asyncio.sleep(min(_MAX_WAIT, 0.5 * attempt if wait is None else wait))
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(
        self, method: str, url: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        """Send (with the retries of :meth:`_send`); raise :class:`Refused` unless
        the status is one of ``ok``."""
        response = await self._send(method, url, **kwargs)
        if response.status_code not in ok:
            raise self._refused(response)
        return response

    def _refused(self, response: httpx.Response) -> Refused:
        base = self._fail(response)
        try:
            body = response.json()
        except ValueError:
            body = {}
        return Refused(
            base.status, base.detail, base.retry_after, body if isinstance(body, dict) else {}
        )

    async def current_etag(self) -> str | None:
        """The ETag of the bundle in force; ``None`` when nothing is published or
        the policy was revoked (then a publish sends ``If-None-Match: *``)."""
        response = await self.request("GET", "/v1/policy/bundle", ok=(200, 404, 410))
        return response.headers.get("ETag") if response.status_code == 200 else None

    async def register_key(self, key_id: str, public_key_b64: str) -> None:
        """``POST /v1/keys`` (201; registering the same key again is fine)."""
        body = {"key_id": key_id, "algorithm": "Ed25519", "public_key": public_key_b64}
        await self.request("POST", "/v1/keys", ok=(200, 201), json=body)

    async def publish(
        self, body: bytes, *, key_id: str, signature: str, etag: str | None
    ) -> dict[str, Any]:
        """``POST /v1/policy/publish`` of ``body`` (signed by the caller): 201
        ``{"version", "etag"}``."""
        headers = {
            "Content-Type": "application/json",
            "X-D2-Key-Id": key_id,
            "X-D2-Signature": signature,
        }
        if etag:
            headers["If-Match"] = etag
        else:
            headers["If-None-Match"] = "*"
        response = await self.request(
            "POST", "/v1/policy/publish", ok=(200, 201), content=body, headers=headers
        )
        return _json_object(response)

    async def get_draft(self) -> dict[str, Any] | None:
        """``GET /v1/policy/draft``: ``{"version", "bundle"}``, or ``None`` (404)."""
        response = await self.request("GET", "/v1/policy/draft", ok=(200, 404))
        return _json_object(response) if response.status_code == 200 else None

    async def put_draft(self, version: int, document: Any) -> int:
        """``PUT /v1/policy/draft``; returns the stored draft version."""
        response = await self.request(
            "PUT", "/v1/policy/draft", json={"version": version, "bundle": document}
        )
        value = _json_object(response).get("draft_version", version)
        return value if isinstance(value, int) else version

    async def revoke(self) -> int | None:
        """``POST /v1/policy/revoke``; returns the revoked version."""
        response = await self.request("POST", "/v1/policy/revoke")
        value = _json_object(response).get("revoked_version")
        return value if isinstance(value, int) else None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(
            response.status_code, f"{response.url.path} answered with invalid JSON"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(response.status_code, f"{response.url.path} answered with a non-object")
    return body


def explain_refusal(exc: ApiError, settings: CloudSettings, action: str) -> CliError:
    """What a refusal of ``action`` (``publish``, ``pull``...) means and what to do."""
    status, detail = exc.status, settings.redact(str(exc.detail))
    refused = exc if isinstance(exc, Refused) else None
    message = refused.message if refused is not None else None
    message = settings.redact(message) if isinstance(message, str) else message
    said = f"{detail}: {message}" if message else detail
    if status == 0:
        return CliError(
            f"cannot reach the control plane at {settings.display_url} ({detail})",
            hint="check D2_API_URL and your network, then try again",
        )
    if status == 401:
        return CliError(
            f"the control plane refused D2_TOKEN ({detail})",
            hint="check the token (a developer token from the dashboard for authoring)",
        )
    if status == 402:
        return CliError(
            f"{action} refused by a plan limit ({said})",
            code=FAILED,
            hint="upgrade the plan, or shrink the policy: prefix wildcards ('billing:*') and "
            "tool groups name many tools at once",
        )
    if status == 403 and detail == "quota_apps_exceeded":
        return CliError(
            f"{action} refused: the account has reached its plan's app limit",
            code=FAILED,
            hint="upgrade the plan, or delete unused apps (revoke their policies) first",
        )
    if status == 403:
        scope = refused.body.get("scope") if refused is not None else None
        return CliError(
            f"the token may not {action} ({detail}{f': needs {scope}' if scope else ''})",
            hint="use a developer token (scope policy:write) for authoring commands; runtime "
            "tokens only read bundles",
        )
    if status == 404 and detail == "no_policy":
        return CliError(
            "nothing is published for this app yet",
            code=FAILED,
            hint="publish one with `d2 publish FILE`",
        )
    if status == 410:
        return CliError(
            "the app's policy was revoked: every guarded call is denied",
            code=FAILED,
            hint="publish a new version with `d2 publish FILE`",
        )
    if status == 412:
        return CliError(
            "someone published a new version since this publish read the current one",
            code=FAILED,
            hint="run `d2 pull` to get the current policy, merge your changes into it, and "
            "`d2 publish` again; or `d2 publish --force` to overwrite it (re-reads the "
            "current version and retries once)",
        )
    if status == 422:
        return CliError(
            f"the control plane refused the policy ({detail})",
            code=FAILED,
            details=refused.errors if refused is not None else (),
            hint="fix each path listed above, then try again",
        )
    if status == 429:
        wait = f" for {exc.retry_after:g}s" if exc.retry_after else ""
        return CliError(f"the control plane is rate limiting requests{wait}", hint="retry later")
    return CliError(
        f"{action} failed: HTTP {status} {said}",
        code=USAGE,
        hint="the control plane had a problem; try again later" if status >= 500 else None,
    )
