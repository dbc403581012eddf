"""What an approver and the decision log are shown (``shown_arguments``)."""

from __future__ import annotations

import datetime
import json
from collections import OrderedDict
from typing import Any

from d2.core.approval_data import shown_arguments
from hypothesis import given
from hypothesis import strategies as st

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
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
        if name != "__class__":
            raise AssertionError(f"attribute access ran: {name}")
        return object.__getattribute__(self, name)


def test_an_object_is_shown_by_its_state_without_running_its_code() -> None:
    shown, whole = shown_arguments({"v": Loud(), "k": {Loud(): 1}})
    assert whole
    assert shown["v"] == {"__class__": f"{__name__}.Loud", "to": "alice@corp"}


def test_a_cycle_is_shown_as_one_and_the_display_stays_whole() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    shown, whole = shown_arguments({"v": loop})
    assert whole and shown["v"][0] == 1 and shown["v"][1].startswith("<cycle")


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
    assert list(shown_arguments({"s": steps})[0]["s"]) == ["wipe", "backup"]


class Stamp(datetime.date):
    """A subclass of a class written in C: part of its state is not shown."""


def test_a_value_with_state_kept_in_c_is_not_shown_whole() -> None:
    assert not shown_arguments({"v": Stamp(2024, 1, 2)})[1]
    assert shown_arguments({"v": datetime.date(2024, 1, 2)}) == ({"v": "2024-01-02"}, True)


def test_a_pydantic_model_shows_every_field_and_which_were_left_unset() -> None:
    import pydantic

    class Patch(pydantic.BaseModel):
        role: str | None = None
        note: str = pydantic.Field(default="", exclude=True)
        secret: pydantic.SecretStr = pydantic.SecretStr("")

    shown, whole = shown_arguments({"p": Patch(note="n", secret=pydantic.SecretStr("s3"))})
    assert whole
    assert shown["p"]["role"] is None and shown["p"]["note"] == "n"
    assert shown["p"]["secret"] == "**********" and "s3" not in json.dumps(shown)
    assert shown["p"]["__unset__"] == ["role"]  # left out, not set to null
    assert "__unset__" not in shown_arguments({"p": Patch(role=None, note="", secret="")})[0]["p"]


class Zone(datetime.tzinfo):
    """An app's time zone: its methods are the app's code."""

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise AssertionError("the app's time zone ran")


def test_a_datetime_in_an_app_s_time_zone_is_not_shown_by_running_it() -> None:
    utc = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
    assert shown_arguments({"v": utc}) == ({"v": "2024-01-02 00:00:00+00:00"}, True)
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
