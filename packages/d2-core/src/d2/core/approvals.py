"""Approval requests: one exact call that waits for a person.

A grant with ``approval`` denies a matching call with
:class:`~d2.core.errors.ApprovalRequiredError`; its ``.request`` is an
:class:`ApprovalRequest` whose ``id`` is a digest of the tool id, the canonical JSON
of the bound arguments, the user id and the policy version. Once a user holding one
of ``approver_roles`` (not the requester) approves it, the same user's identical
call under the same policy version runs once before ``expires_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "ApprovalRequest",
    "approval_id",
    "approve",
    "approve_async",
    "canonical_arguments",
    "pending_approvals",
    "pending_approvals_async",
    "reject",
    "reject_async",
]


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for ``value``: models and dataclasses by their fields,
    sets sorted, bytes as hex; anything else by its ``repr`` (an object whose repr
    carries its address then never matches another call: fail closed)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    fields = getattr(value, "__dataclass_fields__", None)
    if isinstance(fields, dict) and not isinstance(value, type):
        return {name: getattr(value, name) for name in fields}
    if isinstance(value, (set, frozenset)):
        return sorted(canonical_arguments(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return {"repr": repr(value), "type": type(value).__qualname__}


def canonical_arguments(arguments: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, UTF-8 kept) of bound arguments."""
    import json

    return json.dumps(
        arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
    )


def json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as plain JSON values (what an approver is shown)."""
    import json

    loaded: dict[str, Any] = json.loads(canonical_arguments(dict(arguments)))
    return loaded


def approval_id(tool_id: str, arguments: Mapping[str, Any], user_id: str, version: str) -> str:
    """The id of the approval request for this exact call (hex SHA-256)."""
    import hashlib
    import json

    text = json.dumps(
        [tool_id, canonical_arguments(dict(arguments)), user_id, version],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class ApprovalRequest(NamedTuple):
    """A call waiting for approval.

    ``id``: digest of the exact call (see module docs); ``tool_id``, ``user_id``:
    who asked for what; ``arguments``: the bound arguments, as JSON values;
    ``policy_version``: the version (cloud) or file digest (local) it was asked
    under; ``expires_at``: Unix seconds after which approving or using it fails;
    ``approver_roles``: the roles that may approve it.
    """

    id: str
    tool_id: str
    user_id: str
    arguments: dict[str, Any]
    policy_version: str
    expires_at: float
    approver_roles: tuple[str, ...]

    def to_json(self) -> str:
        """The request as one JSON object (how shared stores keep it)."""
        import json

        return json.dumps(
            {**self._asdict(), "approver_roles": list(self.approver_roles)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ApprovalRequest:
        """Read a request written by :meth:`to_json`."""
        import json

        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            tool_id=str(data["tool_id"]),
            user_id=str(data["user_id"]),
            arguments=dict(data["arguments"]),
            policy_version=str(data["policy_version"]),
            expires_at=float(data["expires_at"]),
            approver_roles=tuple(str(r) for r in data["approver_roles"]),
        )


# -- deciding: the approver is the current user ------------------------------------
def _denied(message: str, reason: str, user_id: str | None, roles: frozenset[str]) -> Exception:
    from .errors import PermissionDeniedError

    return PermissionDeniedError(message, user_id=user_id, roles=roles, reason=reason)


def _check_approver(
    state: Any, request_id: str, user_id: str | None, roles: frozenset[str]
) -> None:
    if user_id is None:
        raise _denied(
            "no user context is set: call d2.set_user(approver_id, roles=[...]) before "
            "approving or rejecting",
            "no_user",
            None,
            roles,
        )
    if state is None or state.state != "pending":
        raise _denied(
            f"approval request {request_id!r} is not pending (unknown, expired, already "
            "decided or already used); the requester's next identical call creates a new one",
            "approval_not_found",
            user_id,
            roles,
        )
    request: ApprovalRequest = state.request
    if user_id == request.user_id:
        raise _denied(
            f"user {user_id!r} asked for approval request {request_id[:12]} and cannot "
            "approve or reject it: another user with role "
            f"[{', '.join(request.approver_roles)}] must",
            "approval_not_permitted",
            user_id,
            roles,
        )
    if roles.isdisjoint(request.approver_roles):
        raise _denied(
            f"user {user_id!r} (roles [{', '.join(sorted(roles)) or 'none'}]) may not decide "
            f"approval request {request_id[:12]}: it needs role "
            f"[{', '.join(request.approver_roles)}]",
            "approval_not_permitted",
            user_id,
            roles,
        )


def _logged(request: ApprovalRequest, verb: str, by: str | None) -> ApprovalRequest:
    import logging

    logging.getLogger("d2").info(
        "d2: approval request %s (%s for %r) %s by %r",
        request.id,
        request.tool_id,
        request.user_id,
        verb,
        by,
    )
    return request


def _decide(request_id: str, approve: bool, instance_name: str) -> ApprovalRequest:
    from .context import current_context
    from .evaluate import _now, evaluator_for

    ctx = current_context()
    store = evaluator_for(instance_name).store_for_use()
    now = _now()
    state = store.get_approval(request_id, now) if ctx.user_id is not None else None
    _check_approver(state, request_id, ctx.user_id, ctx.roles)
    assert ctx.user_id is not None and state is not None
    if not store.decide_approval(request_id, approve, ctx.user_id, now):
        _check_approver(None, request_id, ctx.user_id, ctx.roles)
    return _logged(state.request, "approved" if approve else "rejected", ctx.user_id)


async def _decide_async(request_id: str, approve: bool, instance_name: str) -> ApprovalRequest:
    from .context import current_context
    from .evaluate import _now, evaluator_for

    ctx = current_context()
    store = evaluator_for(instance_name).store_for_use()
    now = _now()
    state = await store.get_approval_async(request_id, now) if ctx.user_id is not None else None
    _check_approver(state, request_id, ctx.user_id, ctx.roles)
    assert ctx.user_id is not None and state is not None
    if not await store.decide_approval_async(request_id, approve, ctx.user_id, now):
        _check_approver(None, request_id, ctx.user_id, ctx.roles)
    return _logged(state.request, "approved" if approve else "rejected", ctx.user_id)


def approve(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Approve a pending request as the current user, who must hold one of its
    ``approver_roles`` and not be the requester (else ``PermissionDeniedError``
    with reason ``approval_not_permitted``). The requester's identical call then
    runs once before ``expires_at``. Returns the request."""
    return _decide(request_id, True, instance_name)


