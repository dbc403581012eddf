"""``approval.when`` is read fail-safe: for every operator of the policy language and
any value, it either judges the value as POLICY.md defines the operator, or asks a
person. It never lets a call skip its approval because a value could not be judged
(NaN, an infinity, a list where a scalar is compared, a set, an object...)."""

from __future__ import annotations

import decimal
import enum
import json
import math
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
from d2.core._guardrails import when_holds as _when_holds
from d2.core.policy import compile_policy
from d2.core.policy.constraints import OPERATORS
from d2.core.policy.model import Approval
from d2.core.testing import policy_document
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# -- the reference: each operator as POLICY.md defines it, on plain values ----------


def is_number(v: Any) -> bool:
    return type(v) in (int, float)


def same(a: Any, b: Any) -> bool:
    """Type-aware equality (True is not 1; 1 and 1.0 are the same number)."""
    if type(a) is bool or type(b) is bool:
        return type(a) is bool and type(b) is bool and a == b
    if is_number(a) or is_number(b):
        return is_number(a) and is_number(b) and a == b
    return bool(a == b)


def has_type(name: str, v: Any) -> bool:
    return {
        "int": type(v) is int,
        "float": type(v) is float,
        "number": is_number(v),
        "string": type(v) is str,
        "bool": type(v) is bool,
        "list": type(v) in (list, tuple),
        "dict": type(v) is dict,
        "null": v is None,
    }[name]


def contains(v: Any, needle: Any) -> bool:
    if type(v) is str:
        return type(needle) is str and needle in v
    if type(v) in (list, tuple):
        return any(same(item, needle) for item in v)
    return type(v) is dict and needle in v


