"""``d2.core.replay``: a decision log replayed against a candidate policy.

Logs are produced by really running guarded tools with a decision log on; the
property that matters most: replaying a log against the very policy that wrote it
changes nothing, whatever features the policy uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    attach,
    clear_user_context,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    reject,
    set_user,
    shutdown_rbac,
)
from d2.core.errors import ConfigurationError
from d2.core.evaluate import evaluator_for
from d2.core.policy.compile import compile_policy
from d2.core.policy.model import CompiledPolicy
from d2.core.replay import Change, ReplayReport, read_log, replay
from d2.core.stores import MemoryStore
from d2.core.testing import expires_in, policy_document
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Record = dict[str, Any]
Doc = dict[str, Any]


# -- producing real logs ------------------------------------------------------------
def run(
    doc: Doc,
    scenario: Callable[[], None],
    *,
    arguments: bool = False,
    path: Path | None = None,
) -> tuple[list[Record], CompiledPolicy]:
    """Configure ``doc`` with a decision log, run ``scenario``, and return the
    records and the compiled policy that decided them."""
    log: list[Record] = []
    configure_rbac_sync(
        source=InMemorySource(doc),
        decision_log=str(path) if path is not None else log.append,
        decision_log_arguments=arguments,
        store=MemoryStore(),  # each run its own: no request lives on into the next
    )
    evaluator = evaluator_for("default")
    policy = evaluator.policy
    assert policy is not None
    try:
        scenario()
    finally:
        assert evaluator.log is not None
        evaluator.log.flush()
        shutdown_rbac()
        clear_user_context()
    return (read_log(path) if path is not None else log), policy


def denied(call: Callable[[], Any]) -> str:
    with pytest.raises(PermissionDeniedError) as info:
        call()
    return info.value.reason


def candidate(*entries: dict[str, Any], **meta: Any) -> CompiledPolicy:
    return compile_policy(policy_document(*entries, **meta), source="candidate.yaml")


def assert_no_change(report: ReplayReport, records: list[Record]) -> None:
    assert report.changes == [], report.changes
    assert report.changed == 0 and report.records == len(records)
    assert report.unchanged + report.skipped == len(records)


def only(report: ReplayReport) -> Change:
    assert report.changed == 1, report.changes
    return report.changes[0]


# -- a policy that uses every feature, and calls of every kind ----------------------
AGENT = {
    "role": "agent",
    "permissions": [
        "read",
        "send",
        "mail",
        {
            "tool": "search",
            "limits": [{"max": 2, "per": "request"}, {"max": 5, "per": "user", "window": "1d"}],
        },
        {
            "tool": "refund",
            "approval": {"when": {"amount": {"gt": 100}}, "approvers": ["lead"]},
        },
        {"tool": "calc", "conditions": {"input": {"n": {"max": 3}}}},
        {"tool": "card", "conditions": {"output": {"pan": {"maxLength": 2}}}},
        {"tool": "drop", "allow": False},
    ],
    "sequence": [{"deny": ["read", "mail"]}, {"deny": ["calc", "send"], "audit": True}],
}
LEAD = {"role": "lead", "permissions": ["refund", "read"]}
FLOW = {"labels": {"read": ["PII"]}, "blocks": {"PII": ["send"]}}


def everything(**meta: Any) -> Doc:
    return policy_document(AGENT, LEAD, data_flow=FLOW, **meta)


@dataclass
class Tools:
    read: Any
    send: Any
    mail: Any
    search: Any
    refund: Any
    calc: Any
    card: Any
    drop: Any
    ghost: Any


def tools() -> Tools:
    def read() -> str:
        return "r"

    def send() -> str:
        return "s"

    def mail() -> str:
        return "m"

    def search(q: str) -> str:
        return q

    def refund(order: str, amount: int = 10) -> str:
        return f"{order}:{amount}"

    def calc(n: int) -> int:
        return n

    def card() -> dict[str, str]:
        return {"pan": "4111"}

    def drop() -> str:
        return "dropped"

    def ghost() -> str:
        return "boo"

    return Tools(
        *(
            d2_guard(name)(fn)
            for name, fn in (
                ("read", read),
                ("send", send),
                ("mail", mail),
                ("search", search),
                ("refund", refund),
                ("calc", calc),
                ("card", card),
                ("drop", drop),
                ("ghost", ghost),
            )
        )
    )


def call(fn: Callable[[], Any]) -> str | None:
    """Run a guarded call; its denial reason, or None when it ran."""
    try:
        fn()
    except PermissionDeniedError as err:
        return err.reason
    return None


def approve_pending(err: ApprovalRequiredError, *, approver: str = "bob") -> None:
    """Approve ``err``'s request as another user, then continue the same request."""
    ctx = get_user_context()
    set_user(approver, roles=["lead"])
    approve(err.request.id)
    attach(ctx)


