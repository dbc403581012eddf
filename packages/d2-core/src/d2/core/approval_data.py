"""Approval data: the exact form of a call, and the request that waits for a person.

The bottom of the approvals stack (the stores and the evaluator build on it; it
imports nothing of D2):

* :func:`canonical_arguments` and :func:`call_digest` say which call an approval
  is for: the SHA-256 of the tool id, the canonical JSON of the bound arguments,
  the user id and the policy version. Two calls share a digest only when they are
  the same call.
* :class:`ApprovalRequest` is one request for such a call. Its ``id`` is random
  (:func:`new_request_id`), never derived from the call: once the request is used,
  rejected or expired, its id is dead, and the next identical call opens a new
  request with a new id.
* :func:`json_arguments` shows arguments to approvers and the decision log
  (secrets hidden).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = [
    "ApprovalRequest",
    "NoCanonicalForm",
    "call_digest",
    "canonical_arguments",
    "json_arguments",
    "new_request_id",
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
    if isinstance(value, enum.Enum):
        return {"__t": f"enum:{_qualname(value)}", "v": _canon(value.value, depth)}
    secret = getattr(value, "get_secret_value", None)
    if callable(secret):  # pydantic secrets: digested by their value, never shown
        import hashlib  # off the cold path: loaded on first use

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
    as digested by :func:`call_digest`. Raises :class:`NoCanonicalForm` for a value
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


def call_digest(tool_id: str, arguments: Mapping[str, Any], user_id: str, version: str) -> str:
    """What identifies this exact call for approvals (hex SHA-256 of the tool id,
    the canonical arguments, the user id and the policy version). Raises
    :class:`NoCanonicalForm` when an argument cannot be digested exactly."""
    import hashlib  # off the cold path: loaded on first use

    text = json.dumps(
        [tool_id, canonical_arguments(dict(arguments)), user_id, version],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def new_request_id() -> str:
    """A fresh, unguessable request id: 64 hex characters (256 random bits)."""
    import secrets  # off the cold path: loaded on first use

    return secrets.token_hex(32)


class ApprovalRequest(NamedTuple):
    """A call waiting for approval.

    ``id``: the request's random id (what ``approve`` takes); ``tool_id``,
    ``user_id``: who asked for what; ``arguments``: the bound arguments, as JSON
    values; ``policy_version``: the version (cloud) or file digest (local) it was
    asked under; ``expires_at``: Unix seconds after which approving or using it
    fails; ``approver_roles``: the roles that may approve it.
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
        return json.dumps(
            {**self._asdict(), "approver_roles": list(self.approver_roles)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ApprovalRequest:
        """Read a request written by :meth:`to_json`."""
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
