"""``d2 approvals list|show|approve|reject`` on a real redis-server: the app holds a
refund through its own RedisStore, the command reads and decides through another,
with the rules of ``d2.approve`` (approver role, never the requester, one use)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_testkit import Invoke
from d2.core import ApprovalRequiredError, PermissionDeniedError, configure_rbac_sync, d2_guard
from d2.core import set_user as as_user
from d2.core.testing import expires_in, redis_server

REQUIRE_REDIS = os.environ.get("D2_REQUIRE_REDIS") == "1"  # read before the fixtures clear it
REFUND = {
    "role": "agent",
    "permissions": [{"tool": "payments.refund", "approval": {"approvers": ["finance_lead"]}}],
}
LEAD = {"role": "finance_lead", "permissions": []}


@d2_guard("payments.refund")
def refund(order_id: str, amount: int) -> str:
    return f"refunded {amount} on {order_id}"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (Debian package redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append('the redis package (pip install "d2-core[redis]")')
    if missing:
        message = "these tests need " + " and ".join(missing)
        if REQUIRE_REDIS:
            pytest.fail(message)
        pytest.skip(message)
    with redis_server() as server:
        yield server.url


def named_policy(directory: Path, name: str | None) -> Path:
    meta: dict[str, Any] = {"expires": expires_in()}
    if name is not None:
        meta["name"] = name
    path = directory / f"{name or 'unnamed'}.json"
    path.write_text(json.dumps({"metadata": meta, "policies": [REFUND, LEAD]}))
    return path


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> tuple[Path, str]:
    """The app: a named policy (unique per test) on the shared Redis; returns the
    policy file and the app's name."""
    name = f"refund-desk-{tmp_path.name}"
    path = named_policy(tmp_path, name)
    configure_rbac_sync(source=str(path), store=redis_url)
    return path, name


