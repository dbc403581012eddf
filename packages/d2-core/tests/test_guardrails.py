"""Decision steps 4-7: input rules, call sequences, data flow, facts, nested calls
and explain()."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from d2.core import (
    InvalidPolicyError,
    PermissionDeniedError,
    d2_guard,
    explain,
    get_facts,
    has_any_fact,
    has_fact,
    record_fact,
    record_facts,
    run_in_thread,
    set_user,
)
from d2.core.policy import compile_policy
from d2.core.policy.model import CompiledPolicy

# --- input rules ----------------------------------------------------------------


@pytest.fixture
def crm(configure: Any) -> Any:
    configure(
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "crm.lookup",
                    "conditions": {
                        "input": {
                            "customer_id": {"type": "string", "matches": "^c_[0-9]+$"},
                            "limit": {"type": "int", "min": 1, "max": 50},
                            "fields": {"maxLength": 3},
                        }
                    },
                },
            ],
        },
    )

    @d2_guard("crm.lookup")
    def lookup(customer_id: str, limit: int = 10, *, fields: tuple[str, ...] = ()) -> str:
        return f"{customer_id}:{limit}:{len(fields)}"

    set_user("u", roles=["agent"])
    return lookup


def test_input_rules_bind_positional_keyword_and_defaults(crm: Any) -> None:
    assert crm("c_1") == "c_1:10:0"
    assert crm("c_1", 50) == "c_1:50:0"
    assert crm(customer_id="c_2", limit=1, fields=("a", "b")) == "c_2:1:2"


@pytest.mark.parametrize(
    ("args", "kwargs", "argument", "rule"),
    [
        (("x_SECRET_987",), {}, "customer_id", "matches '^c_[0-9]+$'"),
        ((42,), {}, "customer_id", "type 'string'"),
        (("c_1", 51), {}, "limit", "max 50"),
        (("c_1",), {"limit": -7}, "limit", "min 1"),
        (("c_1",), {"limit": True}, "limit", "type 'int'"),
        (("c_1",), {"fields": ("a", "b", "c", "d")}, "fields", "maxLength 3"),
    ],
)
def test_input_violation_names_argument_and_rule_but_not_the_value(
    crm: Any, args: tuple[Any, ...], kwargs: dict[str, Any], argument: str, rule: str
) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        crm(*args, **kwargs)
    err = info.value
    assert err.reason == "input_validation"
    assert f"argument {argument!r} fails {rule}" in str(err)
    assert f"conditions.input.{argument}" in str(err)
    for value in args[1:] + tuple(kwargs.values()):
        assert repr(value) not in str(err).replace(rule, "")
    if args and isinstance(args[0], str) and args[0] != "c_1":
        assert args[0] not in str(err)
    assert err.trace[-1].step == "input" and err.trace[-1].outcome == "deny"


def test_required_argument(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "t",
                    "conditions": {
                        "input": {"token": {"required": True}, "opt": {"type": "string"}}
                    },
                }
            ],
        }
    )

    @d2_guard("t")
    def tool(token: str | None = None, opt: str = "default", **extra: Any) -> str:
        return "ran"

    set_user("u", roles=["r"])
    assert tool("x") == "ran"
    assert tool(token="x") == "ran"  # opt missing is fine: not required
    with pytest.raises(PermissionDeniedError, match="required"):
        tool()
    with pytest.raises(PermissionDeniedError, match="required"):
        tool(None)


def test_star_args_and_kwargs_parameters_can_be_constrained(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "t",
                    "conditions": {
                        "input": {"items": {"maxLength": 2}, "opts": {"not_contains": "debug"}}
                    },
                }
            ],
        }
    )

    @d2_guard("t")
    def tool(*items: int, **opts: Any) -> int:
        return len(items)

    set_user("u", roles=["r"])
    assert tool(1, 2, verbose=True) == 2
    with pytest.raises(PermissionDeniedError, match="'items'"):
        tool(1, 2, 3)
    with pytest.raises(PermissionDeniedError, match="'opts'"):
        tool(1, debug=True)


def test_several_grants_pass_if_any_passes_and_first_passing_supplies_output(
    configure: Any,
) -> None:
    configure(
        {
            "role": "junior",
            "permissions": [
                {
                    "tool": "q",
                    "conditions": {
                        "input": {"n": {"max": 10}},
                        "output": {"secret": {"action": "filter"}},
                    },
                }
            ],
        },
        {
            "role": "senior",
            "permissions": [{"tool": "q", "conditions": {"input": {"n": {"max": 1000}}}}],
        },
    )

    @d2_guard("q")
    def q(n: int) -> dict[str, Any]:
        return {"n": n, "secret": "s3cr3t"}

    set_user("u", roles=["junior", "senior"])
    assert q(5) == {"n": 5}  # junior's entry passes first: its output rule applies
    assert q(500) == {"n": 500, "secret": "s3cr3t"}  # only senior's passes
    with pytest.raises(PermissionDeniedError) as info:
        q(5000)
    assert "policies[0].permissions[0].conditions.input.n" in str(info.value)


def test_methods_bind_arguments_after_self(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [{"tool": "m", "conditions": {"input": {"amount": {"lt": 100}}}}],
        }
    )

    class Bank:
        @d2_guard("m")
        def pay(self, amount: float) -> float:
            return amount

    set_user("u", roles=["r"])
    assert Bank().pay(99.5) == 99.5
    with pytest.raises(PermissionDeniedError, match="'amount' fails lt 100"):
        Bank().pay(amount=100)


async def test_async_tool_input_rules(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [{"tool": "a", "conditions": {"input": {"q": {"minLength": 2}}}}],
        }
    )

    @d2_guard("a")
    async def search(q: str) -> str:
        return q

    set_user("u", roles=["r"])
    assert await search("ok") == "ok"
    with pytest.raises(PermissionDeniedError):
        await search("x")


def test_typo_operator_suggests_the_right_one_with_its_path() -> None:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(
            {
                "policies": [
                    {
                        "role": "r",
                        "permissions": [
                            {"tool": "t", "conditions": {"input": {"q": {"minlength": 2}}}}
                        ],
                    }
                ]
            }
        )
    assert info.value.errors == (
        "policies[0].permissions[0].conditions.input.q.minlength: unknown operator "
        "(did you mean 'minLength'?)",
    )


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"matches": "("}, "q.matches: bad regular expression"),
        ({"type": "str"}, "q.type: unknown type 'str' (did you mean 'string'?)"),
        ({"min": "3"}, "q.min: expected a number"),
        ({"in": "abc"}, "q.in: expected a list of values"),
        ({"maxLength": -1}, "q.maxLength: expected a non-negative integer"),
        ({"required": "yes"}, "q.required: expected true or false"),
        ({}, "q: expected a non-empty mapping of operators"),
    ],
)
def test_bad_operator_values_are_refused_with_path(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(
            {
                "policies": [
                    {
                        "role": "r",
                        "permissions": [{"tool": "t", "conditions": {"input": {"q": spec}}}],
                    }
                ]
            }
        )
    assert any(
        e.startswith(f"policies[0].permissions[0].conditions.input.{error}")
        for e in info.value.errors
    ), info.value.errors


def test_conditions_on_an_explicit_deny_are_refused() -> None:
    with pytest.raises(InvalidPolicyError, match="takes no conditions"):
        compile_policy(
            {
                "policies": [
                    {"role": "r", "permissions": [{"tool": "t", "allow": False, "conditions": {}}]}
                ]
            }
        )


# --- sequences ------------------------------------------------------------------

EXFIL = {
    "metadata": {
        "tool_groups": {
            "sensitive": ["db.read_users", "secrets.get"],
            "egress": ["http.request", "email.send"],
        }
    },
}


def exfil_tools() -> dict[str, Any]:
    tools = {}
    for name in (
        "db.read_users",
        "secrets.get",
        "http.request",
        "email.send",
        "search",
        "summarize",
    ):
        tools[name] = d2_guard(name)(lambda name=name: name)
    return tools


def test_deny_pattern_blocks_the_completing_call_with_gaps(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": [{"deny": ["@sensitive", "@egress"], "reason": "exfiltration"}],
        },
        metadata=EXFIL["metadata"],
    )
    t = exfil_tools()
    set_user("u", roles=["agent"])
    t["http.request"]()  # egress before any sensitive read is fine
    t["db.read_users"]()
    t["search"]()  # gaps allowed
    with pytest.raises(PermissionDeniedError) as info:
        t["email.send"]()  # pivot through another egress tool is caught too
    err = info.value
    assert err.reason == "sequence_violation"
    assert "exfiltration" in str(err) and "policies[0].sequence[0]" in str(err)
    with pytest.raises(PermissionDeniedError):
        t["http.request"]()
    t["summarize"]()  # unrelated tools keep working


def test_set_user_and_clear_reset_the_history(configure: Any) -> None:
    from d2.core import clear_user_context

    configure(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": [{"deny": ["db.read_users", "http.request"]}],
        }
    )
    t = exfil_tools()
    set_user("u", roles=["agent"])
    t["db.read_users"]()
    set_user("u", roles=["agent"])  # a new request
    assert t["http.request"]() == "http.request"
    t["db.read_users"]()
    clear_user_context()
    set_user("u", roles=["agent"])
    assert t["http.request"]() == "http.request"


def test_allow_pattern_is_an_exception_to_a_deny_pattern(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": {
                "mode": "allow",
                "rules": [
                    {"deny": ["db.read_users", "email.send"]},
                    {"allow": ["db.read_users", "summarize", "email.send"]},
                ],
            },
        }
    )
    t = exfil_tools()
    set_user("u", roles=["agent"])
    t["db.read_users"]()
    t["summarize"]()
    assert t["email.send"]() == "email.send"  # the allow pattern completes too
    set_user("u", roles=["agent"])
    t["db.read_users"]()
    with pytest.raises(PermissionDeniedError):
        t["email.send"]()


def test_deny_mode_is_an_allowlist_of_chains(configure: Any) -> None:
    configure(
        {
            "role": "bot",
            "permissions": ["*"],
            "sequence": {
                "mode": "deny",
                "rules": [
                    {"allow": ["search", "summarize"]},
                    {"allow": ["summarize", "email.send"]},
                ],
            },
        }
    )
    t = exfil_tools()
    set_user("u", roles=["bot"])
    with pytest.raises(PermissionDeniedError, match="may not start"):
        t["email.send"]()  # only first steps of allow patterns may start
    t["search"]()
    t["summarize"]()
    t["email.send"]()  # [search, summarize] and [summarize, email.send] chain
    with pytest.raises(PermissionDeniedError, match=r"may not follow 'email\.send'"):
        t["search"]()


def test_a_role_without_sequence_rules_lets_the_call_pass(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": [{"deny": ["db.read_users", "http.request"]}],
        },
        {"role": "auditor", "permissions": ["http.request"]},
    )
    t = exfil_tools()
    set_user("u", roles=["agent", "auditor"])
    t["db.read_users"]()
    assert t["http.request"]() == "http.request"


def test_history_is_shared_with_run_in_thread_and_aio(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": [{"deny": ["db.read_users", "http.request"]}],
        }
    )
    t = exfil_tools()

    async def main() -> None:
        set_user("u", roles=["agent"])
        await run_in_thread(t["db.read_users"])
        with pytest.raises(PermissionDeniedError):
            await t["http.request"].aio()

    asyncio.run(main())


def test_long_history_costs_no_more_per_call(
    configure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each recorded call is read once (per policy): a call late in a long request
    looks up no more tool rules than an early one (a history scan would read the
    whole history at every call)."""
    rules = [{"deny": [f"x{i}", f"y{i}", "http.request"]} for i in range(50)]
    configure({"role": "agent", "permissions": ["*"], "sequence": rules})
    noise = d2_guard("noise")(lambda: None)
    x7, y7 = d2_guard("x7")(lambda: None), d2_guard("y7")(lambda: None)
    t = exfil_tools()
    set_user("u", roles=["agent"])
    looked_up = [0]
    real = CompiledPolicy.rules_for

    def counted(self: CompiledPolicy, *args: Any, **kwargs: Any) -> Any:
        looked_up[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CompiledPolicy, "rules_for", counted)

    def per_call(n: int) -> float:
        before = looked_up[0]
        for _ in range(n):
            noise()
        return (looked_up[0] - before) / n

    first = per_call(500)
    per_call(9000)
    later = per_call(500)
    assert 0 < first <= 3 and later <= first + 0.01  # (the first call had no history)
    x7()
    y7()
    with pytest.raises(PermissionDeniedError):
        t["http.request"]()


