"""Cloud commands (need ``D2_TOKEN`` and ``D2_API_URL``): ``pull`` (verified
before anything is written), ``draft`` and ``revoke``; ``publish`` has its own
module."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from d2.core.errors import MissingPolicyError
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import discover_policy_file

from .describe import rfc3339
from .documents import format_for, render, tidy, to_plain, write_file
from .loading import load_file, local_policy_path
from .options import AppNameOption, FileArgument, FormatOption, JsonOption, Stage
from .output import FAILED, CliError, Output, failed, run_command
from .remote import connect, identify, read_for_cloud, run_remote, verified, with_app_name
from .settings import CloudSettings, cloud_settings, default_policy_path

__all__ = ["draft", "pull", "revoke"]


def _default_target(fmt: str | None) -> Path:
    try:
        return Path(discover_policy_file())
    except MissingPolicyError:
        return default_policy_path(fmt or "yaml")


def pull(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="File to write (default: the local policy file, replaced).",
            dir_okay=False,
        ),
    ] = None,
    fmt: FormatOption = None,
    stage: Annotated[
        Stage, typer.Option("--stage", help="published (signed, verified) or draft (unsigned).")
    ] = Stage.published,
    app_name: AppNameOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download the app's policy to a file, verifying its signature first."""

    def body(out: Output) -> int:
        settings = cloud_settings()
        target = output or _default_target(fmt.value if fmt else None)
        file_format = format_for(target, fmt.value if fmt else None)
        pulled = (
            _pulled_version(target, settings.display_url) if stage.value == "published" else None
        )
        me, document, version, signer = run_remote(
            settings, "pull", _pull(settings, stage.value, app_name, pulled)
        )
        if signer is None:
            out.warn(
                "a draft is not signed: this file was not verified (it is what the control "
                "plane stores, not a bundle any SDK would accept)"
            )
        how = f"signature verified, key {signer}" if signer else "draft, unsigned"
        header = [
            f"Pulled by `d2 pull` from {settings.display_url}, app {me['app_name']}, "
            f"{stage.value} version {version} ({how}) at {rfc3339(time.time())}."
        ]
        write_file(target, render(tidy(document), file_format, header), overwrite=True)
        loads = load_file(target)
        for problem in loads.problems:
            out.warn(f"as a local policy file it will not load: {problem}")
        out.success(
            f"wrote {stage.value} version {version} of app {me['app_name']} to {target} "
            f"({'verified' if signer else 'UNSIGNED draft'})"
        )
        out.emit(
            {
                "ok": True,
                "app": me["app_name"],
                "stage": stage.value,
                "version": version,
                "verified": signer is not None,
                "signed_by": signer,
                "output": str(target),
                "format": file_format,
            }
        )
        return 0

    run_command(as_json, body)


_HEADER = re.compile(
    r"^# Pulled by `d2 pull` from (?P<url>\S+), app (?P<app>\S+), "
    r"published version (?P<version>\d+) "
)


def _pulled_version(target: Path, api_url: str) -> dict[str, Any] | None:
    """What the header of a file ``d2 pull`` wrote says: the control plane, app and
    published version (``None`` for another file, or one pulled from elsewhere)."""
    try:
        with target.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline(4096)
    except OSError:
        return None
    match = _HEADER.match(first)
    if match is None or match["url"] != api_url:
        return None
    return {"app": match["app"], "version": int(match["version"])}


async def _pull(
    settings: CloudSettings, stage: str, app_name: str | None, pulled: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Any, Any, str | None]:
    async with connect(settings) as api:
        me = await identify(api, app_name)
        if stage == "draft":
            draft = await api.get_draft()
            if draft is None:
                raise failed(
                    f"app {me['app_name']!r} has no draft", hint="upload one with `d2 draft FILE`"
                )
            document = draft.get("bundle")
            compile_policy(document, source=f"draft of {me['app_name']}")
            return me, document, draft.get("version"), None
        floor = pulled["version"] if pulled and pulled["app"] == me["app_name"] else None
        bundle, _ = await verified(api, me, floor)
        return me, bundle.document, bundle.version, bundle.kid


def draft(
    file: FileArgument = None,
    version: Annotated[
        int | None,
        typer.Option("--version", help="Draft version (default: the stored draft's + 1).", min=0),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Upload a policy as the app's draft (validated, not published)."""

    def body(out: Output) -> int:
        path = local_policy_path(file)
        document, _ = read_for_cloud(path)
        settings = cloud_settings()

        async def go() -> tuple[str, int]:
            async with connect(settings) as api:
                me = await identify(api)
                named = with_app_name(document, me["app_name"], out)
                number = version
                if number is None:
                    current = await api.get_draft()
                    previous = current.get("version") if current else 0
                    number = (previous if isinstance(previous, int) else 0) + 1
                stored = await api.put_draft(number, to_plain(named))
                return me["app_name"], stored

        app, stored = run_remote(settings, "draft", go())
        out.success(f"uploaded {path} as draft version {stored} of app {app} (not published)")
        out.note("publish it with `d2 publish FILE`; fetch it with `d2 pull --stage draft`")
        out.emit({"ok": True, "app": app, "draft_version": stored, "file": str(path)})
        return 0

    run_command(as_json, body)


def revoke(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Revoke the app's published policy: every guarded call is denied until the
    next publish."""

    def body(out: Output) -> int:
        settings = cloud_settings()
        if as_json and not yes:
            raise CliError("--json needs --yes (there is no prompt in JSON mode)")

        async def go() -> tuple[str, int | None] | None:
            async with connect(settings) as api:
                me = await identify(api)
                if not yes and not _confirm(me["app_name"], settings.display_url):
                    return None
                return me["app_name"], await api.revoke()

        result = run_remote(settings, "revoke", go())
        if result is None:
            out.line("not revoked")
            return FAILED
        app, version = result
        out.success(
            f"revoked version {version} of app {app}; guarded calls are denied until "
            "the next `d2 publish`"
        )
        out.emit({"ok": True, "app": app, "revoked_version": version})
        return 0

    run_command(as_json, body)


def _confirm(app: str, url: str) -> bool:
    try:
        return typer.confirm(
            f"Revoke the policy of app {app!r} at {url}? Every guarded call of the app will be "
            "denied until a new version is published",
            default=False,
        )
    except typer.Abort:  # no answer (stdin closed, Ctrl-C)
        raise CliError(
            "revoking needs a confirmation", hint="pass --yes to revoke without a prompt"
        ) from None