def hold(order: str = "o_1", amount: int = 250) -> Any:
    as_user("agent-7", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as info:
        refund(order, amount)
    return info.value.request


def run_json(d2: Invoke, *args: str) -> tuple[int, Any]:
    result = d2(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_an_approver_lists_shows_and_approves_and_the_call_runs_once(
    d2: Invoke, app: tuple[Path, str], redis_url: str
) -> None:
    policy, _ = app
    request = hold()
    where = ("--store", redis_url, "--policy", str(policy))
    code, listed = run_json(
        d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead", *where
    )
    assert code == 0 and [r["id"] for r in listed["requests"]] == [request.id]
    shown = listed["requests"][0]
    assert shown["tool_id"] == "payments.refund" and shown["requester"] == "agent-7"
    assert shown["arguments"] == {"order_id": "o_1", "amount": 250}
    assert shown["approver_roles"] == ["finance_lead"]
    assert shown["asked_at"].endswith("Z") and shown["expires_at"] > shown["asked_at"]
    assert shown["policy_version"] == request.policy_version

    human = d2("approvals", "show", request.id, "--as", "dana", "--roles", "finance_lead", *where)
    assert human.exit_code == 0
    assert '"amount": 250' in human.stdout and "state       pending" in human.stdout

    code, decided = run_json(
        d2, "approvals", "approve", request.id, "--as", "dana", "--roles", "finance_lead", *where
    )
    assert code == 0 and decided["decision"] == "approved" and decided["by"] == "dana"
    code, state = run_json(
        d2, "approvals", "show", request.id, "--as", "erin", "--roles", "finance_lead", *where
    )
    assert code == 0 and (state["state"], state["decided_by"]) == ("approved", "dana")

    as_user("agent-7", roles=["agent"])
    assert refund("o_1", 250) == "refunded 250 on o_1"  # runs once
    with pytest.raises(ApprovalRequiredError):
        refund("o_1", 250)
    code, again = run_json(
        d2, "approvals", "approve", request.id, "--as", "dana", "--roles", "finance_lead", *where
    )
    assert code == 1 and "not pending" in again["error"]["message"]


def test_the_requester_and_other_roles_neither_see_nor_decide(
    d2: Invoke, app: tuple[Path, str], redis_url: str
) -> None:
    policy, _ = app
    request = hold()
    where = ("--store", redis_url, "--policy", str(policy))
    # the requester under another spelling of their id too (the ninth review)
    for user, roles in (
        ("agent-7", "finance_lead,agent"),
        ("AGENT-7", "finance_lead"),
        ("eve", "agent"),
    ):
        code, listed = run_json(d2, "approvals", "list", "--as", user, "--roles", roles, *where)
        assert code == 0 and listed["requests"] == []
        code, shown = run_json(
            d2, "approvals", "show", request.id, "--as", user, "--roles", roles, *where
        )
        assert code == 1 and "not one you may decide" in shown["error"]["message"]
        for verb in ("approve", "reject"):
            code, out = run_json(
                d2, "approvals", verb, request.id, "--as", user, "--roles", roles, *where
            )
            message = out["error"]["message"]
            assert code == 1, out
            assert ("may not decide" in message) or ("asked for approval request" in message)
    code, listed = run_json(
        d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead", *where
    )
    assert [r["id"] for r in listed["requests"]] == [request.id]  # still pending


def test_an_id_that_cannot_be_a_request_is_refused_before_the_store(
    d2: Invoke, tmp_path: Path
) -> None:
    where = ("--store", "redis://127.0.0.1:1/0", "--app", "refund-desk")  # nothing answers
    for bad in ("x" * 64, "AB" * 32, "ab" * 31, "ab" * 33, "*", "0" * 64 + "\n"):
        for verb in ("show", "approve", "reject"):
            code, out = run_json(
                d2, "approvals", verb, bad, "--as", "dana", "--roles", "finance_lead", *where
            )
            assert code == 1 and "not one you may decide" in out["error"]["message"], (bad, out)


def test_a_rejection_refuses_the_call(d2: Invoke, app: tuple[Path, str], redis_url: str) -> None:
    _, name = app
    request = hold(order="o_9")
    result = d2(
        "approvals", "reject", request.id, "--as", "dana", "--roles", "finance_lead",
        "--store", redis_url, "--app", name,
    )  # fmt: skip
    assert result.exit_code == 0 and "rejected request" in result.stdout
    as_user("agent-7", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        refund("o_9", 250)
    assert info.value.reason == "approval_rejected"


def test_the_app_is_found_as_the_sdk_finds_it_or_named(
    d2: Invoke, app: tuple[Path, str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, name = app
    request = hold()
    monkeypatch.setenv("D2_STORE_URL", redis_url)
    monkeypatch.setenv("D2_POLICY_FILE", str(policy))
    code, listed = run_json(d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead")
    assert [r["id"] for r in listed["requests"]] == [request.id]
    monkeypatch.delenv("D2_POLICY_FILE")
    code, listed = run_json(
        d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead", "--app", name
    )
    assert [r["id"] for r in listed["requests"]] == [request.id]
    code, other = run_json(
        d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead", "--app", "other"
    )
    assert code == 0 and other["requests"] == []  # another app's requests are not read
    code, out = run_json(
        d2, "approvals", "approve", request.id, "--as", "dana", "--roles", "finance_lead",
        "--app", "other",
    )  # fmt: skip
    assert code == 1 and "not pending" in out["error"]["message"]


def test_clear_errors(d2: Invoke, redis_url: str, tmp_path: Path) -> None:
    args = ("approvals", "list", "--as", "dana", "--roles", "finance_lead")
    code, out = run_json(d2, *args, "--app", "a")
    assert code == 2 and "no shared store" in out["error"]["message"]
    assert "D2_STORE_URL" in out["error"]["hint"]
    code, out = run_json(d2, *args, "--app", "a", "--store", "memory://")
    assert code == 2 and "no shared store" in out["error"]["message"]
    unnamed = named_policy(tmp_path, None)
    code, out = run_json(d2, *args, "--store", redis_url, "--policy", str(unnamed))
    assert code == 2 and "metadata.name" in out["error"]["message"]
    code, out = run_json(d2, *args, "--store", redis_url)  # no policy anywhere, no --app
    assert code == 2 and "policy" in out["error"]["message"], out
    assert "d2 init" in out["error"]["hint"]
    code, out = run_json(d2, "approvals", "list", "--as", "dana", "--roles", " , ", "--app", "a",
                         "--store", redis_url)  # fmt: skip
    assert code == 2 and "--roles" in out["error"]["message"]
    code, out = run_json(d2, *args, "--app", "a", "--store", "ftp://somewhere")
    assert code == 2 and "not a store URL" in out["error"]["message"]
    missing = d2("approvals", "list", "--roles", "finance_lead", "--json")
    assert missing.exit_code == 2 and "--as" in json.loads(missing.stdout)["error"]["message"]


def test_a_store_that_does_not_answer_is_a_clear_error(d2: Invoke, tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    with redis_server() as server:
        url = server.url
        server.stop()
        code, out = run_json(
            d2, "approvals", "list", "--as", "dana", "--roles", "finance_lead", "--app", "a",
            "--store", url,
        )  # fmt: skip
    assert code == 2 and "store" in out["error"]["message"].lower()


def test_show_never_lets_right_to_left_or_look_alike_characters_mislead(
    d2: Invoke, app: tuple[Path, str], redis_url: str
) -> None:
    # The eleventh review (F2, F5): a terminal that applies the bidirectional
    # algorithm drew "DE44 \u05f3 2222 1111" as "DE44 1111 2222 \u05f3"; a Cyrillic
    # "\u0430" drew like the Latin one. Both are shown as escapes.
    import unicodedata

    policy, _ = app
    request = hold("DE44 \u05f3 2222 1111 p\u0430ypal")
    where = ("--store", redis_url, "--policy", str(policy))
    human = d2("approvals", "show", request.id, "--as", "dana", "--roles", "finance_lead", *where)
    assert human.exit_code == 0
    assert '"order_id": "DE44 \\u05f3 2222 1111 p\\u0430ypal"' in human.stdout
    assert not any(unicodedata.bidirectional(c) in {"R", "AL", "AN"} for c in human.stdout)
