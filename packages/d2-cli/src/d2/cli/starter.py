"""The starter policy ``d2 init`` writes: an ``admin`` role allowed everything, a
role holding the discovered tools, and an ``expires`` within the local limit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

__all__ = ["EXPIRY_SECONDS", "TOOLS_ROLE", "fit", "header", "starter_policy"]

TOOLS_ROLE = "developer"
EXPIRY_SECONDS = 7 * 86400  # the local limit: renewed weekly


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def starter_policy(
    tools: Sequence[str],
    *,
    name: str | None = None,
    source: str = ".",
    now: float | None = None,
) -> dict[str, Any]:
    """A policy granting ``tools`` to the ``developer`` role and everything to
    ``admin``, expiring 7 days from ``now`` (whole seconds, so never beyond)."""
    now = time.time() if now is None else now
    metadata: dict[str, Any] = {}
    if name:
        metadata["name"] = name
    metadata["description"] = (
        f"Starter policy written by `d2 init` from {len(tools)} guarded tool"
        f"{'' if len(tools) == 1 else 's'} in {source}"
    )
    metadata["expires"] = _rfc3339(int(now) + EXPIRY_SECONDS)
    return {
        "metadata": metadata,
        "policies": [
            {"role": "admin", "permissions": ["*"]},
            {"role": TOOLS_ROLE, "permissions": sorted(set(tools))},
        ],
    }


def _prefix(tool: str) -> str | None:
    cut = min((i for i in (tool.find(c) for c in ".:/") if i > 0), default=-1)
    return tool[: cut + 1] if cut > 0 else None


def fit(tools: Sequence[str], max_tools: int) -> list[str]:
    """``tools`` (sorted, distinct), or, when there are more than ``max_tools``,
    the largest families sharing a prefix (``billing:``) folded into prefix
    wildcards (``billing:*``) until they fit. May still be over when nothing folds."""
    current = sorted(set(tools))
    families: dict[str, list[str]] = {}
    for tool in current:
        prefix = _prefix(tool)
        if prefix is not None:
            families.setdefault(prefix, []).append(tool)
    for prefix, members in sorted(families.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(current) <= max_tools or len(members) < 2:
            break
        current = sorted({t for t in current if t not in members} | {prefix + "*"})
    return current


def header(count: int) -> list[str]:
    """The comment lines at the top of a YAML starter policy."""
    lines = [
        "D2 policy written by `d2 init`.",
        "Local mode reads it when D2_TOKEN is not set; it must be renewed weekly:",
        "move metadata.expires forward (at most 7 days ahead) or run `d2 init --force`.",
        "Check it with `d2 diagnose`; see what it allows with `d2 inspect`.",
    ]
    if not count:
        lines.append("No guarded tools were found: add tool ids to the developer role.")
    return lines
