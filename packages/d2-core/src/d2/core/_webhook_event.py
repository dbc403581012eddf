"""What an approval webhook sends, and how its URL is shown: pure functions, no I/O.

Promises kept here (each function keeps one):

* :func:`approval_event` builds the one JSON shape every event has (documented in
  ``docs/approvals.md``, "Notifications"): a ``text`` line for Slack-compatible
  incoming webhooks and the structured fields. ``text`` is one line, bounded, with
  the requester's and the tool's names escaped for Slack (``&``, ``<``, ``>``) and
  every invisible character (:func:`d2.core._invisible.invisible`: controls,
  formats, separators, default-ignorables) as ``?``, so a user id such as
  ``<!channel>`` or one holding a newline or a bidi override cannot ping a
  channel, forge a second line or reorder what the approver reads. So does every
  character of a right-to-left script (bidirectional class R, AL or AN: the line
  is left to right, and a chat client would reorder the runs around it, swapping
  two right-to-left ids around the colon between them), and a Cyrillic, Greek,
  Armenian, Cherokee, Coptic or Lisu letter in a name that also holds a Latin
  one, or a letter of another of these scripts
  (:func:`d2.core._invisible.foreign`), which would draw like another name. Mentions and
  links are defanged, visibly, for the receivers that read them in plain text
  (Mattermost, Rocket.Chat, Discord's Slack endpoint, Slack's auto-linking):
  ``@`` becomes the fullwidth at sign U+FF20 (no ``@channel``, ``@here``,
  ``@all``, ``@everyone``), ``[`` ``]`` the fullwidth brackets U+FF3B, U+FF3D
  (no Markdown link), a backtick ``'``, ``://`` ``[:]//``, and in a user id a
  ``.`` before a letter or digit ``[.]`` (no bare link: ``www[.]evil[.]example``).
  The structured fields carry the values exactly.
* The call's arguments are included only when the app opted in, and then only
  as the approver's view (:mod:`d2.core._display`, already in
  ``ApprovalRequest.arguments``): never an object of the app.
* :func:`encode_event` gives strict JSON (ASCII, no ``NaN``), within
  :data:`MAX_BODY` bytes: arguments too large are replaced by ``null``.
* :func:`masked_url` never shows what may be secret in a webhook URL: its path,
  query, fragment and credentials (an incoming webhook's URL *is* its secret).
* :func:`retry_after_seconds` reads a receiver's ``Retry-After`` header without
  ever raising, as a bounded number of seconds.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._invisible import foreign, invisible

if TYPE_CHECKING:
    from .approval_data import ApprovalRequest

__all__ = [
    "EVENT_VERSION",
    "KINDS",
    "MAX_BODY",
    "approval_event",
    "encode_event",
    "masked_url",
    "retry_after_seconds",
    "summary",
]

EVENT_VERSION = 1
"""The ``version`` field of every event; raised only when a field changes meaning."""

KINDS = {"requested": "pending", "approved": "approved", "rejected": "rejected"}
"""Event kinds (``event`` is ``approval.<kind>``) and the request's ``state`` after each."""

MAX_BODY = 256 * 1024
"""Bytes of JSON an event may take; beyond, its ``arguments`` become ``null``."""

_PIECE = 80  # characters of a requester or tool name shown in ``text``
_SLACK = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "@": "\uff20",  # FULLWIDTH COMMERCIAL AT: no mention
        "[": "\uff3b",  # FULLWIDTH LEFT SQUARE BRACKET: no Markdown link
        "]": "\uff3d",
        "`": "'",  # no code span swallowing the rest of the line
    }
)
_DOT = re.compile(r"\.(?=[^\W_])")  # a dot before a letter or digit: a host name
_MAX_RETRY_AFTER = 86400.0


def _iso(ts: float, millis: bool = False) -> str:
    if not math.isfinite(ts):
        return "unknown"
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{base}.{int(ts % 1 * 1000):03d}Z" if millis else base + "Z"


def _shown(value: str, *, person: bool = False) -> str:
    """``value`` safe for one line of chat text: invisible characters (newlines,
    bidi overrides, zero-width joiners, fillers, lone surrogates; spaces but
    ``" "``), right-to-left characters and look-alikes of another script become
    ``?``, ``&<>`` are escaped, mentions and links defanged (see the module's
    promises; ``person``: a user id, whose dots before a letter or digit become
    ``[.]`` too), and it is cut to a bounded length."""
    cut = value if len(value) <= _PIECE else value[: _PIECE - 1] + "\u2026"
    hide = foreign(cut, within_left_to_right=True)
    clean = "".join("?" if (ch != " " and invisible(ch)) or ch in hide else ch for ch in cut)
    clean = clean.translate(_SLACK).replace("://", "[:]//")
    return _DOT.sub("[.]", clean) if person else clean