def busy_day(t: Tools) -> None:
    """Every feature: budgets (both kinds), approvals asked/approved/used/asked
    again, a rejection, sequences, data flow, input rules, output rules, explicit
    deny, unknown tools, no user and not granted."""
    set_user("alice", roles=["agent"])
    assert [call(lambda i=i: t.search(f"q{i}")) for i in range(3)] == [
        None,
        None,
        "budget_exceeded",
    ]
    set_user("alice", roles=["agent"])
    assert [call(lambda i=i: t.search(f"r{i}")) for i in range(3)] == [
        None,
        None,
        "budget_exceeded",
    ]
    set_user("alice", roles=["agent"])
    assert call(lambda: t.search("x")) is None  # the fifth of five per day
    assert call(lambda: t.search("y")) == "budget_exceeded"  # per user, with retry_after
    # approvals: small refund without, large one asked, approved, used, asked again
    set_user("alice", roles=["agent"])
    assert call(lambda: t.refund("o1", 50)) is None
    with pytest.raises(ApprovalRequiredError) as info:
        t.refund("o1", amount=500)
    approve_pending(info.value)
    assert t.refund("o1", amount=500) == "o1:500"
    assert call(lambda: t.refund("o1", amount=500)) == "approval_required"
    # a rejected request stays rejected
    with pytest.raises(ApprovalRequiredError) as info:
        t.refund("o2", amount=900)
    ctx = get_user_context()
    set_user("bob", roles=["lead"])
    reject(info.value.request.id)
    attach(ctx)
    assert call(lambda: t.refund("o2", amount=900)) == "approval_rejected"
    # sequences and data flow
    set_user("alice", roles=["agent"])
    assert call(t.mail) is None
    assert call(t.read) is None
    assert call(t.mail) == "sequence_violation"
    assert call(t.send) == "data_flow_violation"
    set_user("alice", roles=["agent"])
    assert call(lambda: t.calc(2)) is None
    assert call(t.send) is None  # the audited rule [calc -> send] only reports
    assert call(lambda: t.calc(7)) == "input_validation"
    assert call(t.card) == "output_validation"
    assert call(t.drop) == "explicit_deny"
    assert call(t.ghost) == "unknown_tool"
    set_user("carol", roles=["intern"])
    assert call(t.read) == "not_granted"
    set_user("bob", roles=["lead"])
    assert call(t.read) is None and call(t.mail) == "not_granted"
    clear_user_context()
    assert call(t.read) == "no_user"


def audit_day(t: Tools) -> None:
    """The same kinds of calls under an audit-mode policy: everything runs."""
    set_user("alice", roles=["agent"])
    for i in range(3):
        t.search(f"q{i}")
    set_user("alice", roles=["agent"])
    for i in range(4):
        t.search(f"r{i}")
    t.refund("o1", 50)
    t.refund("o1", amount=500)
    t.read()
    t.mail()
    t.send()
    t.calc(7)
    t.card()
    t.drop()
    t.ghost()
    set_user("carol", roles=["intern"])
    t.read()
    clear_user_context()
    assert call(t.read) == "no_user"


# -- the property: the policy that wrote a log replays it unchanged -------------------
@pytest.mark.parametrize("arguments", [False, True], ids=["no-arguments", "arguments"])
def test_a_log_replayed_against_its_own_policy_changes_nothing(arguments: bool) -> None:
    records, policy = run(everything(), lambda: busy_day(tools()), arguments=arguments)
    reasons = {r["reason"] for r in records}
    assert {
        "budget_exceeded",
        "approval_required",
        "approval_rejected",
        "sequence_violation",
        "data_flow_violation",
        "input_validation",
        "explicit_deny",
        "unknown_tool",
        "not_granted",
        "no_user",
    } <= reasons
    assert any(r.get("retry_after") for r in records)  # per-user budget exhausted
    assert any(r["decision"] == "allowed" and r.get("approval_id") for r in records)
    assert any(r["decision"] == "would_deny" for r in records)  # the audited rule
    assert ("arguments" in records[0]) is arguments
    report = replay(records, policy)
    assert_no_change(report, records)
    assert report.skip_reasons == {"output stage (needs the tool's result)": report.skipped}
    assert report.skipped >= 1