def test_sequence_validation_errors() -> None:
    bad = [
        ({"deny": ["a"], "allow": ["b"]}, "give exactly one of"),
        ({"deny": []}, "expected a non-empty list"),
        ({"deny": ["@nope"]}, "unknown tool group"),
        ({"deny": ["a", "b"], "reasn": "x"}, "did you mean 'reason'?"),
    ]
    for rule, message in bad:
        with pytest.raises(InvalidPolicyError, match=message) as info:
            compile_policy({"policies": [{"role": "r", "permissions": [], "sequence": [rule]}]})
        assert "policies[0].sequence[0]" in str(info.value)
    with pytest.raises(InvalidPolicyError, match="allowlist"):
        compile_policy(
            {
                "policies": [
                    {
                        "role": "r",
                        "permissions": [],
                        "sequence": {"mode": "deny", "rules": [{"deny": ["a", "b"]}]},
                    }
                ]
            }
        )
    with pytest.raises(InvalidPolicyError, match="one mode per role"):
        compile_policy(
            {
                "policies": [
                    {"role": "r", "permissions": [], "sequence": {"mode": "deny", "rules": []}},
                    {"role": "r", "permissions": [], "sequence": []},
                ]
            }
        )


# --- data flow and facts ----------------------------------------------------------

FLOW = {
    "tool_groups": {
        "sensitive": ["db.read_users", "secrets.get"],
        "egress": ["http.request", "email.send"],
    },
    "data_flow": {
        "labels": {"@sensitive": ["SENSITIVE"], "payment.charge": ["PCI"]},
        "blocks": {"SENSITIVE": ["@egress"], "PCI": ["logging.info"], "UNTRUSTED": ["db.*"]},
    },
}


