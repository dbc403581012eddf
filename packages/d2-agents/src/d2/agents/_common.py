"""What every adapter shares: the D2 tool id of a framework tool, and the text a
model reads when D2 refuses a call."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from d2.core import ConfigurationError, PermissionDeniedError

__all__ = ["DenyMessage", "ToolIds", "denial_message", "tool_id_resolver"]

ToolIds = Mapping[str, str] | Callable[[str], str] | None
"""How a framework's tool name becomes a D2 tool id: ``None`` (the name is the id),
a mapping (names it lacks keep their own name) or a function ``name -> id``."""

DenyMessage = Callable[[PermissionDeniedError], str]
"""Builds the text a model reads for a refused call."""

# Denials decided by a rule about the call itself, whose detail helps the model
# correct it; the detail names the argument or field and the rule, never a value.
_GUARDRAILS = frozenset(
    {
        "input_validation",
        "sequence_violation",
        "data_flow_violation",
        "output_validation",
        "output_sanitization",
    }
)


def denial_message(err: PermissionDeniedError) -> str:
    """The default text a model reads when D2 refuses a call.

    It names the tool and the machine-readable reason; for a guardrail denial it adds
    the rule that refused (which argument or field, which sequence or label). It never
    carries argument values, the roles that could call the tool, or policy paths.
    """
    if err.reason in _GUARDRAILS and err.trace:
        detail = err.trace[-1].detail
        return f"Permission denied: {err.tool_id!r} was refused ({err.reason}): {detail}."
    return f"Permission denied: the current user may not call {err.tool_id!r} ({err.reason})."


def tool_id_resolver(tool_ids: ToolIds) -> Callable[[str], str]:
    """Turn ``tool_ids`` (see :data:`ToolIds`) into a function ``name -> tool id``;
    a wrong type raises :class:`~d2.core.ConfigurationError` now, not on first call."""
    if tool_ids is None:
        return str
    if isinstance(tool_ids, Mapping):
        table = dict(tool_ids)
        for name, tool_id in table.items():
            if not isinstance(name, str) or not isinstance(tool_id, str) or not tool_id.strip():
                raise ConfigurationError(
                    f"tool_ids maps tool names to non-empty tool id strings; got {name!r}: "
                    f"{tool_id!r}"
                )
        return lambda name: table.get(name, name)
    if callable(tool_ids):
        return tool_ids
    raise ConfigurationError(
        f"tool_ids must be a mapping of tool name to tool id or a function, got {tool_ids!r}"
    )