@pytest.mark.parametrize("arguments", [False, True], ids=["no-arguments", "arguments"])
def test_an_audit_mode_log_replayed_against_its_own_policy_changes_nothing(
    arguments: bool,
) -> None:
    records, policy = run(everything(mode="audit"), lambda: audit_day(tools()), arguments=arguments)
    would = {r["reason"] for r in records if r["decision"] == "would_deny"}
    assert {
        "budget_exceeded",
        "approval_required",
        "sequence_violation",
        "data_flow_violation",
        "input_validation",
        "explicit_deny",
        "unknown_tool",
        "not_granted",
        "output_validation",
    } <= would
    report = replay(records, policy)
    assert_no_change(report, records)


def test_a_log_file_is_read_and_replays_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    records, policy = run(everything(), lambda: busy_day(tools()), path=path, arguments=True)
    assert any("arguments" in r for r in records)  # admitted calls (not RBAC-stage ones)
    assert_no_change(replay(records, policy), records)


REQUEST_CALLS = st.lists(
    st.lists(
        st.sampled_from(
            [
                "read",
                "send",
                "mail",
                "search",
                "refund-small",
                "refund-large",
                "approve",
                "calc-ok",
                "calc-bad",
                "card",
                "drop",
                "other-user",
            ]
        ),
        max_size=8,
    ),
    min_size=1,
    max_size=4,
)


def random_day(t: Tools, requests: list[list[str]]) -> None:
    pending: list[ApprovalRequiredError] = []
    actions: dict[str, Callable[[], Any]] = {
        "read": t.read,
        "send": t.send,
        "mail": t.mail,
        "search": lambda: t.search("q"),
        "refund-small": lambda: t.refund("o", 5),
        "refund-large": lambda: t.refund("o", amount=500),
        "calc-ok": lambda: t.calc(1),
        "calc-bad": lambda: t.calc(9),
        "card": t.card,
        "drop": t.drop,
    }
    for calls in requests:
        set_user("alice", roles=["agent"])
        for name in calls:
            if name == "approve":
                if pending:
                    approve_pending(pending.pop())
                continue
            if name == "other-user":
                ctx = get_user_context()
                set_user("dave", roles=["lead"])
                call(t.read)
                call(t.mail)
                attach(ctx)
                continue
            try:
                actions[name]()
            except ApprovalRequiredError as err:
                if err.request.id not in {p.request.id for p in pending}:
                    pending.append(err)
            except PermissionDeniedError:
                pass


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    requests=REQUEST_CALLS,
    arguments=st.booleans(),
    mode=st.sampled_from(["enforce", "audit"]),
)
def test_any_sequence_of_calls_replays_unchanged(
    requests: list[list[str]], arguments: bool, mode: str
) -> None:
    t = tools()
    records, policy = run(
        everything(mode=mode), lambda: random_day(t, requests), arguments=arguments
    )
    assert_no_change(replay(records, policy), records)


def test_replay_leaves_the_callers_context_as_it_was() -> None:
    records, policy = run(everything(), lambda: busy_day(tools()))
    ctx = set_user("zoe", roles=["agent"])
    replay(records, policy)
    assert get_user_context() is ctx


# -- changes a candidate makes -------------------------------------------------------
def simple_log(doc: Doc, scenario: Callable[[Tools], None], **kw: Any) -> list[Record]:
    t = tools()
    return run(doc, lambda: scenario(t), **kw)[0]


def test_a_removed_grant_denies_what_was_allowed() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.read()
        t.mail()

    records = simple_log(
        policy_document({"role": "agent", "permissions": ["read", "mail"]}), scenario
    )
    report = replay(
        records,
        candidate(
            {"role": "agent", "permissions": ["mail"]}, {"role": "x", "permissions": ["read"]}
        ),
    )
    change = only(report)
    assert (change.tool_id, change.user_id, change.roles) == ("read", "alice", ("agent",))
    assert (change.before, change.after, change.reason) == ("allowed", "denied", "not_granted")
    assert change.before_reason is None and change.request_id == records[0]["request_id"]
    assert report.unchanged == 1


