"""Which policy a command looks at: an explicit file, else the cloud bundle when
``D2_TOKEN`` is set, else the local file the runtime would read
(``D2_POLICY_FILE``, then ``${XDG_CONFIG_HOME:-~/.config}/d2/policy.*``, then
``./policy.*``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from d2.core.errors import D2Error, MissingPolicyError
from d2.core.limits import Limits
from d2.core.policy.compile import compile_policy
from d2.core.policy.load import check_limits, discover_policy_file

from .describe import PolicyView
from .documents import read_document
from .output import CliError

__all__ = ["load_file", "load_in_force", "local_policy_path"]


def local_policy_path(explicit: Path | None = None) -> Path:
    """``explicit``, or the file local mode would read; a usage error when none."""
    if explicit is not None:
        return explicit
    try:
        return Path(discover_policy_file())
    except MissingPolicyError as exc:
        raise CliError(str(exc), hint="run `d2 init`, or pass the file explicitly") from None


def load_file(path: Path, *, origin: str = "local", limits: Limits | None = None) -> PolicyView:
    """Load the policy file at ``path``. An invalid document raises
    ``InvalidPolicyError``; breaking the local ``limits`` (expiry, tool count,
    size) is recorded in ``problems`` (the runtime would refuse it)."""
    document, raw = read_document(path)
    policy = compile_policy(document, source=str(path), raw=raw)
    limits = limits or Limits()
    problems = []
    if len(raw) > limits.max_bytes:
        problems.append(f"{path} is {len(raw)} bytes; local mode allows at most {limits.max_bytes}")
    try:
        check_limits(policy, limits, time.time())
    except D2Error as exc:
        problems.append(str(exc))
    meta = document.get("metadata") if isinstance(document, dict) else None
    version = meta.get("version") if isinstance(meta, dict) else None
    return PolicyView(
        policy,
        origin,
        str(path),
        version if isinstance(version, (int, str)) else None,
        problems,
    )


def load_in_force(
    explicit: Path | None, *, local: bool = False, app_name: str | None = None
) -> PolicyView:
    """The policy in force for this environment (see the module docstring);
    ``local`` ignores ``D2_TOKEN``; ``app_name`` is the app a cloud token must be for."""
    if explicit is not None:
        return load_file(explicit, origin="file")
    if os.environ.get("D2_TOKEN") and not local:
        from .remote import fetch_view

        return fetch_view(app_name)
    return load_file(local_policy_path())