def test_label_recorded_by_a_tool_blocks_later_egress(configure: Any) -> None:
    configure({"role": "agent", "permissions": ["*"]}, metadata=FLOW)
    t = exfil_tools()
    set_user("u", roles=["agent"])
    t["http.request"]()
    assert get_facts() == frozenset()
    t["secrets.get"]()
    assert has_fact("SENSITIVE") and get_facts() == {"SENSITIVE"}
    with pytest.raises(PermissionDeniedError) as info:
        t["email.send"]()
    assert info.value.reason == "data_flow_violation"
    assert "'SENSITIVE' (recorded by 'secrets.get'" in str(info.value)
    assert "metadata.data_flow.blocks.SENSITIVE" in str(info.value)
    set_user("u", roles=["agent"])  # new request: facts reset
    assert t["email.send"]() == "email.send"


def test_labels_are_recorded_even_when_the_tool_raises(configure: Any) -> None:
    configure({"role": "agent", "permissions": ["*"]}, metadata=FLOW)

    @d2_guard("db.read_users")
    def failing() -> None:
        raise RuntimeError("db down")

    set_user("u", roles=["agent"])
    with pytest.raises(RuntimeError):
        failing()
    assert has_fact("SENSITIVE")


def test_facts_recorded_by_hand(configure: Any) -> None:
    configure({"role": "agent", "permissions": ["*"]}, metadata=FLOW)
    t = exfil_tools()
    set_user("u", roles=["agent"])
    record_fact("UNTRUSTED")
    record_facts(["A", "B"])
    assert has_any_fact(["X", "B"]) and not has_any_fact(["X"])
    assert get_facts() == {"UNTRUSTED", "A", "B"}
    with pytest.raises(PermissionDeniedError, match="UNTRUSTED"):
        t["db.read_users"]()


