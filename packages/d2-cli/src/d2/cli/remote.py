"""The control plane, as the cloud commands use it: a client from the
environment's settings, the token's identity, the verified fetch of the app's
bundle, and the checks a policy passes before it is sent.

Verification is d2-cloud's, the one the runtime uses: the JWKS from the control
plane (pinned with ``D2_JWKS_THUMBPRINTS`` when set), the key's own algorithm,
the exact audience of this account and app, ``exp``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d2.core.errors import InvalidSignatureError
from d2.core.policy.compile import compile_policy

from .describe import PolicyView, rfc3339
from .documents import read_document
from .output import CliError, Output, failed
from .settings import CloudSettings, cloud_settings

if TYPE_CHECKING:
    from d2.cloud.verify import Bundle
    from d2.core.policy.model import CompiledPolicy

    from .api import Api

__all__ = [
    "connect",
    "saved_highest",
    "fetch_view",
    "identify",
    "read_for_cloud",
    "run_remote",
    "verified",
    "with_app_name",
]


def connect(settings: CloudSettings) -> Api:
    """A control-plane client (``async with connect(settings) as api``)."""
    from .api import Api

    return Api(settings)


async def identify(api: Api, expected_app: str | None = None) -> dict[str, Any]:
    """``/v1/accounts/me``, refusing a token of another app than the one expected."""
    me = await api.me()
    wanted = expected_app or api.settings.app
    if wanted and wanted != me["app_name"]:
        raise CliError(
            f"the token is for app {me['app_name']!r}, not {wanted!r}",
            hint="use a token of that app (each token is scoped to one app), or unset D2_APP",
        )
    return me


def saved_highest(settings: CloudSettings, audience: str) -> tuple[int, str] | None:
    """The newest bundle the runtime accepted for this control plane and token (its
    state-file entry, revoked or not), as ``(version, digest)``; ``None`` without one.

    Only an entry sealed with this token for this control plane counts (see
    ``d2.cloud.seal``): one that anyone able to write the file could have made up is
    ignored with a warning. The runtime binds its entry to the raw settings (URL
    without a trailing ``/``); both the raw and the normalised values are tried."""
    from d2.cloud.seal import StateSeal
    from d2.cloud.state import StateFile, default_state_path

    path = default_state_path()
    if path == ":memory:":
        return None
    raw_url = os.environ.get("D2_API_URL") or ""
    urls = {settings.api_url, raw_url, raw_url.strip()}
    tokens = {settings.token, os.environ.get("D2_TOKEN") or ""}
    best: tuple[int, str] | None = None
    for url, token in {(u.rstrip("/"), t) for u in urls for t in tokens if u and t}:
        entry = StateFile(path, StateSeal(token, url)).load()
        if entry is None or entry["audience"] != audience:
            continue
        found = (int(entry["version"]), str(entry["digest"]))
        if best is None or found[0] > best[0]:
            best = found
    return best


async def verified(
    api: Api, me: Mapping[str, Any], floor: int | None = None
) -> tuple[Bundle, CompiledPolicy]:
    """The app's current bundle, verified with the live JWKS, and compiled.

    A bundle older than the newest one the runtime accepted (its state file) or
    than ``floor`` (the version of the file about to be replaced) is a rollback:
    refused (:class:`InvalidSignatureError`, exit 1)."""
    from d2.cloud.jwks import JWKSCache
    from d2.cloud.verify import header_of, verify_bundle

    reply = await api.bundle(None)
    if reply.jws is None:  # pragma: no cover - a 304 without If-None-Match
        raise failed("the control plane answered without a bundle")
    cache = JWKSCache(api.jwks, time.time, pins=api.settings.pins)
    cache.load(await api.jwks())
    kid = header_of(reply.jws).get("kid")
    key = cache.keys.get(kid) if isinstance(kid, str) else None
    audience = f"d2-policy:{me['account_id']}:{me['app_name']}"
    highest = saved_highest(api.settings, audience)
    bundle = verify_bundle(reply.jws, key, audience=audience, now=time.time(), highest=highest)
    if floor is not None and bundle.version < floor:
        raise InvalidSignatureError(
            f"bundle version {bundle.version} is older than version {floor} already pulled "
            "into the file it would replace (rollback refused)"
        )
    policy = compile_policy(
        bundle.document,
        source=f"cloud:{me['app_name']} v{bundle.version}",
        raw=reply.jws.encode(),
        version=bundle.version,
        expires_at=bundle.expires_at,
    )
    return bundle, policy


def run_remote(settings: CloudSettings, action: str, coro: Any) -> Any:
    """Run ``coro``; a refusal of the control plane becomes a :class:`CliError`."""
    from d2.cloud.client import ApiError

    from .api import explain_refusal

    try:
        return asyncio.run(coro)
    except ApiError as exc:
        raise explain_refusal(exc, settings, action) from None


def fetch_view(app_name: str | None = None) -> PolicyView:
    """The cloud policy in force, verified (for ``d2 inspect``)."""
    settings = cloud_settings()

    async def go() -> PolicyView:
        async with connect(settings) as api:
            me = await identify(api, app_name)
            bundle, policy = await verified(api, me)
        problems = []
        if policy.expires_at <= time.time():
            problems.append(f"metadata.expires passed at {rfc3339(policy.expires_at)}")
        return PolicyView(
            policy,
            "cloud",
            f"{settings.display_url} app {me['app_name']}",
            bundle.version,
            problems,
            {"signed_by": bundle.kid, "app": me["app_name"]},
        )

    result: PolicyView = run_remote(settings, "inspect", go())
    return result


def read_for_cloud(path: Path) -> tuple[Any, CompiledPolicy]:
    """Read and validate a policy before anything is sent."""
    document, raw = read_document(path)
    policy = compile_policy(document, source=str(path), raw=raw)
    if policy.expires_at <= time.time():
        raise failed(
            f"{path}: metadata.expires ({rfc3339(policy.expires_at)}) is already past",
            hint="set metadata.expires to a future time, or remove it",
        )
    return document, policy


def with_app_name(document: Any, app: str, out: Output) -> dict[str, Any]:
    """``document`` with ``metadata.name`` = ``app`` (filled in when missing)."""
    meta = document.get("metadata") or {}
    name = meta.get("name")
    if name is None:
        out.note(f"metadata.name is not set: using the token's app {app!r}")
        rest = {k: v for k, v in document.items() if k != "metadata"}
        return {"metadata": {**meta, "name": app}, **rest}
    if name != app:
        raise failed(
            f"metadata.name is {name!r} but the token is for app {app!r}",
            hint=f"set metadata.name: {app} (each token is scoped to one app)",
        )
    return dict(document)