def size(v: Any) -> int:
    if type(v) is str:
        return len(v.encode("utf-8", "surrogatepass"))
    return len(json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def reference(op: str, arg: Any, v: Any) -> bool:
    """Whether plain ``v`` satisfies ``{op: arg}``."""
    if op == "type":
        return has_type(arg, v)
    if op == "eq":
        return same(v, arg)
    if op == "ne":
        return not same(v, arg)
    if op in ("min", "max", "gt", "lt"):
        if not is_number(v):
            return False
        return {"min": v >= arg, "max": v <= arg, "gt": v > arg, "lt": v < arg}[op]
    if op == "in":
        return any(same(v, o) for o in arg)
    if op == "not_in":
        return not any(same(v, o) for o in arg)
    if op in ("minLength", "maxLength"):
        if type(v) not in (str, list, tuple, dict):
            return False
        return len(v) >= arg if op == "minLength" else len(v) <= arg
    if op == "max_bytes":
        return size(v) <= arg
    if op in ("matches", "not_matches"):
        if type(v) is not str:
            return False
        return (re.search(arg, v) is not None) == (op == "matches")
    if op == "contains":
        return contains(v, arg)
    if op == "not_contains":
        return type(v) in (str, list, tuple, dict) and not contains(v, arg)
    if op in ("startsWith", "endsWith"):
        return type(v) is str and (v.startswith(arg) if op == "startsWith" else v.endswith(arg))
    raise AssertionError(op)


def plain(v: Any) -> bool:
    """A value every operator can judge: JSON types of exactly those classes,
    finite floats, no sets, no objects."""
    if v is None or type(v) in (str, int, bool):
        return True
    if type(v) is float:
        return math.isfinite(v)
    if type(v) in (list, tuple):
        return all(plain(x) for x in v)
    if type(v) is dict:
        return all(type(k) is str and plain(x) for k, x in v.items())
    return False


def scalar(v: Any) -> bool:
    return plain(v) and type(v) not in (list, tuple, dict)


def kind(v: Any) -> str:
    return "list" if type(v) in (list, tuple) else "dict" if type(v) is dict else "scalar"


def as_json(v: Any) -> Any:
    if type(v) in (list, tuple):
        return [as_json(x) for x in v]
    if type(v) is dict:
        return {k: as_json(x) for k, x in v.items()}
    return v


def identical(a: Any, b: Any) -> bool:
    """Equal under the strictest reading: type-aware at every depth."""
    if kind(a) != kind(b):
        return False
    if kind(a) == "list":
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if kind(a) == "dict":
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    return same(a, b)


STRING_OPS = {"matches", "not_matches", "startsWith", "endsWith"}


SIZED = (str, list, tuple, dict)


def loose_only(a: Any, b: Any) -> bool:
    """Equal to Python (``False == 0``), unequal to the type-aware rule: a tool
    reading one as the other acts as if they were equal."""
    return bool(a == b) and not same(a, b)


def judgeable(op: str, arg: Any, v: Any) -> bool:
    """Whether the operator takes ``v`` and can judge it for certain; else ``when``
    must ask a person. (Lists and dicts are judged by ``eq``/``ne`` only in the
    "asks a person" direction: Python's ``==`` inside them is looser.) A value
    equal to what the rule names only under Python's ``==`` cannot be judged by the
    operators that skip the approval for a mismatch (``eq``, ``in``, ``contains``)."""
    if op in ("minLength", "maxLength"):
        return type(v) in SIZED  # a length is exact whatever the items are
    if not plain(v):
        return False
    if op in STRING_OPS:
        return type(v) is str
    if op in ("min", "max", "gt", "lt"):
        return is_number(v)
    if op == "type":
        return not (type(v) is bool and arg in ("int", "number"))  # True is an int to Python
    if op in ("in", "not_in"):
        return scalar(v) and not (op == "in" and any(loose_only(v, o) for o in arg))
    if op in ("eq", "ne"):
        return scalar(v) and scalar(arg) and not (op == "eq" and loose_only(v, arg))
    if op in ("contains", "not_contains"):
        if (
            op == "contains"
            and type(v) in (list, tuple)
            and any(loose_only(item, arg) for item in v)
        ):
            return False
        return type(v) in SIZED and (type(v) is not str or type(arg) is str)
    return True


# -- values, and rules of every operator ---------------------------------------------


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    ONE = 1


class Loud(str):
    pass


class Anything:
    def __eq__(self, other: object) -> bool:  # claims to equal everything
        return True

    __hash__ = object.__hash__


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "a", "abc", "all@corp", "x@y", "500", "red", "1"]),
    st.text(max_size=6),
)
odd = st.one_of(
    st.sampled_from(
        [
            decimal.Decimal("500"),
            decimal.Decimal("NaN"),
            Color.RED,
            Level.ONE,
            Loud("all@corp"),
            Anything(),
            b"all@corp",
            frozenset({"all@corp"}),
            {"all@corp"},
            object(),
        ]
    ),
)
values = st.recursive(
    st.one_of(scalars, odd),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b", "all@corp"]), inner, max_size=2),
    ),
    max_leaves=6,
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["a", "abc", "all@corp", "1", "red"]),
)
json_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3))
numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))
counts = st.integers(0, 6)
patterns = st.sampled_from(["^a", "c$", "@corp", "[0-9]+", "^$"])

ARGUMENTS: dict[str, Any] = {
    "type": st.sampled_from(["int", "float", "number", "string", "bool", "list", "dict", "null"]),
    "eq": json_values,
    "ne": json_values,
    "min": numbers,
    "max": numbers,
    "gt": numbers,
    "lt": numbers,
    "in": st.lists(json_scalars, max_size=4),
    "not_in": st.lists(json_scalars, max_size=4),
    "minLength": counts,
    "maxLength": counts,
    "max_bytes": st.integers(0, 40),
    "matches": patterns,
    "not_matches": patterns,
    "contains": json_scalars,
    "not_contains": json_scalars,
    "startsWith": st.sampled_from(["", "a", "all"]),
    "endsWith": st.sampled_from(["", "c", "@corp"]),
}


def test_every_operator_is_covered() -> None:
    assert set(ARGUMENTS) | {"required"} == set(OPERATORS)


def approval_of(op: str, arg: Any) -> Approval:
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "t", "approval": {"when": {"x": {op: arg}}, "approvers": ["lead"]}}
            ],
        },
        {"role": "lead", "permissions": []},
    )
    approval = compile_policy(doc).rules_for("t").grants[0].approval
    assert approval is not None
    return approval


