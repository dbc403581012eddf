"""Entity tags and the conditional-request headers of publish and bundle fetches."""

from __future__ import annotations

import re
from typing import Literal

from .errors import ApiError

__all__ = ["ANY", "ETagSet", "check_publish_precondition", "matches", "parse_etags"]

ANY: Literal["*"] = "*"
ETagSet = Literal["*"] | frozenset[str]
"""``"*"`` or a set of quoted entity tags (weak tags reduced to their strong form)."""

_ITEM = re.compile(r'\s*(?:W/)?("[^"]*"|[^,\s]+)\s*(?:,|$)')
_MAX_HEADER = 8192


def parse_etags(header: str | None) -> ETagSet | None:
    """``If-Match`` / ``If-None-Match`` -> ``"*"``, a set of quoted tags, or ``None``
    when absent. An unquoted tag is read as if quoted (lenient)."""
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
        tag = m.group(1)
        tags.add(tag if tag.startswith('"') else f'"{tag}"')
        pos = m.end()
    return frozenset(tags)


def matches(tags: ETagSet, current: frozenset[str]) -> bool:
    """Whether a parsed header matches any of the ``current`` tags (``*`` matches
    when there is a current one)."""
    if tags == ANY:
        return bool(current)
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

    - nothing published, or the current version revoked: ``If-None-Match: *``
      holds (no policy is in force); after a revocation ``If-Match`` with the
      revoked version's ETag holds too;
    - a policy in force: ``If-Match`` with an ETag served for it (any signing of
      the current version), or ``If-Match: *``.

    Neither header: 428 ``precondition_required``; otherwise 412
    ``precondition_failed``.
    """
    if if_match is None and if_none_match is None:
        raise ApiError(
            428,
            "precondition_required",
            message='send If-None-Match: * for the first publish, else If-Match: "<etag>"',
        )
    in_force = current_version > 0 and not revoked
    ok = True
    if if_match is not None:
        ok = current_version > 0 and matches(if_match, etags)
    if ok and if_none_match is not None:
        ok = not (in_force and matches(if_none_match, etags))
    if not ok:
        raise ApiError(
            412,
            "precondition_failed",
            current_version=current_version,
            message="someone published since your ETag; fetch the current bundle and retry",
        )