def test_a_new_sequence_rule_denies_from_the_recorded_order() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.mail()  # mail first: the new rule does not apply
        t.read()
        t.mail()
        set_user("alice", roles=["agent"])
        t.mail()  # a new request starts with an empty history

    records = simple_log(
        policy_document({"role": "agent", "permissions": ["read", "mail"]}), scenario
    )
    report = replay(
        records,
        candidate(
            {
                "role": "agent",
                "permissions": ["read", "mail"],
                "sequence": [{"deny": ["read", "mail"]}],
            }
        ),
    )
    change = only(report)
    assert change.tool_id == "mail" and change.after == "denied"
    assert change.reason == "sequence_violation" and change.rule == "policies[0].sequence[0]"
    assert (
        report.changes[0] == change
        and records.index(
            next(
                r
                for r in records
                if r["request_id"] == change.request_id and r["tool_id"] == "read"
            )
        )
        == 1
    )


def test_a_new_data_flow_block_denies_after_the_labelling_call() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.send()
        t.read()
        t.send()

    records = simple_log(
        policy_document({"role": "agent", "permissions": ["read", "send"]}), scenario
    )
    report = replay(
        records, candidate({"role": "agent", "permissions": ["read", "send"]}, data_flow=FLOW)
    )
    change = only(report)
    assert change.tool_id == "send" and change.reason == "data_flow_violation"
    assert records.index(next(r for r in records if r["tool_id"] == "read")) == 1


def calc_log(arguments: bool) -> list[Record]:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.calc(2)
        t.calc(n=5)

    doc = policy_document(
        {
            "role": "agent",
            "permissions": [{"tool": "calc", "conditions": {"input": {"n": {"max": 10}}}}],
        }
    )
    return simple_log(doc, scenario, arguments=arguments)


TIGHTER = {
    "role": "agent",
    "permissions": [{"tool": "calc", "conditions": {"input": {"n": {"max": 3}}}}],
}


def test_a_tighter_input_rule_denies_calls_whose_arguments_were_recorded() -> None:
    records = calc_log(arguments=True)
    assert [r["arguments"] for r in records] == [{"n": 2}, {"n": 5}]
    change = only(replay(records, candidate(TIGHTER)))
    assert (change.before, change.after, change.reason) == ("allowed", "denied", "input_validation")
    assert change.rule == "policies[0].permissions[0].conditions.input.n"


def test_records_without_arguments_skip_input_rules() -> None:
    records = calc_log(arguments=False)
    assert all("arguments" not in r for r in records)
    report = replay(records, candidate(TIGHTER))
    assert report.changed == 0 and report.unchanged == 2


def test_unserializable_arguments_count_as_not_recorded() -> None:
    records = calc_log(arguments=True)
    for record in records:
        record["arguments"] = "<unserializable>"
    assert replay(records, candidate(TIGHTER)).changed == 0


def test_a_lower_per_request_budget_denies_the_later_calls_of_each_request() -> None:
    def scenario(t: Tools) -> None:
        for _ in range(2):
            set_user("alice", roles=["agent"])
            for i in range(3):
                t.search(str(i))

    doc = policy_document(
        {
            "role": "agent",
            "permissions": [{"tool": "search", "limits": [{"max": 3, "per": "request"}]}],
        }
    )
    records = simple_log(doc, scenario)
    report = replay(
        records,
        candidate(
            {
                "role": "agent",
                "permissions": [{"tool": "search", "limits": [{"max": 1, "per": "request"}]}],
            }
        ),
    )
    assert report.changed == 4  # calls 2 and 3 of each request
    assert {(c.after, c.reason, c.rule) for c in report.changes} == {
        ("denied", "budget_exceeded", "policies[0].permissions[0].limits[0]")
    }
    assert len({c.request_id for c in report.changes}) == 2


def test_a_per_user_budget_is_taken_as_recorded() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        for i in range(3):
            call(lambda i=i: t.search(str(i)))

    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "search", "limits": [{"max": 2, "per": "user", "window": "1d"}]}
            ],
        }
    )
    records = simple_log(doc, scenario)
    assert records[-1]["reason"] == "budget_exceeded" and records[-1]["retry_after"] > 0
    more = candidate(
        {
            "role": "agent",
            "permissions": [
                {"tool": "search", "limits": [{"max": 1, "per": "user", "window": "1d"}]}
            ],
        }
    )
    assert replay(records, more).changed == 0  # counters answer as the log did
    unlimited = candidate({"role": "agent", "permissions": ["search"]})
    change = only(replay(records, unlimited))
    assert (change.before, change.before_reason, change.after) == (
        "denied",
        "budget_exceeded",
        "allowed",
    )


