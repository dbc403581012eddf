"""What an approval webhook sends and shows, judged on any input: the event's
``text`` is one safe line whatever the requester's id, the structured fields are
exact, the body is strict bounded JSON, a URL's secret never shows, and a
receiver's ``Retry-After`` never breaks the sender."""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from typing import Any

import pytest
from d2.core._invisible import invisible
from d2.core._webhook_event import (
    MAX_BODY,
    approval_event,
    encode_event,
    masked_url,
    retry_after_seconds,
)
from d2.core.approval_data import ApprovalRequest
from d2.core.errors import ConfigurationError
from d2.core.webhook import validate_url
from hypothesis import given, settings
from hypothesis import strategies as st

_json: Any = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_ids = st.text(max_size=200)  # any code point, lone surrogates included


def _request(user: str, tool: str, roles: tuple[str, ...], arguments: Any) -> ApprovalRequest:
    return ApprovalRequest(
        id="0123456789abcdef" * 4,
        tool_id=tool,
        user_id=user,
        arguments={"value": arguments},
        policy_version="v1",
        expires_at=1_900_000_000.0,
        approver_roles=roles,
    )


def _one_safe_line(text: str) -> None:
    assert "<" not in text and ">" not in text  # no Slack mention, link or markup
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in text)
    assert not any(ch != " " and invisible(ch) for ch in text)
    # the line is left to right: nothing in it is reordered by a chat client
    assert not any(unicodedata.bidirectional(ch) in {"R", "AL", "AN"} for ch in text)
    assert (
        "@" not in text
        and "://" not in text
        and "[" not in text.replace("[.]", "").replace("[:]", "")
    )  # no mention, no link (Markdown or scheme)
    assert "&" not in text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")


@settings(max_examples=300, deadline=None)
@given(
    _ids,
    _ids,
    st.lists(st.text(max_size=30), min_size=1, max_size=12).map(tuple),
    _ids,
    st.sampled_from(["requested", "approved", "rejected"]),
    _json,
)
def test_text_is_one_safe_bounded_line_and_fields_are_exact(
    user: str, tool: str, roles: tuple[str, ...], by: str, kind: str, arguments: Any
) -> None:
    request = _request(user, tool, roles, arguments)
    event = approval_event(
        kind,
        request,
        app="local:x",
        event_id="e" * 32,
        occurred_at=1_900_000_000.5,
        decided_by=None if kind == "requested" else by,
        inbox_url="http://127.0.0.1:8000/inbox",
        arguments=True,
    )
    _one_safe_line(event["text"].replace(event["inbox_url"], ""))
    assert len(event["text"]) < 1200
    body = encode_event(event)
    assert body.isascii() and len(body) <= MAX_BODY
    parsed = json.loads(body, parse_constant=lambda name: pytest.fail(f"not strict: {name}"))
    assert parsed["requester"] == user and parsed["tool_id"] == tool  # exact, even surrogates
    assert parsed["approver_roles"] == list(roles)
    assert parsed["decided_by"] == (None if kind == "requested" else by)
    assert parsed["text"] == event["text"]
    if not _has_non_finite(arguments):
        assert parsed["arguments"] == {"value": arguments}


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def test_hostile_ids_cannot_ping_forge_lines_or_reorder_text() -> None:
    request = _request("<!channel> \u202eevil\nSecond line", "pay<@U1>&", ("boss",), 1)
    text = approval_event("requested", request, app=None, event_id="e", occurred_at=0.0)["text"]
    assert "&lt;!channel&gt; ?evil?Second line" in text and "pay&lt;\uff20U1&gt;&amp;" in text
    assert "\n" not in text and "\u202e" not in text


def test_right_to_left_and_look_alike_ids_cannot_reorder_or_pass_for_others() -> None:
    # The eleventh review (F2, F5): in "approved by <approver>: <requester> may call",
    # two right-to-left ids drew swapped (the colon between them took their
    # direction); "agent\u05be12" drew its digits before the maqaf; a Cyrillic
    # "\u0430" drew like the Latin one.
    request = _request("\u05d0\u05d1\u05d9", "pay\u05be12", ("\u0430dmin", "\u0434"), 1)
    requested = approval_event("requested", request, app=None, event_id="e", occurred_at=0.0)
    assert (
        "D2: approval requested: ??? wants to call pay?12; approvers: ?dmin, \u0434;"
        in (requested["text"])
    )
    approved = approval_event(
        "approved",
        request,
        app=None,
        event_id="e",
        occurred_at=0.0,
        decided_by="\u05d3\u05e0\u05d4",
    )
    assert "approved by ???: ??? may call pay?12 once" in approved["text"]
    assert approved["requester"] == "\u05d0\u05d1\u05d9"  # the fields are exact
    assert approved["decided_by"] == "\u05d3\u05e0\u05d4"


def test_non_finite_and_huge_arguments_keep_the_body_strict_and_bounded() -> None:
    nan = _request("u", "t", ("r",), [math.nan, math.inf, -math.inf])
    event = approval_event("requested", nan, app=None, event_id="e", occurred_at=0, arguments=True)
    assert json.loads(encode_event(event))["arguments"] == {
        "value": ["NaN", "Infinity", "-Infinity"]
    }
    huge = _request("u", "t", ("r",), "x" * (MAX_BODY + 1))
    event = approval_event("requested", huge, app=None, event_id="e", occurred_at=0, arguments=True)
    body = encode_event(event)
    assert len(body) <= MAX_BODY and json.loads(body)["arguments"] is None


