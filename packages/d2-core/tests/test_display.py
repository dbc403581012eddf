"""What an approver and the decision log are shown (``shown_arguments``)."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import json
import pathlib
import zoneinfo
from collections import OrderedDict
from typing import Any

import pydantic
import pytest
from d2.core.approval_data import shown_arguments
from hypothesis import given
from hypothesis import strategies as st


def _untagged(key: str) -> bool:
    return not (len(key) >= 4 and key.startswith("__") and key.endswith("__"))


_keys = st.text(max_size=8).filter(_untagged) | st.sampled_from(["__x", "x__", "__"])
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner),
    max_leaves=30,
)


@given(st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_plain_json_is_shown_as_it_is_and_whole(arguments: dict[str, Any]) -> None:
    shown, whole = shown_arguments(arguments)
    assert whole
    assert json.dumps(shown) == json.dumps(arguments)  # the same values, the same order


class Loud:
    """An app's class whose code must never run while it is shown."""

    def __init__(self) -> None:
        self.to = "alice@corp"

    def __repr__(self) -> str:
        raise AssertionError("repr ran")

    def __getattribute__(self, name: str) -> Any:
        raise AssertionError(f"attribute access ran: {name}")  # even __class__


def test_an_object_is_shown_by_its_state_without_running_its_code() -> None:
    shown, whole = shown_arguments({"v": Loud(), "k": {Loud(): 1}})
    assert whole
    assert shown["v"] == {"__class__": f"{__name__}.Loud", "to": "alice@corp"}


def test_a_cycle_is_shown_as_one_and_the_display_stays_whole() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    shown, whole = shown_arguments({"v": loop})
    assert whole and shown["v"] == [1, {"__same__": "/v"}]


def test_a_display_past_its_bounds_is_not_whole() -> None:
    assert not shown_arguments({"v": list(range(200_000))})[1]
    assert not shown_arguments({"v": "x" * (17 * 1024 * 1024)})[1]
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    assert not shown_arguments({"v": deep})[1]


def test_an_ordered_dict_is_shown_in_its_own_order() -> None:
    steps = OrderedDict(backup=1, wipe=2)
    steps.move_to_end("backup")
    shown = shown_arguments({"s": steps})[0]["s"]
    assert shown["__class__"] == "collections.OrderedDict"
    assert list(shown["__value__"]) == ["wipe", "backup"]


class Stamp(datetime.date):
    """A subclass of a class written in C: part of its state is not shown."""


def test_a_value_with_state_kept_in_c_is_not_shown_whole() -> None:
    assert not shown_arguments({"v": Stamp(2024, 1, 2)})[1]
    assert shown_arguments({"v": datetime.date(2024, 1, 2)}) == (
        {"v": {"__class__": "datetime.date", "__value__": "2024-01-02"}},
        True,
    )


class Patch(pydantic.BaseModel):
    role: str | None = None
    note: str = pydantic.Field(default="", exclude=True)
    secret: pydantic.SecretStr = pydantic.SecretStr("")


def test_a_pydantic_model_shows_every_field_and_which_were_left_unset() -> None:
    shown, whole = shown_arguments({"p": Patch(note="n", secret=pydantic.SecretStr("s3"))})
    assert whole
    assert shown["p"]["role"] is None and shown["p"]["note"] == "n"
    assert shown["p"]["secret"] == {
        "__class__": "pydantic.types.SecretStr",
        "__value__": "**********",
    }
    assert "s3" not in json.dumps(shown)
    assert shown["p"]["__unset__"] == ["role"]  # left out, not set to null
    assert "__unset__" not in shown_arguments({"p": Patch(role=None, note="", secret="")})[0]["p"]


