"""What every adapter shares: the D2 tool id of a framework tool, and the text a
model reads when D2 refuses a call."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    ConfigurationError,
    PermissionDeniedError,
)

__all__ = [
    "DenyMessage",
    "ToolIds",
    "approval_details",
    "approval_of",
    "denial_message",
    "resume_stopped",
    "tool_id_resolver",
]

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


def approval_of(err: PermissionDeniedError) -> ApprovalRequest | None:
    """The approval request a denial waits for (an :class:`ApprovalRequiredError`
    that asked a person), else ``None``."""
    if isinstance(err, ApprovalRequiredError):
        request = getattr(err, "request", None)
        if isinstance(request, ApprovalRequest):
            return request
    return None


def approval_details(request: ApprovalRequest) -> dict[str, Any]:
    """What an app (and the model) may learn about a pending approval: JSON values
    under stable keys (``d2_approval_request`` is the id to pass to ``d2.approve``)."""
    return {
        "d2_reason": "approval_required",
        "d2_approval_request": request.id,
        "d2_tool_id": request.tool_id,
        "d2_approvers": list(request.approver_roles),
        "d2_expires_at": request.expires_at,
    }


def _seconds(retry_after: float) -> str:
    return f"{max(math.ceil(retry_after), 0)}s"


def denial_message(err: PermissionDeniedError) -> str:
    """The default text a model reads when D2 refuses a call.

    It names the tool and the machine-readable reason; for a guardrail denial it adds
    the rule that refused (which argument or field, which sequence or label). It never
    carries argument values, the roles that could call the tool, or policy paths.

    Two denials read differently, because the model can act on them: a call that
    waits for a person reads ``approval required for payments.refund: request <id>,
    approvers: finance_lead`` (the id an approver passes to ``d2.approve``, and the
    roles that may approve), and an exhausted budget reads ``budget exceeded for
    web.search; retry after 42s`` (or ``... for this request`` for a ``per: request``
    budget).
    """
    request = approval_of(err)
    if request is not None:
        return (
            f"approval required for {request.tool_id}: request {request.id}, "
            f"approvers: {', '.join(request.approver_roles)}"
        )
    if err.reason == "budget_exceeded":
        if err.retry_after is None:
            return f"budget exceeded for {err.tool_id} for this request"
        return f"budget exceeded for {err.tool_id}; retry after {_seconds(err.retry_after)}"
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


_STOPPED: OrderedDict[str, None] = OrderedDict()  # the causes already logged


def resume_stopped(err: PermissionDeniedError) -> None:
    """Log (logger ``d2.agents``, WARNING, once per cause) that a resumed run
    cannot continue the request that paused, so its guarded calls are refused."""
    text = str(err)
    if text in _STOPPED:
        return
    _STOPPED[text] = None
    if len(_STOPPED) > 1024:
        _STOPPED.popitem(last=False)
    logging.getLogger("d2.agents").warning(
        "d2: a resumed run cannot continue the request that paused, so its guarded calls "
        "are refused: %s",
        text,
    )
