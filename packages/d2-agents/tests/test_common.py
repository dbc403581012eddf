"""What the adapters share: the public names, the denial text, tool id mapping, the
session scope helper, and the promise that ``import d2.agents`` imports no
framework while a missing extra names the command that installs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import d2.agents
import pytest
from d2.agents import denial_message
from d2.agents._common import tool_id_resolver
from d2.agents._scope import enter, leave
from d2.core import (
    ConfigurationError,
    PermissionDeniedError,
    d2_guard,
    get_facts,
    get_user_context,
    record_fact,
    set_user,
)

FRAMEWORKS = {
    "mcp": ("mcp", "mcp"),
    "langchain": ("langchain_core", "langchain"),
    "openai_agents": ("agents", "openai-agents"),
    "pydantic_ai": ("pydantic_ai", "pydantic-ai"),
}


def test_exported_names_are_the_public_api() -> None:
    assert d2.agents.__all__ == ["DenyMessage", "ToolIds", "denial_message"]
    import d2.agents.langchain as lc
    import d2.agents.openai_agents as oa
    import d2.agents.pydantic_ai as pa
    from d2.agents import mcp

    assert mcp.__all__ == ["Identify", "Identity", "MCPGuard", "SessionKey", "guard_server"]
    assert lc.__all__ == [
        "TOOL_ID_KEY",
        "ApprovalPending",
        "ToolDenied",
        "guard_tool",
        "guard_tools",
        "permitted_tools",
    ]
    assert oa.__all__ == [
        "approval_request",
        "approve_item",
        "guard_tool",
        "guard_tools",
        "reject_item",
    ]
    assert pa.__all__ == [
        "APPROVAL_KEY",
        "LINKS_KEY",
        "TOOL_ID_KEY",
        "approval_requests",
        "guard_tool",
        "guard_tools",
    ]
    for module in (d2.agents, mcp, lc, oa, pa):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_importing_d2_agents_imports_no_framework() -> None:
    frameworks = sorted(module for module, _ in FRAMEWORKS.values())
    done = run_python(
        f"""
        import sys
        import d2.agents
        print(sorted(m for m in {frameworks!r} if m in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("adapter", sorted(FRAMEWORKS))
def test_a_missing_framework_names_the_extra_to_install(adapter: str) -> None:
    module, extra = FRAMEWORKS[adapter]
    done = run_python(
        f"""
        import sys
        sys.modules[{module!r}] = None  # as if the extra were not installed
        try:
            import d2.agents.{adapter}
        except ImportError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert f'pip install "d2-sdk[{extra}]"' in done.stdout


def test_denial_message_names_tool_and_reason_but_no_grant_details(configure: Any) -> None:
    configure()

    @d2_guard("db.read_users")
    def read_users(limit: int = 10) -> list[str]:
        return []

    set_user("victor", roles=["viewer"])
    with pytest.raises(PermissionDeniedError) as rbac:
        read_users()
    assert denial_message(rbac.value) == (
        "Permission denied: the current user may not call 'db.read_users' (not_granted)."
    )
    assert "analyst" in rbac.value.message  # d2-core's message names the roles that may...
    assert "analyst" not in denial_message(rbac.value)  # ...the model's text does not
    set_user("alice", roles=["analyst"])
    with pytest.raises(PermissionDeniedError) as rule:
        read_users(500)
    text = denial_message(rule.value)
    assert text.startswith("Permission denied: 'db.read_users' was refused (input_validation): ")
    assert "'limit'" in text and "500" not in text and "policies[" not in text


def test_tool_ids_map_names_and_fall_back_to_the_name() -> None:
    assert tool_id_resolver(None)("read_users") == "read_users"
    mapped = tool_id_resolver({"read_users": "db.read_users"})
    assert mapped("read_users") == "db.read_users"
    assert mapped("web_search") == "web_search"
    assert tool_id_resolver(lambda name: f"crm.{name}")("lookup") == "crm.lookup"
    with pytest.raises(ConfigurationError, match="non-empty tool id"):
        tool_id_resolver({"read_users": ""})
    with pytest.raises(ConfigurationError, match="mapping"):
        tool_id_resolver(42)  # type: ignore[arg-type]


def test_a_session_scope_is_reentered_while_the_user_stays_the_same() -> None:
    outer = set_user("caller", roles=["x"])
    first, token = enter("alice", ["analyst"], None)
    record_fact("SEEN")
    leave(token)
    assert get_user_context() is outer  # left: the caller's context is back

    again, token = enter("alice", [" analyst "], first)  # same user, same roles
    assert again is first and get_facts() == {"SEEN"}
    leave(token)

    other, token = enter("alice", ["admin"], first)  # new roles: a new scope
    assert other is not first and get_facts() == frozenset()
    leave(token)
    anonymous, token = enter(None, (), first)
    assert anonymous.user_id is None
    leave(token)
    assert get_user_context() is outer