def test_without_the_opt_in_no_argument_is_in_the_event() -> None:
    request = _request("u", "t", ("r",), "card 4111 1111 1111 1111")
    body = encode_event(approval_event("requested", request, app=None, event_id="e", occurred_at=0))
    assert b"4111" not in body and "arguments" not in json.loads(body)


# upper case: never part of a host as shown (lower case) nor of a port
_secret = st.text(st.characters(min_codepoint=0x30, max_codepoint=0x7A), max_size=20).map(
    lambda s: "SEC" + s
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["http", "https"]),
    st.sampled_from(["127.0.0.1", "hooks.internal", "[::1]", "localhost:8443"]),
    _secret,
    _secret,
    _secret,
)
def test_masked_url_never_shows_the_path_query_or_credentials(
    scheme: str, host: str, path: str, query: str, password: str
) -> None:
    url = f"{scheme}://bot:{password}@{host}/services/{path}?token={query}#{path}"
    shown = masked_url(url)
    for secret in (path, query, password):
        assert secret not in shown.removeprefix(f"{scheme}://"), (url, shown)
    assert shown.endswith("/***") or shown == "<invalid URL>"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_masked_url_and_validate_url_never_raise_anything_else(text: str) -> None:
    shown = masked_url(text)
    assert isinstance(shown, str) and "\n" not in shown
    try:
        validate_url(text, "approval_webhook")
    except ConfigurationError as err:
        path = text.partition("://")[2].partition("/")[2]
        if len(path) > 3:
            assert path not in str(err)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=80), st.integers(-(10**30), 10**30).map(str)))
def test_retry_after_is_a_bounded_number_or_none(value: str | None) -> None:
    seconds = retry_after_seconds(value, time.time())
    assert seconds is None or (math.isfinite(seconds) and 0 <= seconds <= 86400)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_900_000_000.0
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("9" * 40, now) == 86400.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert retry_after_seconds(date, now) == pytest.approx(30.0)
    assert retry_after_seconds(date.replace("GMT", "-0000"), now) == pytest.approx(30.0)
    assert retry_after_seconds("yesterday", now) is None
    assert retry_after_seconds("-5", now) is None


# -- the ninth review: mass mentions and links in ``text`` ---------------------------

MENTIONS = re.compile(r"@(channel|here|all|everyone)\b", re.IGNORECASE)
# a scheme, a Markdown link, a dot before a letter or digit (www.x, evil.example)
LINKS = re.compile(r"(https?|ftp)://|\]\(|\.[^\W_]", re.IGNORECASE)


def test_mass_mentions_and_links_in_a_user_id_are_defanged_visibly() -> None:
    # The ninth review: @channel, @here, @all, @everyone, bare URLs and Markdown
    # links in a requester id reached the text of Mattermost, Rocket.Chat and
    # Discord's Slack endpoint, which ping or link them.
    cases = {
        "@channel": "\uff20channel",
        "@here @everyone @all": "\uff20here \uff20everyone \uff20all",
        "https://evil.example/login?sso=1": "https[:]//evil[.]example/login?sso=1",
        "approve now: www.evil.example": "approve now: www[.]evil[.]example",
        "[click](https://evil.example)": "\uff3bclick\uff3d(https[:]//evil[.]example)",
        "alice@example.com": "alice\uff20example[.]com",
        "`code` x": "'code' x",
        "agent_7.v2": "agent_7[.]v2",
    }
    for user, shown in cases.items():
        for kind, by in (("requested", None), ("approved", user), ("rejected", user)):
            event = approval_event(
                kind,
                _request(user, "payments.refund", ("finance",), 1),
                app=None,
                event_id="e",
                occurred_at=0.0,
                decided_by=by,
            )
            assert shown in event["text"], (user, event["text"])
            assert event["requester"] == user and event["decided_by"] == by  # exact
            assert "payments.refund" in event["text"]  # the app's own names keep their dots
            assert not MENTIONS.search(event["text"]) and not LINKS.search(
                event["text"].replace("payments.refund", "")
            )


@settings(max_examples=400, deadline=None)
@given(
    user=st.text(max_size=90) | st.from_regex(r"[@.:/\[\]()a-zA-Z ]{0,40}", fullmatch=True),
    by=st.text(max_size=90) | st.from_regex(r"[@.:/\[\]()wW ]{0,40}", fullmatch=True),
    kind=st.sampled_from(["requested", "approved", "rejected"]),
)
def test_no_user_id_mentions_anyone_or_makes_a_link(user: str, by: str, kind: str) -> None:
    request = _request(user, "refund", ("finance",), 1)
    event = approval_event(
        kind,
        request,
        app=None,
        event_id="e",
        occurred_at=0.0,
        decided_by=None if kind == "requested" else by,
    )
    text = event["text"]
    _one_safe_line(text)
    assert not MENTIONS.search(text) and not LINKS.search(text), text
    assert event["requester"] == user
