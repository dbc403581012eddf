"""The links a held call leaves in the framework's own state (an Agents SDK
``RunState``, a pydantic-ai message history) are app storage: read back from a
database, edited, truncated. Whatever they hold, a resumed run either continues
the request a well-formed link names or refuses its guarded calls; it never goes on
as if nothing had paused."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from agents.run_context import _ApprovalRecord
from d2.agents import openai_agents, pydantic_ai
from d2.core import PermissionDeniedError, set_user
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_ai.messages import ModelResponse, TextPart

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
LINK_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "r": st.none() | st.text(max_size=70) | st.integers(),
        "t": st.text(max_size=10) | st.none(),
        "d": st.text(max_size=10) | st.none(),
        "i": st.text(max_size=10) | st.none(),
        "s": st.sampled_from(["done", "other"]) | st.none(),
    },
)
TEXTS = st.text(max_size=60) | JSON.map(json.dumps) | LINK_FIELDS.map(json.dumps)
# the policy loaded by the fixture is only read: sharing it between examples is sound
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def outcome(run: Any) -> str:
    try:
        asyncio.run(run)
    except PermissionDeniedError as err:
        return str(err.reason)
    return "continued"


@SETTINGS
@given(text=TEXTS)
def test_an_agents_sdk_link_either_names_a_request_or_refuses_the_run(
    hitl: dict[str, str], text: str
) -> None:
    wrapper = SimpleNamespace(
        _approvals={"d2:approval-requests": _ApprovalRecord(rejection_messages={"c1": text})}
    )
    set_user("alice", roles=["agent"])
    bound = openai_agents._Bound.read(text)
    got = outcome(openai_agents._continue(wrapper))
    if bound is None:
        assert got == "budget_unavailable"  # unreadable: the run cannot continue
    elif bound.request_id is None or bound.done:
        assert got == "continued"  # nothing left to restore
        assert openai_agents._Bound.read(bound.text()) == bound
    else:  # a well-formed link to no live request (or to an instance with no policy)
        assert got in ("approval_not_found", "missing_policy")
        assert all(isinstance(v, str) and v for v in bound[:4])


@SETTINGS
@given(value=JSON | st.dictionaries(st.text(max_size=5), JSON | LINK_FIELDS))
def test_a_pydantic_ai_link_either_names_a_request_or_refuses_the_run(
    hitl: dict[str, str], value: Any
) -> None:
    response = ModelResponse(parts=[TextPart("x")], metadata={pydantic_ai.LINKS_KEY: value})
    ctx = SimpleNamespace(messages=[response])
    set_user("alice", roles=["agent"])
    got = outcome(pydantic_ai._continue(ctx))  # type: ignore[arg-type]
    readable = isinstance(value, dict) and all(
        isinstance(link, dict) and pydantic_ai._readable(link) for link in value.values()
    )
    if value is None:
        assert got == "continued"  # no link at all
    elif not readable:
        assert got == "budget_unavailable"
    elif all(link.get("done") for link in value.values()):
        assert got == "continued"
    else:  # a well-formed link to no live request (or to an instance with no policy)
        assert got in ("approval_not_found", "missing_policy")


def test_a_link_with_an_unknown_instance_refuses_the_run(hitl: dict[str, str]) -> None:
    text = openai_agents._Bound("f" * 64, "refund", "payments.refund", "nowhere").text()
    wrapper = SimpleNamespace(
        _approvals={"d2:approval-requests": _ApprovalRecord(rejection_messages={"c1": text})}
    )
    set_user("alice", roles=["agent"])
    with pytest.raises(PermissionDeniedError):
        asyncio.run(openai_agents._continue(wrapper))