def test_facts_without_a_user_never_leak_into_other_contexts() -> None:
    import threading

    seen: list[bool] = []

    def first() -> None:  # a fresh thread: no request was ever started here
        record_fact("X")
        seen.append(has_fact("X"))

    def second() -> None:
        seen.append(has_fact("X"))

    for target in (first, second):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert seen == [True, False]


def test_data_flow_validation_errors() -> None:
    with pytest.raises(InvalidPolicyError) as info:
        compile_policy(
            {
                "metadata": {
                    "data_flow": {"labels": {"@nope": ["L"]}, "blocks": {"L": "x"}, "lables": {}}
                },
                "policies": [],
            }
        )
    errs = "\n".join(info.value.errors)
    assert "metadata.data_flow.lables: unknown key (did you mean 'labels'?)" in errs
    assert "metadata.data_flow.labels.@nope: unknown tool group" in errs
    assert "metadata.data_flow.blocks.L: expected a list of tool patterns" in errs


# --- nested calls, explain ----------------------------------------------------------


def test_nested_guarded_calls_each_apply_their_layers(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": [
                "report",
                {"tool": "crm.get", "conditions": {"output": {"ssn": {"action": "filter"}}}},
            ],
        }
    )

    @d2_guard("crm.get")
    def crm_get() -> dict[str, str]:
        return {"name": "Ada", "ssn": "123-45-6789"}

    @d2_guard("report")
    def report() -> str:
        inner = crm_get()
        assert "ssn" not in inner  # the inner result is sanitized before the outer sees it
        return f"report on {inner['name']}"

    set_user("u", roles=["agent"])
    assert report() == "report on Ada"