def refund_log(arguments: bool) -> list[Record]:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.refund("o1", 50)
        t.refund("o2", amount=500)

    return simple_log(
        policy_document({"role": "agent", "permissions": ["refund"]}), scenario, arguments=arguments
    )


WITH_APPROVAL = (
    {
        "role": "agent",
        "permissions": [
            {"tool": "refund", "approval": {"when": {"amount": {"gt": 100}}, "approvers": ["lead"]}}
        ],
    },
    {"role": "lead", "permissions": ["refund"]},
)


def test_a_new_approval_requires_approval_where_it_applies() -> None:
    change = only(replay(refund_log(arguments=True), candidate(*WITH_APPROVAL)))
    assert (change.before, change.after, change.reason) == (
        "allowed",
        "denied",
        "approval_required",
    )
    assert change.rule == "policies[0].permissions[0].approval"
    # without recorded arguments `when` cannot be judged: the log says no approval held
    assert replay(refund_log(arguments=False), candidate(*WITH_APPROVAL)).changed == 0
    always = candidate(
        {"role": "agent", "permissions": [{"tool": "refund", "approval": {"approvers": ["lead"]}}]},
        {"role": "lead", "permissions": ["refund"]},
    )
    assert replay(refund_log(arguments=False), always).changed == 2


def test_recorded_approvals_count_as_given_and_dropping_the_approval_allows() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        with pytest.raises(ApprovalRequiredError) as info:
            t.refund("o", amount=500)
        approve_pending(info.value)
        t.refund("o", amount=500)

    records = simple_log(policy_document(*WITH_APPROVAL), scenario)
    assert [r["decision"] for r in records] == ["denied", "allowed"]
    change = only(replay(records, candidate({"role": "agent", "permissions": ["refund"]})))
    assert (change.before, change.before_reason, change.after) == (
        "denied",
        "approval_required",
        "allowed",
    )
    assert change.reason is None


def test_switching_to_audit_mode_turns_denials_into_would_deny() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.read()
        call(t.mail)

    entries = ({"role": "agent", "permissions": ["read"]}, {"role": "x", "permissions": ["mail"]})
    records = simple_log(policy_document(*entries), scenario)
    change = only(replay(records, candidate(*entries, mode="audit")))
    assert (change.tool_id, change.before, change.after) == ("mail", "denied", "would_deny")
    assert change.reason == change.before_reason == "not_granted"


def test_output_stage_records_are_skipped_and_refusals_before_rules_stay() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        call(t.card)
        clear_user_context()
        call(t.card)

    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "card", "conditions": {"output": {"pan": {"action": "deny"}}}}
            ],
        }
    )
    records = simple_log(doc, scenario)
    assert [(r["decision"], r["reason"]) for r in records] == [
        ("allowed", None),
        ("denied", "output_sanitization"),
        ("denied", "no_user"),
    ]
    report = replay(records, candidate({"role": "other", "permissions": ["card"]}))
    assert report.skipped == 1
    assert report.skip_reasons == {"output stage (needs the tool's result)": 1}
    change = only(report)  # the admitted call; no_user stays no_user
    assert change.after == "denied" and change.reason == "not_granted"
    assert report.unchanged == 1


def test_an_expired_candidate_still_replays() -> None:
    def scenario(t: Tools) -> None:
        set_user("alice", roles=["agent"])
        t.read()

    records = simple_log(policy_document({"role": "agent", "permissions": ["read"]}), scenario)
    for expires in ("2001-01-01T00:00:00Z", expires_in(400 * 86400)):
        policy = candidate({"role": "agent", "permissions": ["read"]}, expires=expires)
        assert replay(records, policy).changed == 0


def test_records_of_other_processes_and_missing_request_ids() -> None:
    base = {
        "user_id": "u",
        "roles": ["agent"],
        "tool_id": "read",
        "decision": "allowed",
        "reason": None,
    }
    records = [
        dict(base),
        {**base, "request_id": "p-1"},
        {**base, "tool_id": "mail", "decision": "denied", "reason": "not_granted"},
    ]
    report = replay(records, candidate({"role": "agent", "permissions": ["read", "mail"]}))
    change = only(report)
    assert (
        change.request_id is None
        and change.after == "allowed"
        and change.rule == "policies[0].permissions[1]"
    )


