"""ETag parsing and the publish precondition."""

from __future__ import annotations

import pytest
from d2.server.errors import ApiError
from d2.server.preconditions import ANY, check_publish_precondition, matches, parse_etags


def test_etag_headers_parse_lists_weak_tags_and_star() -> None:
    assert parse_etags(None) is None
    assert parse_etags(" * ") == ANY
    assert parse_etags('"a", W/"b",c') == frozenset({'"a"', 'W/"b"', '"c"'})
    assert parse_etags("") == frozenset()
    assert parse_etags('"a" junk') == frozenset()


def test_weak_comparison_ignores_w_but_strong_comparison_never_matches_a_weak_tag() -> None:
    current = frozenset({'"a"'})
    assert matches(frozenset({'W/"a"'}), current)
    assert not matches(frozenset({'W/"a"'}), current, strong=True)
    assert matches(frozenset({'W/"a"', '"a"'}), current, strong=True)
    assert matches(ANY, current, strong=True)


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
        (LIVE, {"im": '"old", "cur"'}, 0),  # a list: one current tag is enough
        (LIVE, {"im": 'W/"cur"'}, 412),  # strong comparison: a weak tag never matches
        (LIVE, {"im": "cur"}, 0),  # an unquoted tag is read as quoted
        (LIVE, {"im": "*"}, 412),  # a blind overwrite is not a precondition
        (LIVE, {"im": ""}, 412),
        (LIVE, {"im": '"cur" junk'}, 412),  # unparsable
        (LIVE, {"inm": "*"}, 412),
        (LIVE, {"inm": '"x"'}, 412),  # If-None-Match is only ever *
        (LIVE, {"inm": '"cur"'}, 412),
        (LIVE, {"inm": ""}, 412),
        (LIVE, {"im": '"cur"', "inm": '"x"'}, 412),  # both headers: refused
        (LIVE, {"im": '"cur"', "inm": "*"}, 412),
        (LIVE, {}, 428),
        (NOTHING, {"inm": '"x"'}, 412),
        (NOTHING, {"inm": ""}, 412),
        (NOTHING, {"inm": 'W/"x"'}, 412),
        (NOTHING, {"inm": "*", "im": "*"}, 412),
        (REVOKED, {"inm": "*"}, 0),
        (REVOKED, {"im": '"cur"'}, 0),
        (REVOKED, {"im": '"old"'}, 412),
        (REVOKED, {"im": "*"}, 412),
        (REVOKED, {"inm": '"x"'}, 412),
        (REVOKED, {"im": '"cur"', "inm": "*"}, 412),
    ],
)
def test_publish_precondition_table(
    state: tuple[int, bool], headers: dict[str, str], status: int
) -> None:
    assert _check(state, **headers) == status
