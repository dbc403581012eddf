"""Entity tags and the conditional-request headers of publish and bundle fetches."""

from __future__ import annotations

import re
from typing import Literal

from .errors import ApiError

__all__ = ["ANY", "ETagSet", "check_publish_precondition", "matches", "parse_etags"]

ANY: Literal["*"] = "*"
ETagSet = Literal["*"] | frozenset[str]
"""``"*"`` or a set of entity tags: strong ones quoted (``"x"``), weak ones keeping
their prefix (``W/"x"``)."""

_ITEM = re.compile(r'\s*(W/)?("[^"]*"|[^,\s]+)\s*(?:,|$)')
_MAX_HEADER = 8192
_WEAK = "W/"


def parse_etags(header: str | None) -> ETagSet | None:
    """``If-Match`` / ``If-None-Match`` -> ``"*"``, a set of tags, or ``None`` when
    absent. An unquoted tag is read as if quoted (lenient); a weak tag keeps its
    ``W/`` prefix so that strong comparison can refuse it. A header that does not
    parse yields the tags before the first malformed item (possibly none)."""
    if header is None:
        return None
    text = header.strip()[:_MAX_HEADER]
    if text == "*":
        return ANY
    tags: set[str] = set()
    pos = 0
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if m is None or m.end() == pos:
            break
        tag = m.group(2)
        tag = tag if tag.startswith('"') else f'"{tag}"'
        tags.add(_WEAK + tag if m.group(1) else tag)
        pos = m.end()
    return frozenset(tags)


def matches(tags: ETagSet, current: frozenset[str], *, strong: bool = False) -> bool:
    """Whether a parsed header matches any of the ``current`` (strong) tags; ``*``
    matches when there is a current one.

    Weak comparison (the default, RFC 9110 8.8.3.2, for ``If-None-Match`` on a
    fetch) ignores a ``W/`` prefix; strong comparison (``If-Match``) never lets a
    weak tag match."""
    if tags == ANY:
        return bool(current)
    if not strong:
        tags = frozenset(t.removeprefix(_WEAK) for t in tags)
    return not tags.isdisjoint(current)


def check_publish_precondition(
    *,
    if_match: ETagSet | None,
    if_none_match: ETagSet | None,
    current_version: int,
    revoked: bool,
    etags: frozenset[str],
) -> None:
    """Refuse a publish whose precondition does not hold for the app's state.

    Exactly one of two forms is accepted:

    - ``If-None-Match: *`` (and no ``If-Match``): holds when no policy is in force
      (nothing published yet, or the current version revoked);
    - ``If-Match: "<etag>"`` (and no ``If-None-Match``): holds when one of the
      listed tags is, by strong comparison, an ETag served for the current version
      (any signing of it; after a revocation, the revoked version's). ``W/`` tags
      never match.

    Neither header: 428 ``precondition_required``. Anything else (another
    ``If-None-Match`` value, ``If-Match: *``, an empty or unparsable value, both
    headers at once) or a tag that does not match: 412 ``precondition_failed``, so
    that every successful publish was conditioned on the state it replaces.
    """
    if if_match is None and if_none_match is None:
        raise ApiError(
            428,
            "precondition_required",
            message='send If-None-Match: * for the first publish, else If-Match: "<etag>"',
        )
    in_force = current_version > 0 and not revoked
    message = "someone published since your ETag; fetch the current bundle and retry"
    if if_match is not None and if_none_match is not None:
        ok, message = False, "send either If-None-Match or If-Match, not both"
    elif if_none_match is not None:
        ok = if_none_match == ANY and not in_force
        if if_none_match != ANY:
            message = 'If-None-Match on publish must be *; else send If-Match: "<etag>"'
    else:
        assert if_match is not None
        ok = if_match != ANY and current_version > 0 and matches(if_match, etags, strong=True)
        if if_match == ANY or not if_match:
            message = 'If-Match on publish must name the current bundle\'s ETag: "<etag>"'
    if not ok:
        raise ApiError(412, "precondition_failed", current_version=current_version, message=message)
