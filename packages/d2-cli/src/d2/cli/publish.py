"""``d2 publish``: validate locally, sign the exact body bytes with this device's
Ed25519 key (created and registered on first use), and publish with the right
precondition (``If-None-Match: *`` first, then ``If-Match`` with the current
ETag); a 412 is explained, and ``--force`` re-reads the ETag and retries once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .documents import json_bytes
from .loading import local_policy_path
from .options import FileArgument, JsonOption
from .output import CliError, Output, failed, run_command
from .remote import connect, identify, read_for_cloud, run_remote, with_app_name
from .settings import CloudSettings, cloud_settings, keys_dir

if TYPE_CHECKING:
    from d2.core.policy.model import CompiledPolicy

    from .api import Api
    from .keys import DeviceKey

__all__ = ["publish"]


def publish(
    file: FileArgument = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would be sent; send nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="If someone published meanwhile (412), re-read the current version and "
            "overwrite it (one retry).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Sign the policy with this device's key and publish it as the next version."""

    def body(out: Output) -> int:
        path = local_policy_path(file)
        document, policy = read_for_cloud(path)
        if dry_run and not _has_token():
            out.success(
                f"{path} is valid ({policy.tool_count} tools); D2_TOKEN is not set, so "
                "only local checks ran"
            )
            out.emit({"ok": True, "dry_run": True, "file": str(path), "checked": "local"})
            return 0
        settings = cloud_settings()
        result = run_remote(
            settings, "publish", _publish(settings, document, policy, dry_run, force, out)
        )
        if dry_run:
            pre = f"If-Match: {result['etag']}" if result["etag"] else "If-None-Match: *"
            out.success(
                f"dry run: {path} is valid; would publish {result['bytes']} bytes to app "
                f"{result['app']} ({pre}); nothing was sent"
            )
        else:
            out.success(
                f"published {path} as version {result['version']} of app {result['app']} "
                f"(signed by {result['key_id']})"
            )
        out.emit({"ok": True, "dry_run": dry_run, "file": str(path), **result})
        return 0

    run_command(as_json, body)


def _has_token() -> bool:
    return bool(os.environ.get("D2_TOKEN"))


async def _publish(
    settings: CloudSettings,
    document: Any,
    policy: CompiledPolicy,
    dry_run: bool,
    force: bool,
    out: Output,
) -> dict[str, Any]:
    from .api import Refused

    async with connect(settings) as api:
        me = await identify(api)
        app = me["app_name"]
        named = with_app_name(document, app, out)
        body = json_bytes(named)
        _check_quotas(me, policy, len(body))
        etag = await api.current_etag()
        if dry_run:
            return {"app": app, "bytes": len(body), "etag": etag}
        key = await _device_key(api, me, out)
        retried = False
        while True:
            try:
                answer = await api.publish(
                    body, key_id=key.key_id, signature=key.sign(body), etag=etag
                )
                break
            except Refused as exc:
                if retried:
                    raise
                if exc.status == 401 and exc.detail == "unknown_key":
                    from .keys import forget_registration

                    forget_registration(keys_dir(), settings.api_url, me["account_id"], app)
                    key = await _device_key(api, me, out)  # the control plane forgot it
                elif exc.status == 412 and force:
                    etag = await api.current_etag()
                    out.warn(
                        f"someone published meanwhile; --force: overwriting ({etag or 'none'})"
                    )
                else:
                    raise
                retried = True
        return {
            "app": app,
            "version": answer.get("version"),
            "etag": answer.get("etag"),
            "key_id": key.key_id,
            "bytes": len(body),
        }


async def _device_key(api: Api, me: Mapping[str, Any], out: Output) -> DeviceKey:
    from .api import Refused
    from .keys import is_registered, load_or_create, mark_registered

    directory = keys_dir()
    key, created = load_or_create(directory)
    if created:
        out.note(f"created device key {key.key_id} at {key.path} (mode 0600)")
    account, app = str(me["account_id"]), str(me["app_name"])
    if not is_registered(directory, key, api.settings.api_url, account, app):
        try:
            await api.register_key(key.key_id, key.public_key_b64)
        except Refused as exc:
            if exc.status == 409:
                raise CliError(
                    f"the control plane already has another key with id {key.key_id}",
                    hint=f"move {key.path} away to create a new key on the next publish",
                ) from None
            raise
        mark_registered(directory, key, api.settings.api_url, account, app)
        out.note(f"registered device key {key.key_id} with {api.settings.display_url}")
    return key


def _check_quotas(me: Mapping[str, Any], policy: CompiledPolicy, size: int) -> None:
    quotas = me.get("quotas") if isinstance(me.get("quotas"), Mapping) else {}
    assert isinstance(quotas, Mapping)
    hint = (
        "upgrade the plan, or shrink the policy: prefix wildcards ('billing:*') and tool "
        "groups name many tools at once"
    )
    max_tools = quotas.get("max_tools")
    if isinstance(max_tools, int) and policy.tool_count > max_tools:
        raise failed(
            f"the policy names {policy.tool_count} tools; the {me.get('plan', '')} plan "
            f"allows {max_tools}",
            hint=hint,
        )
    max_bytes = quotas.get("bundle_size_bytes")
    if isinstance(max_bytes, int) and size > max_bytes:
        raise failed(
            f"the policy is {size} bytes; the {me.get('plan', '')} plan allows {max_bytes}",
            hint=hint,
        )
