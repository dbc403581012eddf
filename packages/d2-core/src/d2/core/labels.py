"""Labels of a tool id: fields the decision log records, and attributes the metrics
carry, for every decision about that tool, besides its id.

An integration that guards tools on someone else's behalf says whose they are:
d2-gateway labels each upstream tool with ``upstream`` (``{"upstream": "git"}`` for
``git.git_log``), so a decision-log record reads ``"upstream": "git"`` and the
``d2.decisions`` counter and the duration histograms get an ``upstream``
attribute. Labels are set once, when the tool is registered; a guarded call never
reads them (the decision log's writer thread and the metrics' collection do), so
they cost the hot path nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["RESERVED", "set_tool_labels", "tool_labels"]

RESERVED = frozenset(
    {
        # decision-log fields
        "ts",
        "request_id",
        "user_id",
        "roles",
        "tool_id",
        "decision",
        "reason",
        "rule",
        "policy_version",
        "mode",
        "duration_us",
        "approval_id",
        "retry_after",
        "arguments",
        # metric attributes
        "tool",
        "result",
    }
)
"""Names a label may not take: the decision log's own fields and the metrics' own
attributes (a label never overwrites what D2 recorded)."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_labels: dict[str, Mapping[str, str]] = {}


def set_tool_labels(tool_id: str, labels: Mapping[str, str]) -> None:
    """Label every later decision about ``tool_id`` with ``labels`` (replacing
    earlier labels; an empty mapping removes them).

    A name is 1 to 32 characters of ``[a-z0-9_]`` starting with a letter and not
    one of :data:`RESERVED`; a value is a string of at most 200 characters.
    ``ValueError`` names the bad input otherwise."""
    if not isinstance(tool_id, str) or not tool_id:
        raise ValueError(f"tool_id must be a non-empty string, got {tool_id!r}")
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ValueError(
                f"label name {name!r} of {tool_id!r} is not allowed: use 1 to 32 of "
                "a-z, 0-9 and _, starting with a letter"
            )
        if name in RESERVED:
            raise ValueError(
                f"label name {name!r} of {tool_id!r} is one of D2's own fields; choose another name"
            )
        if not isinstance(value, str) or len(value) > 200:
            raise ValueError(
                f"label {name!r} of {tool_id!r} must be a string of at most 200 "
                f"characters, got {value!r:.60}"
            )
        checked[name] = value
    if checked:
        _labels[tool_id] = MappingProxyType(checked)
    else:
        _labels.pop(tool_id, None)


def tool_labels(tool_id: str) -> Mapping[str, str]:
    """The labels of ``tool_id`` (read-only; empty when it has none)."""
    return _labels.get(tool_id, _EMPTY)