class Zone(datetime.tzinfo):
    """An app's time zone: its methods are the app's code."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise AssertionError("the app's time zone ran")


def test_a_datetime_in_an_app_s_time_zone_is_not_shown_by_running_it() -> None:
    utc = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
    assert shown_arguments({"v": utc}) == (
        {
            "v": {
                "__class__": "datetime.datetime",
                "__value__": "2024-01-02 00:00:00+00:00",
                "__tzinfo__": {
                    "__class__": "datetime.timezone",
                    "__value__": "datetime.timezone.utc",
                },
            }
        },
        True,
    )
    assert not shown_arguments({"v": datetime.datetime(2024, 1, 2, tzinfo=Zone())})[1]


class PosingZone(datetime.tzinfo):
    """A time zone that takes zoneinfo.ZoneInfo's names (sixth review): showing a
    datetime in it must not run its code."""

    calls = 0

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        PosingZone.calls += 1
        return datetime.timedelta(hours=1)


PosingZone.__module__ = "zoneinfo"
PosingZone.__qualname__ = "ZoneInfo"


def test_a_time_zone_posing_as_zoneinfo_is_not_run_by_the_display() -> None:
    at = datetime.datetime(2024, 1, 2, tzinfo=PosingZone())
    PosingZone.calls = 0
    assert not shown_arguments({"v": at})[1]
    assert PosingZone.calls == 0


# -- the documented form of each kind of value (see _display.py) -----------------------


class Color(enum.Enum):
    RED = "red"


class Amount(int):
    """A subclass of a built-in type, overriding nothing."""


class Slotted:
    __slots__ = ("__value__", "a")

    def __init__(self) -> None:
        self.a = 1


class Extra(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    __slots__ = ("route",)
    a: int = 0
    _note: str = pydantic.PrivateAttr(default="")


def _extra() -> Extra:
    made = Extra.model_validate({"a": 1, "x": 2})
    object.__setattr__(made, "route", "iban")
    return made


def _defaultdict() -> collections.defaultdict[str, list[int]]:
    made: collections.defaultdict[str, list[int]] = collections.defaultdict(list)
    made["k"].append(1)
    return made


_FORMS = [
    (None, None),
    (True, True),
    (1.5, 1.5),
    ("x", "x"),
    (2**53, 2**53),
    (2**60, {"__int__": str(2**60)}),
    (float("nan"), {"__float__": "nan"}),
    (-float("nan"), {"__float__": "-nan"}),
    (float("-inf"), {"__float__": "-inf"}),
    (complex(1, float("inf")), {"__complex__": [1.0, "inf"]}),
    ((1, "a"), {"__tuple__": [1, "a"]}),
    ({2, 1}, {"__set__": [1, 2]}),
    (frozenset({"b", "a"}), {"__frozenset__": ["a", "b"]}),
    (b"hi", {"__bytes__": "6869"}),
    (bytearray(b"hi"), {"__bytearray__": "6869"}),
    ({"a": 1}, {"a": 1}),
    ({1: "a", "1": "b"}, {"__dict__": {"1": "a", "'1'": "b"}}),
    ({"__class__": "x"}, {"__dict__": {"'__class__'": "x"}}),
    (
        collections.OrderedDict(a=1),
        {"__class__": "collections.OrderedDict", "__value__": {"a": 1}},
    ),
    (
        _defaultdict(),
        {
            "__class__": "collections.defaultdict",
            "__factory__": {"__type__": "builtins.list"},
            "__value__": {"k": [1]},
        },
    ),
    (
        collections.deque([1], maxlen=3),
        {"__class__": "collections.deque", "__value__": [1], "__maxlen__": 3},
    ),
    (Amount(5), {"__class__": f"{__name__}.Amount", "__value__": 5}),
    (Color.RED, {"__class__": f"{__name__}.Color", "__member__": "RED"}),
    (int, {"__type__": "builtins.int"}),
    (Slotted(), {"__class__": f"{__name__}.Slotted", "a": 1}),
    (
        _extra(),
        {
            "__class__": f"{__name__}.Extra",
            "a": 1,
            "route": "iban",
            "__extra__": {"x": 2},
            "__private__": {"_note": ""},
        },
    ),
    (
        datetime.datetime(2030, 1, 1, fold=1),
        {"__class__": "datetime.datetime", "__value__": "2030-01-01 00:00:00", "__fold__": 1},
    ),
    (
        datetime.datetime(2030, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        {
            "__class__": "datetime.datetime",
            "__value__": "2030-01-01 00:00:00+01:00",
            "__tzinfo__": {"__class__": "zoneinfo.ZoneInfo", "__value__": "Europe/Paris"},
        },
    ),
    (
        pathlib.PurePosixPath("/tmp/x"),
        {"__class__": "pathlib.PurePosixPath", "__value__": "/tmp/x"},
    ),
    (decimal.Decimal("1.50"), {"__class__": "decimal.Decimal", "__value__": "1.50"}),
]


@pytest.mark.parametrize(
    ("value", "form"), _FORMS, ids=[f"{i}-{type(v).__name__}" for i, (v, _) in enumerate(_FORMS)]
)
def test_each_kind_of_value_is_shown_in_its_documented_form(value: Any, form: Any) -> None:
    assert shown_arguments({"v": value}) == ({"v": form}, True)
    json.loads(json.dumps(shown_arguments({"v": value})[0], allow_nan=False))  # strict JSON


def test_an_attribute_named_like_a_tag_is_shown_by_its_repr() -> None:
    made = Slotted()
    made.__value__ = 2  # type: ignore[misc]  # a slot named like the display's tag
    assert shown_arguments({"v": made})[0]["v"] == {
        "__class__": f"{__name__}.Slotted",
        "a": 1,
        "'__value__'": 2,
    }


def test_an_object_met_again_is_shown_as_a_reference_to_its_first_place() -> None:
    """``move(a, a)`` is not ``move(a, copy(a))``: the view says which arguments are
    one object (a JSON pointer to where it was first shown), as the digest does."""
    a = ["x"]
    assert shown_arguments({"src": a, "dst": a})[0] == {
        "src": ["x"],
        "dst": {"__same__": "/src"},
    }
    assert shown_arguments({"src": a, "dst": list(a)})[0] == {"src": ["x"], "dst": ["x"]}
    holder = Slotted()
    holder.a = a
    assert shown_arguments({"h": holder, "t": (a,)})[0]["t"] == {
        "__tuple__": [{"__same__": "/h/a"}]
    }
    keyed = (1,)
    assert shown_arguments({"m": {keyed: 1}, "k": keyed})[0]["k"] == {"__same__": "/m/__dict__/@0"}
    amount = Amount(1)
    amount.note = "n"  # type: ignore[attr-defined]
    assert shown_arguments({"a": amount, "d": vars(amount)})[0]["d"] == {"__same__": "/a/__dict__"}