def summary(kind: str, request: ApprovalRequest, decided_by: str | None, link: str | None) -> str:
    """The one-line ``text`` of an event (see the module's promises)."""
    who, tool = _shown(request.user_id, person=True), _shown(request.tool_id)
    by = _shown(decided_by or "?", person=True)
    short = request.id[:12]
    if kind == "requested":
        roles = ", ".join(_shown(r) for r in request.approver_roles[:8])
        if len(request.approver_roles) > 8:
            roles += ", \u2026"
        line = (
            f"D2: approval requested: {who} wants to call {tool}; approvers: {roles}; "
            f"expires {_iso(request.expires_at)} (request {short})"
        )
    elif kind == "approved":
        line = (
            f"D2: approval request {short} approved by {by}: "
            f"{who} may call {tool} once before {_iso(request.expires_at)}"
        )
    else:
        line = f"D2: approval request {short} rejected by {by}: {who}'s call of {tool} will not run"
    return f"{line} {link}" if link else line


def inbox_link(inbox_url: str | None, request_id: str) -> str | None:
    """``<inbox_url>/<id>`` (one slash between), or ``None`` without an inbox."""
    if not inbox_url:
        return None
    return f"{inbox_url.rstrip('/')}/{request_id}"


def approval_event(
    kind: str,
    request: ApprovalRequest,
    *,
    app: str | None,
    event_id: str,
    occurred_at: float,
    decided_by: str | None = None,
    inbox_url: str | None = None,
    arguments: bool = False,
) -> dict[str, Any]:
    """The event for ``request`` (``kind``: ``requested``, ``approved`` or
    ``rejected``), as a dict in the documented shape. ``app``: the app's
    namespace (``local:<metadata.name>``, ``cloud:<account>:<app>``; ``""`` or
    ``None`` for an unnamed policy); ``arguments``: include the approver's view of
    the call's arguments (opt-in)."""
    if kind not in KINDS:
        raise ValueError(f"unknown approval event kind {kind!r}; one of {sorted(KINDS)}")
    link = inbox_link(inbox_url, request.id)
    event: dict[str, Any] = {
        "text": summary(kind, request, decided_by, link),
        "event": f"approval.{kind}",
        "version": EVENT_VERSION,
        "event_id": event_id,
        "occurred_at": _iso(occurred_at, millis=True),
        "app": app or None,
        "request_id": request.id,
        "tool_id": request.tool_id,
        "requester": request.user_id,
        "approver_roles": list(request.approver_roles),
        "expires_at": _iso(request.expires_at),
        "policy_version": request.policy_version,
        "state": KINDS[kind],
        "decided_by": decided_by,
        "inbox_url": link,
    }
    if arguments:
        event["arguments"] = _without_object(request)
    return event


def _without_object(request: ApprovalRequest) -> dict[str, Any]:
    """The arguments a call was given, without the object a method runs on: the
    approver sees the object (its state is part of what runs), but its attributes
    (a client's API key, a cache) are no business of a chat channel. The request
    names the argument that holds it (whatever its name, wherever it is); one
    stored before D2 recorded that has it first, under ``self`` or ``cls``, as a
    tagged object."""
    arguments = request.arguments
    name = request.object_argument
    if name is not None:
        return {k: v for k, v in arguments.items() if k != name} if name else arguments
    first = next(iter(arguments), None)
    if first in ("self", "cls"):
        value = arguments[first]
        if isinstance(value, dict) and ("__class__" in value or "__type__" in value):
            return {k: v for k, v in arguments.items() if k != first}
    return arguments


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float as its name (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _dumps(event: dict[str, Any]) -> bytes:
    text = json.dumps(event, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def encode_event(event: dict[str, Any]) -> bytes:
    """``event`` as the request body: strict JSON, ASCII (a lone surrogate in a
    user id cannot break the encoding), at most :data:`MAX_BODY` bytes unless the
    fields without arguments alone exceed it (they are bounded by the app's own ids).
    Arguments that cannot be encoded or that are too large become ``null``."""
    try:
        body = _dumps(event)
    except ValueError:  # NaN or infinity among the arguments
        try:
            body = _dumps({**event, "arguments": _finite(event.get("arguments"))})
        except (ValueError, TypeError, RecursionError):
            body = _dumps({**event, "arguments": None})
    except (TypeError, RecursionError):
        body = _dumps({**event, "arguments": None})
    if len(body) > MAX_BODY and event.get("arguments") is not None:
        body = _dumps({**event, "arguments": None})
    return body


def masked_url(url: str) -> str:
    """``url`` as logs and errors show it: scheme, host and port only, the rest
    (path, query, fragment, credentials: where a webhook keeps its secret) as
    ``/***``. Never raises; an unreadable URL is ``<invalid URL>``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return "<invalid URL>"
    scheme = parts.scheme
    if not scheme.isascii() or not scheme.isalnum() or not host:
        return "<invalid URL>"
    if not all(ch.isalnum() or ch in ".-:_" for ch in host):
        host = "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}{f':{port}' if port is not None else ''}/***"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number of seconds or an
    HTTP date; ``now``: Unix seconds), between 0 and one day; ``None`` when absent
    or unreadable. Never raises."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isascii() and text.isdigit():
        return float(min(int(text), int(_MAX_RETRY_AFTER)))
    try:
        import datetime as dt
        from email.utils import parsedate_to_datetime

        moment = parsedate_to_datetime(text)
        if moment.tzinfo is None:  # "-0000": an HTTP date is in GMT
            moment = moment.replace(tzinfo=dt.timezone.utc)
        when = moment.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    if not math.isfinite(when):
        return None
    return min(max(when - now, 0.0), _MAX_RETRY_AFTER)