def test_explain_reports_each_step_without_running_or_recording(configure: Any) -> None:
    configure(
        {
            "role": "agent",
            "permissions": [
                {"tool": "crm.lookup", "conditions": {"input": {"cid": {"matches": "^c_"}}}},
                "db.read_users",
                "http.request",
            ],
            "sequence": [{"deny": ["db.read_users", "http.request"]}],
        }
    )
    ran = []

    @d2_guard("crm.lookup")
    def lookup(cid: str) -> None:
        ran.append(cid)

    set_user("u", roles=["agent"])
    ok = explain("crm.lookup", "c_1")
    assert ok.allowed and ok.reason is None
    assert [s.step for s in ok.trace] == ["policy", "user", "rbac", "input", "sequence"]
    assert ok.grant_path == "policies[0].permissions[0]"
    bad = explain("crm.lookup", cid="zz")
    assert not bad.allowed and bad.reason == "input_validation"
    assert bad.trace[-1].path == "policies[0].permissions[0].conditions.input.cid"
    assert ran == []
    nope = explain("billing.refund")
    assert nope.reason == "unknown_tool" and isinstance(nope.error, PermissionDeniedError)
    d2_guard("db.read_users")(lambda: None)()
    seq = explain("http.request")
    assert seq.reason == "sequence_violation" and seq.trace[-1].path == "policies[0].sequence[0]"
    assert explain("db.read_users").allowed  # explain itself recorded nothing


def test_observer_sees_every_decision_of_guarded_calls_but_not_queries(configure: Any) -> None:
    from d2.core.evaluate import evaluator_for

    configure(
        {
            "role": "r",
            "permissions": [
                "plain",
                {"tool": "checked", "conditions": {"input": {"x": {"max": 1}}}},
            ],
        }
    )
    seen: list[tuple[str, str | None, str | None]] = []
    evaluator_for("default").add_observer(
        lambda tool, ctx, reason, decision: seen.append((tool, ctx.user_id, reason))
    )
    plain = d2_guard("plain")(lambda: None)
    checked = d2_guard("checked")(lambda x: x)
    other = d2_guard("other", on_deny=None)(lambda: None)
    set_user("u", roles=["r"])
    plain()
    checked(1)
    with pytest.raises(PermissionDeniedError):
        checked(5)
    other()
    explain("plain")
    assert seen == [
        ("plain", "u", None),
        ("checked", "u", None),
        ("checked", "u", "input_validation"),
        ("other", "u", "unknown_tool"),
    ]
