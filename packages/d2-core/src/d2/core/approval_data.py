"""Approval data: the exact form of a call, and the request that waits for a person.

The bottom of the approvals stack (the stores and the evaluator build on it; it
imports nothing of D2):

* :func:`canonical_arguments` (from :mod:`d2.core._canonical`) and
  :func:`call_digest` say which call an approval is for: the SHA-256 of the tool
  id, the canonical JSON of the bound arguments, the user id and the policy
  version. Two calls share a digest only when they are the same call.
* :class:`ApprovalRequest` is one request for such a call. Its ``id`` is random
  (:func:`new_request_id`), never derived from the call: once the request is used,
  rejected or expired, its id is dead, and the next identical call opens a new
  request with a new id.
* :func:`json_arguments` shows arguments to approvers and the decision log
  (secrets hidden).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._canonical import NoCanonicalForm, canonical_arguments

__all__ = [
    "ApprovalRequest",
    "NoCanonicalForm",
    "call_digest",
    "canonical_arguments",
    "json_arguments",
    "new_request_id",
]


_MAX_DEPTH = 64  # how deep a display goes


_MAX_SHOWN = 100_000  # values shown at most; past it, each is _NOT_SHOWN
_NOT_SHOWN = "<not shown: the arguments hold more values than a display shows>"
_SAFE_INT = 2**53  # beyond this, JSON readers (JavaScript) round: shown as text


def _shown_key(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 200 else text[:200] + "..."


def _shown_mapping(value: Mapping[Any, Any], depth: int, left: list[int]) -> dict[str, Any]:
    """A mapping for display. String keys as they are; when any key is not a
    string, every key as its ``repr`` (``1`` and ``'1'``), so keys of different
    types never merge into one entry; reprs that repeat get a ``#n`` suffix. A dict
    (of any subclass) is read from its own storage, as the digest reads it: a
    subclass's ``items()`` may show less than it holds (werkzeug's ``MultiDict``
    answers with the first value of each key)."""
    items = list(dict.items(value) if isinstance(value, dict) else value.items())
    if all(type(k) is str for k, _ in items):
        return {k: _shown(v, depth, left) for k, v in items}
    shown: dict[str, Any] = {}
    for k, v in items:
        name = base = _shown_key(k)
        n = 1
        while name in shown:
            n += 1
            name = f"{base} #{n}"
        shown[name] = _shown(v, depth, left)
    return shown


def _shown_int(value: int) -> Any:
    value = int.__int__(value)
    if -_SAFE_INT <= value <= _SAFE_INT:
        return value
    try:
        return str(value)  # the exact decimal digits
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return hex(value)


def _shown(value: Any, depth: int, left: list[int]) -> Any:
    """A JSON value for display (approvers, decision logs): never raises; secrets
    and excluded model fields stay hidden (``model_dump(mode="json")``). ``left``:
    how many more values the display may show (a value sharing its parts, such
    as ``x = (x, x)`` repeated, would otherwise be shown without end)."""
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    left[0] -= 1
    if left[0] < 0:
        return _NOT_SHOWN
    depth += 1
    try:
        if value is None or type(value) in (bool, str):
            return value
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, int):
            return _shown_int(value)
        if isinstance(value, list):  # the items it holds, whatever __iter__ says
            return [_shown(v, depth, left) for v in list.__iter__(value)]
        if isinstance(value, tuple):
            return [_shown(v, depth, left) for v in tuple.__iter__(value)]
        if isinstance(value, Mapping):
            return _shown_mapping(value, depth, left)
        if isinstance(value, (set, frozenset)):
            return sorted((_shown(v, depth, left) for v in value), key=repr)
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": bytes(value).hex()}
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            return _shown(dump(mode="json"), depth, left)
        fields = getattr(type(value), "__dataclass_fields__", None)
        if isinstance(fields, dict):
            shown = {name: _shown(getattr(value, name), depth, left) for name in fields}
            extra = getattr(value, "__dict__", None)  # attributes set outside the fields
            if isinstance(extra, dict):
                for name, v in extra.items():
                    if isinstance(name, str) and name not in shown:
                        shown[name] = _shown(v, depth, left)
            return shown
        text = repr(value)
    except Exception:  # a display must never fail the call
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 1000 else text[:1000] + "..."


def json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as plain JSON values (what an approver and the decision log
    are shown); never raises. Keys of different types never merge; integers
    beyond 2**53 are shown as their decimal digits (a string)."""
    return _shown_mapping(arguments, 0, [_MAX_SHOWN])


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
