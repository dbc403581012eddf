"""Shared fixtures: every test starts with no D2 instance configured, no user set, no
D2_* variables and nothing that could reach a network (no model provider keys,
Agents SDK tracing off); ``configure`` loads the agents policy below.

The policy: an ``analyst`` may search the web, read users (``limit`` at most 50,
e-mail addresses redacted from the result) and send HTTP requests, but never send
one after reading users in the same request (scope); a ``viewer`` may only search.
Framework tools are named ``web_search``, ``read_users`` and ``http_request``;
``TOOL_IDS`` (the ``tool_ids`` fixture) maps them to the policy's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from d2.core import InMemorySource, clear_user_context, configure_rbac_sync, shutdown_all_rbac
from d2.core.manager import PolicyManager
from d2.core.testing import expires_in, isolate, reset

TOOL_IDS = {
    "web_search": "web.search",
    "read_users": "db.read_users",
    "http_request": "http.request",
}

USERS = [
    {"name": "Ada", "email": "ada@example.com"},
    {"name": "Grace", "email": "grace@example.com"},
]


def agents_policy() -> dict[str, Any]:
    """The policy every adapter test runs under (see the module docstring)."""
    return {
        "metadata": {"name": "agents-test", "expires": expires_in()},
        "policies": [
            {
                "role": "analyst",
                "permissions": [
                    "web.search",
                    {
                        "tool": "db.read_users",
                        "conditions": {
                            "input": {"limit": {"type": "int", "min": 1, "max": 50}},
                            "output": {"email": {"action": "redact"}},
                        },
                    },
                    "http.request",
                ],
                "sequence": [{"deny": ["db.read_users", "http.request"], "reason": "exfiltration"}],
            },
            {"role": "viewer", "permissions": ["web.search"]},
        ],
    }


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    isolate(monkeypatch, tmp_path)
    # nothing may phone home: no real provider key, no Agents SDK tracing export
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    clear_user_context()
    yield
    shutdown_all_rbac()
    reset()  # approvals and budget counters start empty in every test
    clear_user_context()


@pytest.fixture
def configure() -> Callable[..., PolicyManager]:
    """``configure(doc=None, instance_name="default")``: load ``doc`` (default: the
    agents policy) from memory."""

    def _configure(
        doc: dict[str, Any] | None = None, instance_name: str = "default"
    ) -> PolicyManager:
        return configure_rbac_sync(
            source=InMemorySource(doc if doc is not None else agents_policy()),
            instance_name=instance_name,
        )

    return _configure


@pytest.fixture
def policy_doc() -> dict[str, Any]:
    """A fresh copy of the agents policy, for a test to adjust before ``configure``."""
    return agents_policy()


@pytest.fixture
def tool_ids() -> dict[str, str]:
    """Framework tool name -> the policy's tool id."""
    return dict(TOOL_IDS)


@pytest.fixture
def users() -> list[dict[str, str]]:
    """What ``read_users`` returns (a fresh copy)."""
    return [dict(u) for u in USERS]


HITL_IDS = {"refund": "payments.refund", "web_search": "web.search", "web_fetch": "web.fetch"}


def hitl_policy() -> dict[str, Any]:
    """Approvals and budgets: an ``agent`` refunds over 100 only with a
    ``finance_lead``'s approval, searches twice per request and fetches once an hour."""
    return {
        "metadata": {"name": "agents-hitl", "expires": expires_in()},
        "policies": [
            {
                "role": "agent",
                "permissions": [
                    {
                        "tool": "payments.refund",
                        "approval": {
                            "when": {"amount": {"gt": 100}},
                            "approvers": ["finance_lead"],
                            "ttl": "15m",
                        },
                    },
                    {"tool": "web.search", "limits": [{"max": 2, "per": "request"}]},
                    {"tool": "web.fetch", "limits": [{"max": 1, "per": "user", "window": "1h"}]},
                ],
            },
            {"role": "finance_lead", "permissions": ["payments.refund"]},
        ],
    }


@pytest.fixture
def hitl(configure: Callable[..., PolicyManager]) -> dict[str, str]:
    """Load :func:`hitl_policy`; returns framework tool name -> tool id."""
    configure(hitl_policy())
    return dict(HITL_IDS)


@pytest.fixture
def hitl_doc() -> dict[str, Any]:
    """A fresh copy of :func:`hitl_policy`, for a test to adjust before ``configure``."""
    return hitl_policy()