def reject(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Reject a pending request as the current user (same rules as :func:`approve`):
    the call is denied (reason ``approval_rejected``) until the request expires."""
    return _decide(request_id, False, instance_name)


async def approve_async(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Async twin of :func:`approve` (a network store never blocks the loop)."""
    return await _decide_async(request_id, True, instance_name)


async def reject_async(request_id: str, *, instance_name: str = "default") -> ApprovalRequest:
    """Async twin of :func:`reject`."""
    return await _decide_async(request_id, False, instance_name)


def _visible(
    requests: list[ApprovalRequest], user_id: str | None, roles: frozenset[str]
) -> list[ApprovalRequest]:
    return [
        r
        for r in requests
        if user_id is not None and r.user_id != user_id and not roles.isdisjoint(r.approver_roles)
    ]


def pending_approvals(*, instance_name: str = "default") -> list[ApprovalRequest]:
    """The pending requests the current user may decide (holds an approver role and
    did not ask), oldest expiry first. Empty without a user."""
    from .context import current_context
    from .evaluate import _now, evaluator_for

    ctx = current_context()
    if ctx.user_id is None:
        return []
    found = evaluator_for(instance_name).store_for_use().pending_approvals(_now())
    return _visible(found, ctx.user_id, ctx.roles)


async def pending_approvals_async(*, instance_name: str = "default") -> list[ApprovalRequest]:
    """Async twin of :func:`pending_approvals`."""
    from .context import current_context
    from .evaluate import _now, evaluator_for

    ctx = current_context()
    if ctx.user_id is None:
        return []
    store = evaluator_for(instance_name).store_for_use()
    return _visible(await store.pending_approvals_async(_now()), ctx.user_id, ctx.roles)