def test_replay_refuses_a_record_that_is_not_one() -> None:
    with pytest.raises(ConfigurationError, match="decision record 2: 'decision' must be one of"):
        replay(
            [
                {"user_id": "u", "roles": [], "tool_id": "t", "decision": "allowed"},
                {"user_id": "u", "roles": [], "tool_id": "t", "decision": "maybe"},
            ],
            candidate({"role": "agent", "permissions": ["t"]}),
        )


# -- read_log ------------------------------------------------------------------------
GOOD = {"user_id": "u", "roles": ["agent"], "tool_id": "t", "decision": "allowed", "reason": None}


@pytest.fixture
def log_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "decisions.jsonl"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_read_log_skips_blank_lines(log_file: Callable[[str], Path]) -> None:
    path = log_file(f"{json.dumps(GOOD)}\n\n   \n{json.dumps(GOOD)}\n")
    assert read_log(path) == [GOOD, GOOD]
    assert read_log(str(path)) == [GOOD, GOOD]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object (one decision), got a list"),
        (json.dumps({**GOOD, "tool_id": ""}), "'tool_id' must be a non-empty string"),
        (json.dumps({**GOOD, "decision": "ok"}), "'decision' must be one of allowed, denied"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}), "'user_id' is missing"),
        (json.dumps({**GOOD, "roles": "agent"}), "'roles' must be a list of strings"),
        (json.dumps({**GOOD, "decision": "denied"}), "a 'denied' record needs its 'reason'"),
        (json.dumps({**GOOD, "retry_after": "soon"}), "'retry_after' must be a number"),
    ],
)
def test_read_log_names_file_line_and_problem(
    log_file: Callable[[str], Path], line: str, message: str
) -> None:
    path = log_file(f"{json.dumps(GOOD)}\n\n{line}\n")
    with pytest.raises(ConfigurationError) as info:
        read_log(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_read_log_refuses_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(ConfigurationError, match=r"log.jsonl:2: not UTF-8"):
        read_log(path)


def test_read_log_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read decision log .*missing\.jsonl"):
        read_log(tmp_path / "missing.jsonl")


# -- regressions from a second review -------------------------------------------------


def test_refused_calls_record_their_arguments_so_loosening_a_rule_shows() -> None:
    entry = {
        "role": "agent",
        "permissions": [
            {"tool": "fetch", "conditions": {"input": {"limit": {"max": 50}}}},
            {
                "tool": "refund",
                "approval": {"when": {"amount": {"gt": 100}}, "approvers": ["lead"]},
            },
        ],
    }
    lead = {"role": "lead", "permissions": ["refund"]}
    fetch = d2_guard("fetch")(lambda limit: limit)
    refund = d2_guard("refund")(lambda amount: amount)

    def scenario() -> None:
        set_user("u", roles=["agent"])
        fetch(10)
        assert denied(lambda: fetch(100)) == "input_validation"
        assert denied(lambda: refund(500)) == "approval_required"

    records, policy = run(policy_document(entry, lead), scenario, arguments=True)
    assert all("arguments" in r for r in records)  # refusals too
    assert_no_change(replay(records, policy), records)
    looser = json.loads(json.dumps(entry))
    looser["permissions"][0]["conditions"]["input"]["limit"]["max"] = 5000
    looser["permissions"][1]["approval"]["when"]["amount"]["gt"] = 1000
    report = replay(records, candidate(looser, lead))
    assert {(c.tool_id, c.before, c.after) for c in report.changes} == {
        ("fetch", "denied", "allowed"),
        ("refund", "denied", "allowed"),
    }


def test_parts_a_replay_cannot_judge_are_counted_as_notes() -> None:
    entry = {
        "role": "agent",
        "permissions": [
            {"tool": "fetch", "conditions": {"input": {"limit": {"max": 50}}}},
            {"tool": "search", "limits": [{"max": 3, "per": "user", "window": "1d"}]},
        ],
    }
    fetch = d2_guard("fetch")(lambda limit: limit)
    search = d2_guard("search")(lambda: None)

    def scenario() -> None:
        set_user("u", roles=["agent"])
        fetch(10)
        search()

    records, policy = run(policy_document(entry), scenario)
    report = replay(records, policy)
    assert report.changed == 0
    assert set(report.notes) == {
        "input rules or approval.when not judged: the call's arguments were not recorded",
        "per: user budgets taken as recorded, not counted again",
    }


def test_a_deeply_nested_line_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigurationError, match=r"deep.jsonl:1"):
        read_log(path)
