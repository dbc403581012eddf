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


_MAX_DEPTH = 64
_ATOMS_BY_TEXT = ("datetime", "decimal", "uuid", "pathlib", "ipaddress", "fractions")


class NoCanonicalForm(ValueError):
    """An argument has no exact, stable form to digest (an approval of such a call
    could be reused for another call, so none is given)."""


def _qualname(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _text(value: Any, depth: int) -> str:
    import json

    return json.dumps(_canon(value, depth), sort_keys=True, separators=(",", ":"))


def _canon(value: Any, depth: int = 0) -> Any:
    """An exact, typed stand-in for ``value`` (JSON values; other types tagged
    with ``__t``) or :class:`NoCanonicalForm`. Two values get the same stand-in
    only when they are the same type with the same content."""
    if depth > _MAX_DEPTH:
        raise NoCanonicalForm("nested too deeply")
    depth += 1
    if value is None or type(value) is str:
        return value
    cls = type(value)
    if cls is bool:
        return value
    if cls is int:
        return value if -(2**63) <= value < 2**63 else {"__t": "int", "v": format(value, "x")}
    if cls is float:
        import math

        return value if math.isfinite(value) else {"__t": "float", "v": repr(value)}
    if cls is list:
        return [_canon(v, depth) for v in value]
    if cls is tuple:
        return {"__t": "tuple", "v": [_canon(v, depth) for v in value]}
    if cls is dict and all(type(k) is str for k in value):
        return {"__t": "dict", "v": {k: _canon(v, depth) for k, v in value.items()}}
    if isinstance(value, Mapping):
        pairs = sorted([_text(k, depth), _canon(v, depth)] for k, v in value.items())
        return {"__t": f"map:{_qualname(value)}", "v": pairs}
    if cls in (bytes, bytearray):
        return {"__t": cls.__name__, "v": bytes(value).hex()}
    if cls in (set, frozenset):
        return {"__t": cls.__name__, "v": sorted(_text(v, depth) for v in value)}
    import enum

    if isinstance(value, enum.Enum):
        return {"__t": f"enum:{_qualname(value)}", "v": _canon(value.value, depth)}
    secret = getattr(value, "get_secret_value", None)
    if callable(secret):  # pydantic secrets: digested by their value, never shown
        import hashlib

        digest = hashlib.sha256(_text(secret(), depth).encode()).hexdigest()
        return {"__t": f"secret:{_qualname(value)}", "v": digest}
    if hasattr(cls, "__pydantic_fields__") or hasattr(cls, "model_fields"):
        fields = {k: _canon(v, depth) for k, v in vars(value).items()}
        extra = getattr(value, "__pydantic_extra__", None)
        return {"__t": f"model:{_qualname(value)}", "v": fields, "x": _canon(extra, depth)}
    dc_fields = getattr(cls, "__dataclass_fields__", None)
    if isinstance(dc_fields, dict):
        return {
            "__t": f"dataclass:{_qualname(value)}",
            "v": {name: _canon(getattr(value, name), depth) for name in dc_fields},
        }
    if cls.__module__ in _ATOMS_BY_TEXT:
        return {"__t": _qualname(value), "v": str(value)}
    if isinstance(value, (str, int, float)):  # subclasses: their value and their type
        return {"__t": f"{type(value).__mro__[-2].__name__}:{_qualname(value)}", "v": _canon(
            type(value).__mro__[-2](value), depth
        )}  # fmt: skip
    if (  # plain instances: their state
        hasattr(value, "__dict__")
        and not isinstance(value, type)
        and not callable(value)
        and not hasattr(cls, "__slots__")
    ):
        return {"__t": f"object:{_qualname(value)}", "v": _canon(dict(vars(value)), depth)}
    raise NoCanonicalForm(f"a {_qualname(value)} value has no canonical form")


def canonical_arguments(arguments: Any) -> str:
    """Exact canonical JSON of bound arguments (sorted keys, ASCII, types tagged),
    as digested for approval ids. Raises :class:`NoCanonicalForm` for a value
    whose state cannot be read exactly (an object with slots, a function, a
    socket...)."""
    try:
        return _text(arguments, 0)
    except NoCanonicalForm:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        raise NoCanonicalForm(f"{type(exc).__name__}: {exc}") from None


def _shown(value: Any, depth: int = 0) -> Any:
    """A JSON value for display (approvers, decision logs): never raises; secrets
    and excluded model fields stay hidden (``model_dump(mode="json")``)."""
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    depth += 1
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, (list, tuple)):
        return [_shown(v, depth) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _shown(v, depth) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_shown(v, depth) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    try:
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            return _shown(dump(mode="json"), depth)
        fields = getattr(type(value), "__dataclass_fields__", None)
        if isinstance(fields, dict):
            return {name: _shown(getattr(value, name), depth) for name in fields}
        text = repr(value)
    except Exception:  # a display must never fail the call
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 1000 else text[:1000] + "..."


def json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as plain JSON values (what an approver and the decision log
    are shown); never raises."""
    return {str(k): _shown(v) for k, v in arguments.items()}


def approval_id(tool_id: str, arguments: Mapping[str, Any], user_id: str, version: str) -> str:
    """The id of the approval request for this exact call (hex SHA-256). Raises
    :class:`NoCanonicalForm` when an argument cannot be digested exactly."""
    import hashlib
    import json

    text = json.dumps(
        [tool_id, canonical_arguments(dict(arguments)), user_id, version],
        separators=(",", ":"),
        ensure_ascii=True,
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
