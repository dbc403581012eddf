"""``d2 renew``: set a local policy's ``metadata.expires`` N days ahead.

Local mode refuses a policy without ``metadata.expires``, one that has expired,
and one that expires more than 7 days ahead: a forgotten policy stops granting
within a week. ``d2 renew`` is the weekly renewal in one command, and lets a new
policy be written without an ``expires`` line at all.

Only ``metadata.expires`` changes (see :mod:`d2.cli.renewal`); the result must
load as local mode loads it, then replaces the file atomically (a temporary file
in the same directory with the file's mode, renamed over it; through a symlink,
the file it points to), and only if nobody changed the file meanwhile.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from d2.core.errors import D2Error
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import check_limits, parse_document

from .describe import rfc3339
from .documents import read_document, to_plain, write_file
from .loading import discover, local_policy_path, same_file
from .options import FileArgument, JsonOption
from .output import OK, CliError, Output, failed, run_command
from .renewal import with_expires

__all__ = ["FORCE_MAX_DAYS", "renew"]

FORCE_MAX_DAYS = 366  # with --force: a year at most, never "forever"


def _max_days() -> int:
    return int(Limits().max_expiry_seconds // 86400)


def _check_days(days: int, force: bool) -> None:
    most = _max_days()
    if 1 <= days <= most or (force and most < days <= FORCE_MAX_DAYS):
        return
    if days > most and not force:
        raise CliError(
            f"--days must be between 1 and {most}, got {days}: local mode refuses a policy "
            f"that expires more than {most} days ahead",
            hint=f"renew weekly (`d2 renew` every {most} days or sooner); an app that passes "
            "its own Limits(max_expiry_seconds=...) may take more with --force",
        )
    raise CliError(
        f"--days must be between 1 and {most} (up to {FORCE_MAX_DAYS} with --force), got {days}",
        hint=f"run `d2 renew --days {most}`",
    )


def _previous(document: Any) -> str | None:
    meta = document.get("metadata") if isinstance(document, dict) else None
    value = meta.get("expires") if isinstance(meta, dict) else None
    return None if value is None else str(to_plain(value))


def _local_problems(policy: Any, size: int, limits: Limits) -> list[str]:
    problems = []
    if size > limits.max_bytes:
        problems.append(f"{size} bytes; local mode allows at most {limits.max_bytes}")
    try:
        check_limits(policy, limits, time.time())
    except D2Error as exc:
        problems.append(str(exc))
    return problems


def renew(
    file: FileArgument = None,
    days: Annotated[
        int,
        typer.Option(
            "--days",
            "-d",
            help="Days ahead: 1 to 7 (local mode's maximum, the default); up to 366 with --force.",
        ),
    ] = 7,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Allow more than 7 days, and write a file the default local limits refuse "
            "(for apps that pass their own Limits). An invalid policy is never written.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Set metadata.expires of a local policy file N days ahead (added when
    missing); nothing else in the file changes."""

    def body(out: Output) -> int:
        _check_days(days, force)
        path = local_policy_path(file)
        document, raw = read_document(path)  # a missing file or bad YAML/JSON: refused here
        expires = rfc3339(int(time.time()) + days * 86400)
        renewed = with_expires(raw, str(path), expires)
        policy = compile_policy(parse_document(renewed, str(path)), source=str(path), raw=renewed)
        problems = _local_problems(policy, len(renewed), Limits())
        if problems and not force:
            raise failed(
                f"{path} would not load in local mode even renewed; nothing was written",
                details=problems,
                hint="fix what is listed, or pass --force if your app passes its own Limits",
            )
        for problem in problems:
            out.warn(f"with the default local limits {path} will not load: {problem}")
        write_file(Path(os.path.realpath(path)), renewed, overwrite=True, unchanged=raw)
        found = discover()
        read_instead = found.in_force is not None and not same_file(path, found.in_force)
        if read_instead:
            out.warn(f"local mode does not read {path}: it reads {found.in_force}")
        out.success(f"renewed {path}: expires {expires}")
        out.emit(
            {
                "ok": True,
                "file": str(path),
                "expires": expires,
                "previous_expires": _previous(document),
                "days": days,
                "in_force": str(found.in_force) if found.in_force is not None else None,
                "problems": problems,
            }
        )
        return OK

    run_command(as_json, body)