@st.composite
def rules_and_values(draw: st.DrawFn) -> tuple[str, Any, Any]:
    op = draw(st.sampled_from(sorted(ARGUMENTS)))
    arg = draw(ARGUMENTS[op])
    value = draw(st.one_of(values, json_values))
    return op, arg, value


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_and_values())
def test_when_judges_exactly_or_asks_a_person(case: tuple[str, Any, Any]) -> None:
    op, arg, value = case
    needs = _when_holds(approval_of(op, arg), (), {"x": value}, None)
    if op in ("eq", "ne") and plain(value) and not (scalar(value) and scalar(arg)):
        # lists and dicts: skipped only when certainly unequal (eq) / equal (ne)
        if not needs and op == "eq":
            assert kind(value) == kind(arg) and as_json(value) != as_json(arg)
        if not needs and op == "ne":
            assert identical(value, arg)
        return
    if not judgeable(op, arg, value):
        assert needs, f"{op}: {arg!r} skipped the approval for {value!r}"
        return
    expected = reference(op, arg, value)
    if expected:
        assert needs, f"{op}: {arg!r} holds for {value!r}"
    else:
        assert not needs, f"{op}: {arg!r} certainly fails for {value!r}"


@settings(max_examples=300, deadline=None)
@given(value=values, present=st.booleans())
def test_required_asks_unless_the_argument_is_missing(value: Any, present: bool) -> None:
    approval = approval_of("required", True)
    kwargs = {"x": value} if present else {}
    needs = _when_holds(approval, (), kwargs, None)
    assert needs == (present and value is not None)


# -- the reviewer's cases, through a guarded call ----------------------------------------


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        ({"gt": 100}, float("nan")),
        ({"gt": 100}, float("-inf")),
        ({"lt": 100}, float("inf")),
        ({"gt": 100}, decimal.Decimal("500")),
        ({"gt": 100}, "500"),
        ({"gt": 100}, [500]),
        ({"eq": "all@corp"}, ["all@corp"]),
        ({"eq": "all@corp"}, ("all@corp",)),
        ({"eq": "all@corp"}, {"all@corp"}),
        ({"eq": "all@corp"}, {"to": "all@corp"}),
        ({"eq": "all@corp"}, Loud("all@corp")),
        ({"in": ["all@corp", "staff@corp"]}, ["all@corp"]),
        ({"in": ["all@corp"]}, frozenset({"all@corp"})),
        ({"ne": "me@corp"}, Anything()),
        ({"not_in": ["me@corp"]}, Anything()),
        ({"matches": "@corp$"}, b"all@corp"),
        ({"contains": "all"}, Anything()),
        ({"not_contains": "me"}, {"me", "all"}),
        ({"type": "string"}, Color.RED),
        ({"maxLength": 1}, object()),
        # equal to what the rule names under Python's == (the tool's reading)
        ({"eq": 0}, False),
        ({"eq": False}, 0),
        ({"eq": 1.0}, True),
        ({"in": [1, 2]}, True),
        ({"contains": 0}, [False]),
        ({"type": "int"}, True),
        ({"type": "number"}, False),
    ],
)
def test_values_a_rule_cannot_judge_ask_a_person(rule: dict[str, Any], value: Any) -> None:
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "send", "approval": {"when": {"to": rule}, "approvers": ["lead"]}}
            ],
        },
        {"role": "lead", "permissions": []},
    )
    configure_rbac_sync(source=InMemorySource(doc))
    ran: list[Any] = []
    send = d2_guard("send")(lambda to: ran.append(to))
    set_user("agent-7", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        send(value)
    # a person is asked (or, for a value no approval can be tied to, it is refused)
    assert info.value.reason in ("approval_required", "approval_unsupported")
    assert isinstance(info.value, ApprovalRequiredError) or not hasattr(value, "__dict__")
    assert ran == []


def test_values_a_rule_judges_still_skip_the_approval_when_it_fails() -> None:
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "refund",
                    "approval": {
                        "when": {"amount": {"gt": 100}, "currency": {"in": ["USD"]}},
                        "approvers": ["lead"],
                    },
                }
            ],
        },
        {"role": "lead", "permissions": []},
    )
    configure_rbac_sync(source=InMemorySource(doc))
    refund = d2_guard("refund")(lambda amount, currency: "refunded")
    set_user("agent-7", roles=["agent"])
    assert refund(50, "USD") == "refunded"
    assert refund(100.0, "USD") == "refunded"
    assert refund(float("nan"), "EUR") == "refunded"  # EUR certainly fails `in`
    for amount, currency in ((500, "USD"), (float("nan"), "USD"), (500, ["USD"])):
        with pytest.raises(ApprovalRequiredError):
            refund(amount, currency)
