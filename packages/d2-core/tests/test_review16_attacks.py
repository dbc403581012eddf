"""An attack from the sixteenth hostile review: Python's ``$`` also matches before
a final newline, so an allow-list anchored ``^...$`` let ``"c_1\\n"`` through, and
an ``approval.when`` of ``not_matches: ^...$`` skipped the approver for
``"bob@corp.com\\n"``. In a policy, ``$`` means the end of the value."""

from __future__ import annotations

import re
from typing import Any

import pytest
from d2.core import (
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    configure_rbac_sync,
    d2_guard,
    set_user,
)
from d2.core.policy.constraints import value_regex
from d2.core.testing import policy_document
from hypothesis import given
from hypothesis import strategies as st

RAN: list[Any] = []


def _configure(grant: dict[str, Any]) -> None:
    doc = policy_document(
        {"role": "agent", "permissions": [grant]}, {"role": "lead", "permissions": []}
    )
    configure_rbac_sync(source=InMemorySource(doc))
    set_user("agent-7", roles=["agent"])


@pytest.mark.parametrize("value", ["c_1\n", "c_1\r\n"])
def test_an_anchored_allow_list_refuses_a_trailing_newline(value: str) -> None:
    _configure(
        {
            "tool": "crm.lookup",
            "conditions": {"input": {"customer_id": {"matches": "^c_[0-9]+$"}}},
        }
    )
    lookup = d2_guard("crm.lookup")(lambda customer_id: RAN.append(customer_id))
    lookup(customer_id="c_1")
    with pytest.raises(PermissionDeniedError) as info:
        lookup(customer_id=value)
    assert info.value.reason == "input_validation"
    assert RAN[-1] == "c_1"


def test_an_approval_when_anchored_is_asked_for_a_trailing_newline() -> None:
    _configure(
        {
            "tool": "mail.send",
            "approval": {
                "when": {"to": {"not_matches": "^[a-z]+@corp\\.com$"}},
                "approvers": ["lead"],
            },
        }
    )
    send = d2_guard("mail.send")(lambda to: RAN.append(to))
    send(to="bob@corp.com")  # internal: no approval needed
    with pytest.raises(ApprovalRequiredError):
        send(to="bob@corp.com\n")


@given(
    body=st.from_regex(r"[a-z0-9_@.\-]{1,12}", fullmatch=True),
    tail=st.sampled_from(["\n", "\r\n", "\n\n", " "]),
)
def test_a_dollar_is_the_end_of_the_value(body: str, tail: str) -> None:
    rx = value_regex("^" + re.escape(body) + "$")
    assert rx.search(body)
    assert not rx.search(body + tail)


@pytest.mark.parametrize(
    ("pattern", "value", "found"),
    [
        (r"^a\$$", "a$", True),  # an escaped dollar stays a dollar
        (r"^[$]+$", "$$", True),  # a dollar in a class stays a member
        (r"^[]$]$", "$", True),
        (r"(?m)^a$", "a\nb", True),  # multiline: a line's end, as written
    ],
)
def test_a_dollar_keeps_its_other_meanings(pattern: str, value: str, found: bool) -> None:
    assert bool(value_regex(pattern).search(value)) is found


def test_an_output_action_still_picks_a_value_with_a_trailing_newline() -> None:
    # the other direction: a pattern that picks values to redact keeps Python's "$",
    # which only makes it pick more ("SECRET\n" is redacted like "SECRET")
    _configure(
        {
            "tool": "notes.read",
            "conditions": {"output": {"note": {"matches": "^SECRET$", "action": "redact"}}},
        }
    )
    read = d2_guard("notes.read")(lambda text: {"note": text})
    assert read("SECRET\n") == {"note": "[REDACTED]\n"}  # the match is replaced
    assert read("public") == {"note": "public"}
