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
  (secrets hidden); :func:`shown_arguments` also says whether that display is
  whole (a call is approvable only when it is).
* :func:`read_once` reads the arguments once, into a private copy that the digest
  and the view of one request both read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._canonical import NoCanonicalForm, ascii_json, canonical_arguments
from ._display import TOO_LARGE, shown_arguments, shown_with_reason
from ._reading import read_once

__all__ = [
    "TOO_LARGE",
    "ApprovalRequest",
    "NoCanonicalForm",
    "call_digest",
    "canonical_arguments",
    "json_arguments",
    "new_request_id",
    "read_once",
    "shown_arguments",
    "shown_with_reason",
]


def json_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` as plain JSON values (what an approver and the decision log
    are shown; see :mod:`d2.core._display`); never raises, never runs the app's
    code, bounded in work. Keys of different types never merge; integers beyond
    2**53 are shown as their decimal digits (a string)."""
    return shown_arguments(arguments)[0]


def call_digest(tool_id: str, arguments: Mapping[str, Any], user_id: str, version: str) -> str:
    """What identifies this exact call for approvals (hex SHA-256 of the tool id,
    the canonical arguments, the user id and the policy version). Raises
    :class:`NoCanonicalForm` when an argument cannot be digested exactly."""
    import hashlib  # off the cold path: loaded on first use

    # who and what (a JSON array: it ends where it ends, and holds no line break),
    # then the canonical arguments (ASCII), hashed as they are: never copied into
    # another JSON text (which would escape it again)
    digest = hashlib.sha256(
        ascii_json(
            json.dumps([tool_id, user_id, version], separators=(",", ":"), ensure_ascii=False)
        ).encode("ascii")
    )
    digest.update(b"\n")
    digest.update(canonical_arguments(dict(arguments)).encode("ascii"))
    return digest.hexdigest()


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


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
    fails; ``approver_roles``: the roles that may approve it; ``asked_at``: Unix
    seconds when the call asked (``0.0``: unknown, a request stored before D2
    recorded it); ``object_argument``: the name of the argument that holds the
    object a method runs on (its ``self`` or ``cls``, whatever its name), never sent
    to a webhook (``""``: the call has none; ``None``: unknown, a request stored
    before D2 recorded it).
    """

    id: str
    tool_id: str
    user_id: str
    arguments: dict[str, Any]
    policy_version: str
    expires_at: float
    approver_roles: tuple[str, ...]
    asked_at: float = 0.0
    object_argument: str | None = None

    def to_json(self) -> str:
        """The request as one JSON object (how shared stores keep it). The
        arguments keep their order (a mapping's order is part of the call: the
        approver reading a shared store reads it as the tool does)."""
        text = json.dumps(
            {**self._asdict(), "approver_roles": list(self.approver_roles)},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        # UTF-8 has no lone surrogate (``"\ud800"``, which JSON and tool-call parsers
        # produce): written as its JSON escape, so any store can encode the text
        return _LONE_SURROGATE.sub(_escaped, text) if not text.isascii() else text

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
            asked_at=float(data.get("asked_at", 0.0)),
            object_argument=_optional_text(data.get("object_argument")),
        )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)
