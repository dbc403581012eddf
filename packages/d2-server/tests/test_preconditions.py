"""ETag parsing and the publish precondition."""

from __future__ import annotations

import pytest
from d2.server.errors import ApiError
from d2.server.preconditions import ANY, check_publish_precondition, matches, parse_etags


def test_etag_headers_parse_lists_weak_tags_and_star() -> None:
    assert parse_etags(None) is None
    assert parse_etags(" * ") == ANY
    assert parse_etags('"a", W/"b",c') == frozenset({'"a"', '"b"', '"c"'})
    assert parse_etags("") == frozenset()


def test_star_matches_only_when_something_is_current() -> None:
    assert matches(ANY, frozenset({'"a"'}))
    assert not matches(ANY, frozenset())
    assert matches(frozenset({'"a"', '"b"'}), frozenset({'"b"'}))


def _check(state: tuple[int, bool], *, im: str | None = None, inm: str | None = None) -> int:
    try:
        check_publish_precondition(
            if_match=parse_etags(im),
            if_none_match=parse_etags(inm),
            current_version=state[0],
            revoked=state[1],
            etags=frozenset({'"cur"', '"cur-resigned"'}) if state[0] else frozenset(),
        )
    except ApiError as exc:
        return exc.status
    return 0


NOTHING, LIVE, REVOKED = (0, False), (3, False), (3, True)


@pytest.mark.parametrize(
    ("state", "headers", "status"),
    [
        (NOTHING, {"inm": "*"}, 0),
        (NOTHING, {"im": '"cur"'}, 412),
        (NOTHING, {"im": "*"}, 412),
        (NOTHING, {}, 428),
        (LIVE, {"im": '"cur"'}, 0),
        (LIVE, {"im": '"cur-resigned"'}, 0),  # any signing of the current version
        (LIVE, {"im": '"old"'}, 412),
        (LIVE, {"im": "*"}, 0),
        (LIVE, {"inm": "*"}, 412),
        (LIVE, {}, 428),
        (REVOKED, {"inm": "*"}, 0),
        (REVOKED, {"im": '"cur"'}, 0),
        (REVOKED, {"im": '"old"'}, 412),
    ],
)
def test_publish_precondition_table(
    state: tuple[int, bool], headers: dict[str, str], status: int
) -> None:
    assert _check(state, **headers) == status
