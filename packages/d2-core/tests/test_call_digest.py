"""Which call an approval runs: the canonical form of a call's arguments.

Two calls share a digest only when their arguments are the same values: the same
types, all the way down, with the same state, including state outside a
dataclass's fields, a pydantic model's set fields, extra and private attributes,
and the items of a subclass of a built-in container. A value whose state Python
does not show (a file, a stream, a lock, a socket, a function, an instance of a
class written in C) has no canonical form: a call with it is never approved.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import decimal
import enum
import io
import json
import math
import socket
import struct
import sys
import threading
import zoneinfo
from typing import Any

import pytest
from d2.core.approval_data import read_once, shown_arguments
from d2.core.approvals import NoCanonicalForm, call_digest, canonical_arguments, json_arguments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, PrivateAttr

# -- the kinds of values an approval can be tied to -----------------------------------


class Plain:
    def __init__(self, a: Any) -> None:
        self.a = a


class Slotted:
    __slots__ = ("__b", "a")  # a private slot, stored as _Slotted__b

    def __init__(self, a: Any, b: Any = None, set_b: bool = True) -> None:
        self.a = a
        if set_b:
            self.__b = b


class SlottedChild(Slotted):
    __slots__ = ("c",)


@dataclasses.dataclass
class Transfer:
    account: Any


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    x: Any


class Recipients(list):  # type: ignore[type-arg]
    pass


class Tags(frozenset):  # type: ignore[type-arg]
    pass


class Amount(int):
    pass


Pair = collections.namedtuple("Pair", "left right")


class Patch(BaseModel):
    model_config = ConfigDict(extra="allow")

    email: Any = None
    role: Any = None
    _note: Any = PrivateAttr(default=None)


class Twin:
    """A class its name leads to; ``_twin()`` makes others of the same name."""

    kind = "reachable"

    def __init__(self, a: Any) -> None:
        self.a = a


def _twin() -> type:
    return type("Twin", (), {"kind": "elsewhere", "__init__": Twin.__init__})


ElsewhereTwin = _twin()  # module.Twin does not lead to it: never digested


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    ONE = 1
    TWO = 2


UTC = datetime.timezone.utc
CET = datetime.timezone(datetime.timedelta(hours=1), "CET")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([2**63, 2**63 + 1, -(2**63) - 1, 10**30]),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, float("nan"), -float("nan"), float("inf"), -math.inf]),
    st.sampled_from(["", "a", "1", "é", "e\u0301", "a\u202eb", "a\\u202eb", "\x00", "\ud800"]),
    st.sampled_from([b"", b"a", b"1"]),
    st.sampled_from([b"", b"a"]).map(bytearray),
    st.sampled_from([1j, -0j, complex(1, -0.0), complex(-float("nan"), 0)]),
    st.sampled_from(list(Color) + list(Level)),
    st.sampled_from([decimal.Decimal("1"), decimal.Decimal("1.0"), decimal.Decimal("-0")]),
    st.sampled_from(
        [
            datetime.datetime(2030, 1, 1, 1, 30),
            datetime.datetime(2030, 1, 1, 1, 30, fold=1),
            datetime.datetime(2030, 1, 1, 1, 30, tzinfo=UTC),
            datetime.datetime(2030, 1, 1, 1, 30, tzinfo=CET),
            datetime.date(2030, 1, 1),
            datetime.timedelta(seconds=1),
            datetime.time(1, 30),
            datetime.time(1, 30, fold=1),
            datetime.datetime(2030, 1, 1, 1, 30, tzinfo=PARIS),
        ]
    ),
)
hashables = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0]),
    st.sampled_from(["", "a", "1", "a\u202eb", "'a\\u202eb'"]),
)


def _objects(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def transfer(account: Any, extra: Any, has_extra: bool) -> Transfer:
        made = Transfer(account)
        if has_extra:
            made.destination = extra  # type: ignore[attr-defined]
        return made

    def recipients(items: list[Any], tag: Any, tagged: bool) -> Recipients:
        made = Recipients(items)
        if tagged:
            made.tag = tag  # type: ignore[attr-defined]
        return made

    def patch(fields: dict[str, Any], note: Any, extra: dict[str, Any]) -> Patch:
        made = Patch.model_validate({**fields, **extra})
        made._note = note
        return made

    def slotted(a: Any, b: Any, set_b: bool, child: bool, c: Any) -> Slotted:
        if not child:
            return Slotted(a, b, set_b)
        made = SlottedChild(a, b, set_b)
        made.c = c
        return made

    return st.one_of(
        st.builds(Plain, inner),
        st.builds(slotted, inner, inner, st.booleans(), st.booleans(), inner),
        st.builds(transfer, inner, inner, st.booleans()),
        st.builds(Frozen, inner),
        st.builds(recipients, st.lists(inner, max_size=2), inner, st.booleans()),
        st.builds(Tags, st.frozensets(hashables, max_size=2)),
        st.builds(Amount, st.integers(-2, 2)),
        st.builds(Pair, inner, inner),
        st.builds(Twin, inner),
        st.builds(ElsewhereTwin, inner),
        st.builds(
            patch,
            st.dictionaries(st.sampled_from(["email", "role"]), inner, max_size=2),
            inner,
            st.dictionaries(st.sampled_from(["x"]), inner, max_size=1),
        ),
    )


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b", "__t", "v"]), inner, max_size=2),
        st.dictionaries(hashables, inner, max_size=2),
        st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2).map(
            collections.OrderedDict
        ),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
        _objects(inner),
        # one object met twice, or an equal copy: ``move(a, a)`` is not ``move(a, b)``
        inner.map(lambda x: [x, x]),
        inner.map(lambda x: [x, copy.copy(x)]),
        inner.map(lambda x: {"b": x, "a": x}),
        inner.map(lambda x: (x, Plain(x))),
    ),
    max_leaves=6,
)


class Elsewhere(Exception):
    """The reference met an instance of a class its name does not lead to."""


# containers: two references to one differ from two equal ones (tuples and frozensets
# too: a value sharing its parts is digested in linear time)
_CHANGING = (
    list,
    tuple,
    dict,
    set,
    frozenset,
    bytearray,
    collections.OrderedDict,
    collections.defaultdict,
)
_STATEFUL = (
    Plain,
    Slotted,
    SlottedChild,
    Transfer,
    Frozen,
    Recipients,
    Tags,
    Amount,
    Patch,
    Twin,
    Pair,
)


def typed(v: Any) -> Any:
    """The reference: a value as Python holds it, type and state, all the way down,
    and which of its positions hold one object that can change (written
    independently of the canonical form: positions by path, not by a walk)."""
    where: dict[int, list[tuple[Any, ...]]] = {}
    kept: list[Any] = []  # every object met stays alive: ids are never reused
    structure = _typed(v, (), where, kept)
    shared = frozenset(frozenset(paths) for paths in where.values() if len(paths) > 1)
    return structure, shared


def _typed(v: Any, path: tuple[Any, ...], where: dict[int, list[Any]], kept: list[Any]) -> Any:
    def at(x: Any, *step: Any) -> Any:
        return _typed(x, (*path, step), where, kept)

    cls = type(v)
    if cls in _CHANGING or cls in _STATEFUL:
        where.setdefault(id(v), []).append(path)
        kept.append(v)
    if v is None or cls in (bool, int, str, bytes):
        return (cls.__name__, v)
    if cls is float:
        return ("float", struct.pack(">d", v))  # tells -0.0 from 0.0, and each NaN sign
    if cls is complex:
        return ("complex", struct.pack(">dd", v.real, v.imag))
    if cls is bytearray:
        return ("bytearray", bytes(v))
    if cls in (list, tuple):
        return (cls.__name__, tuple(at(x, i) for i, x in enumerate(v)))
    if cls in (dict, collections.OrderedDict):  # in their own order
        return (
            "dict" if cls is dict else "odict",
            tuple((at(k, "key", i), at(x, "value", i)) for i, (k, x) in enumerate(v.items())),
        )
    if cls in (set, frozenset):
        return (cls.__name__, frozenset(at(x, "e", x) for x in v))
    if isinstance(v, enum.Enum):
        return ("enum", cls.__qualname__, v.name)
    if cls is decimal.Decimal:
        return ("decimal", str(v))
    if cls in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta):
        return (cls.__name__, repr(v), getattr(v, "fold", None))
    if cls is Patch:
        return (
            "Patch",
            at(dict(vars(v)), "vars"),
            at(set(v.model_fields_set), "set"),
            at(v.model_extra, "extra"),
            at(v.__pydantic_private__, "private"),
        )
    if cls in (Slotted, SlottedChild):
        slots = [(n, at(getattr(v, n, "<unset>"), n)) for n in ("a", "_Slotted__b", "c")]
        return (cls.__name__, tuple(slots))
    if cls is Frozen:
        return ("Frozen", at(v.x, "x"))
    if cls in (Recipients, Tags, Amount, Pair):
        base = {Recipients: list, Tags: frozenset, Amount: int, Pair: tuple}[cls]
        items = at(base(v), "items")
        return (cls.__name__, items, at(dict(getattr(v, "__dict__", {})), "vars"))
    if cls in (Plain, Transfer, Twin):
        return (cls.__name__, at(dict(vars(v)), "vars"))
    if cls is ElsewhereTwin:
        raise Elsewhere
    raise AssertionError(f"no reference for {cls}")


def _reference(v: Any) -> Any:
    try:
        return typed(v)
    except Elsewhere:
        return None


def _canonical(v: Any) -> str | None:
    try:
        return canonical_arguments({"v": v})
    except NoCanonicalForm:
        return None


# pairs of values: independent ones, deep copies (the same, sharing kept), and one
# object met twice against equal copies of it
pairs = st.one_of(
    st.tuples(values, values),
    values.map(lambda a: (a, copy.deepcopy(a))),
    values.map(lambda x: ([x, x], [x, copy.copy(x)])),
    values.map(lambda x: ((x, [x]), (x, [copy.deepcopy(x)]))),
    values.map(lambda x: ({"a": x, "b": [x]}, copy.deepcopy({"a": x, "b": [x]}))),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pairs)
def test_two_values_share_a_canonical_form_exactly_when_they_are_the_same(
    pair: tuple[Any, Any],
) -> None:
    """Refused exactly when an instance of a class its name does not lead to is in
    it; otherwise the same canonical form exactly when the same types, state and
    shared objects."""
    a, b = pair
    ref_a, ref_b = _reference(a), _reference(b)
    one, other = _canonical(a), _canonical(b)
    assert (one is None) is (ref_a is None), a
    assert (other is None) is (ref_b is None), b
    if one is not None and other is not None:
        assert (one == other) is (ref_a == ref_b), (a, b)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(many=st.lists(values, min_size=2, max_size=40), pair=pairs)
def test_two_values_shown_alike_are_the_same_call(many: list[Any], pair: tuple[Any, Any]) -> None:
    """What an approver is shown tells apart every two calls the digest tells apart:
    values shown whole with the same JSON text have one canonical form (checked
    across many small values at once, where different ones shown alike would
    meet), and a value shown whole can be digested."""
    for escape in (False, True):  # as a decision log and as a request show them
        by_text: dict[str, Any] = {}
        for value in [*many, *pair]:
            shown, whole = shown_arguments({"v": value}, escape=escape)
            if not whole:
                continue
            digest = _canonical(value)
            assert digest is not None, (value, shown)
            text = json.dumps(shown)
            first = by_text.setdefault(text, (value, digest))
            assert first[1] == digest, (first[0], value, shown)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=values)
def test_the_digest_of_a_value_is_stable(a: Any) -> None:
    if _reference(a) is not None:
        assert call_digest("t", {"v": a}, "u", "1") == call_digest("t", {"v": a}, "u", "1")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=pairs)
def test_one_reading_of_a_value_has_its_digest_and_its_view(pair: tuple[Any, Any]) -> None:
    """A request's digest and view are made from one private reading of the
    arguments (``read_once``): that reading digests and shows exactly as the
    value itself, so the approved retry (digested from the live value) matches,
    and a value the digest refuses is refused by the reading or its digest."""
    for value in pair:
        arguments = {"v": value, "again": [value]}
        try:
            expected: str | None = canonical_arguments(arguments)
        except NoCanonicalForm:
            expected = None
        try:
            reading: dict[str, Any] | None = read_once(arguments)
        except NoCanonicalForm:
            reading = None
        if expected is None:
            if reading is not None:
                with pytest.raises(NoCanonicalForm):
                    canonical_arguments(reading)
            continue
        assert reading is not None, value
        assert canonical_arguments(reading) == expected, value
        assert shown_arguments(reading) == shown_arguments(arguments), value


# -- state outside what a digest used to read -----------------------------------------


def test_state_beyond_fields_and_items_tells_calls_apart() -> None:
    def with_destination(where: str) -> Transfer:
        made = Transfer("a")
        made.destination = where  # type: ignore[attr-defined]
        return made

    patch_unset = Patch.model_validate({"email": "a@corp"})
    patch_set = Patch.model_validate({"email": "a@corp", "role": None})
    private = Patch.model_validate({"email": "a@corp"})
    private._note = "drop table"
    pairs = [
        (Recipients(["boss@corp"]), Recipients(["all@corp"])),
        (Recipients(["boss@corp"]), ["boss@corp"]),
        (Pair(1, 2), (1, 2)),
        (Amount(1), 1),
        (Tags({"a"}), frozenset({"a"})),
        (with_destination("ours"), with_destination("theirs")),
        (Transfer("a"), with_destination("ours")),
        (patch_unset, patch_set),
        (patch_unset, private),
        (Patch.model_validate({"email": "a", "x": 1}), Patch.model_validate({"email": "a"})),
        (Slotted(1, 2), Slotted(1, 3)),
        (Slotted(1, None), Slotted(1, set_b=False)),
        (datetime.datetime(2030, 1, 1), datetime.datetime(2030, 1, 1, fold=1)),
        (datetime.datetime(2030, 1, 1, tzinfo=PARIS), datetime.datetime(2030, 1, 1, tzinfo=CET)),
        (collections.OrderedDict(a=1, b=2), collections.OrderedDict(b=2, a=1)),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(list, a=[1]), {"a": [1]}),
        (collections.defaultdict(list), collections.defaultdict(set)),
    ]
    for one, other in pairs:
        assert canonical_arguments({"v": one}) != canonical_arguments({"v": other}), (one, other)


def test_a_secret_counts_by_its_value_and_never_appears_in_the_canonical_text() -> None:
    from pydantic import SecretStr

    one = canonical_arguments({"v": SecretStr("hunter2")})
    assert "hunter2" not in one
    assert one != canonical_arguments({"v": SecretStr("hunter3")})
    assert one == canonical_arguments({"v": SecretStr("hunter2")})


# -- classes and objects that misreport what they are ---------------------------------


class _LyingMeta(type):
    """Says its classes keep no instance dictionary."""

    __dictoffset__ = property(lambda cls: 0)  # type: ignore[assignment]


class Lying(metaclass=_LyingMeta):
    def __init__(self, target: str) -> None:
        self.target = target


class MovedSlot:
    __slots__ = ("a", "b")

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b


class _EnumMro(type):
    """Puts ``Color`` and ``Enum`` into the MRO of a plain class."""

    def mro(cls) -> list[type]:
        return [cls, Color, enum.Enum, object]


class PosingMember(metaclass=_EnumMro):
    pass


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


def test_what_a_metaclass_says_about_its_classes_is_not_read() -> None:
    """``__dictoffset__`` (and the rest of a class's layout) is read through
    ``type``'s own descriptors, never the class's attributes."""
    assert Lying.__dictoffset__ == 0  # what the metaclass says
    assert canonical_arguments({"v": Lying("a")}) != canonical_arguments({"v": Lying("b")})


def test_a_slot_descriptor_moved_to_another_name_is_refused() -> None:
    """``MovedSlot.a`` replaced by the descriptor of ``b``: reading "every slot"
    would read ``b`` twice and never ``a``."""
    one, other = MovedSlot(1, 2), MovedSlot(3, 2)
    assert canonical_arguments({"v": one}) != canonical_arguments({"v": other})
    original = vars(MovedSlot)["a"]
    MovedSlot.a = vars(MovedSlot)["b"]  # type: ignore[misc]
    try:
        with pytest.raises(NoCanonicalForm):
            canonical_arguments({"v": one})
    finally:
        MovedSlot.a = original  # type: ignore[misc]


def test_only_members_an_enum_lists_are_digested_as_members() -> None:
    """A class whose MRO claims an enum (``issubclass`` agrees) is refused; real
    members, composite flags included, are digested by class and name."""
    fake = object.__new__(PosingMember)
    fake.target = "all@corp"  # type: ignore[attr-defined]
    fake._name_, fake._value_ = "RED", "red"  # type: ignore[attr-defined]
    assert issubclass(PosingMember, enum.Enum) and isinstance(fake, Color)
    with pytest.raises(NoCanonicalForm, match="not a member"):
        canonical_arguments({"v": fake})
    both = canonical_arguments({"v": Perm.READ | Perm.WRITE})
    assert both == canonical_arguments({"v": Perm.WRITE | Perm.READ})
    assert both != canonical_arguments({"v": Perm.READ})
    assert canonical_arguments({"v": Perm(0)}) != canonical_arguments({"v": Perm.READ})


def test_which_arguments_are_one_object_is_part_of_the_call() -> None:
    """``f(a, a)`` is not ``f(a, copy(a))``; an instance's dictionary passed beside
    it is the instance's; a structure that contains itself is digested."""
    a = Plain([1])
    assert canonical_arguments({"x": a, "y": a}) != canonical_arguments({"x": a, "y": copy.copy(a)})
    assert canonical_arguments({"x": a, "y": vars(a)}) != canonical_arguments(
        {"x": a, "y": dict(vars(a))}
    )
    loop: list[Any] = []
    loop.append(loop)
    assert canonical_arguments({"v": loop}) != canonical_arguments({"v": [[]]})
    looped = Plain(None)
    looped.a = looped
    assert canonical_arguments({"v": looped}) != canonical_arguments({"v": Plain(Plain(None))})
    shared = [1]
    assert canonical_arguments({"v": {"a": shared, "b": shared}}) == canonical_arguments(
        {"v": copy.deepcopy({"a": shared, "b": shared})}
    )
    assert canonical_arguments({"v": {"b": 1, "a": 2}}) != canonical_arguments(
        {"v": {"a": 2, "b": 1}}
    )  # a dict's order is part of the call (a tool may follow it)


def test_a_class_is_digested_by_the_name_that_leads_to_it() -> None:
    """A class passed as a value (a class method's ``cls``) is told by its module
    and qualname; two classes never share a form."""
    assert canonical_arguments({"v": Plain}) == canonical_arguments({"v": Plain})
    assert canonical_arguments({"v": Plain}) != canonical_arguments({"v": Slotted})
    assert canonical_arguments({"v": int}) != canonical_arguments({"v": bool})
    assert canonical_arguments({"v": collections.OrderedDict}) != canonical_arguments({"v": dict})


def test_a_value_too_large_to_digest_is_refused_promptly() -> None:
    """The digest's work is bounded: past 500,000 values, or 100,000 items of sets
    to order, the call has no canonical form (and so is never approved), rather than
    holding the caller."""
    with pytest.raises(NoCanonicalForm, match="too large"):
        canonical_arguments({"v": [0] * 500_001})
    canonical_arguments({"v": [0] * 400_000})
    with pytest.raises(NoCanonicalForm, match="items of sets"):
        canonical_arguments({"v": set(range(100_001))})
    canonical_arguments({"v": set(range(90_000))})
    shared: tuple[Any, ...] = ()
    for _ in range(60):
        shared = (shared, shared)  # 60 tuples, 2**60 leaves if expanded
    assert len(canonical_arguments({"v": shared})) < 20_000


def test_a_network_or_interface_with_state_of_its_own_is_refused() -> None:
    """A network's or interface's ``__dict__`` holds what its text makes (and the
    caches reading it fills): anything else set on it is refused, not digested
    beside a text that does not show it."""
    import ipaddress

    one, other = ipaddress.IPv4Network("10.0.0.0/8"), ipaddress.IPv4Network("10.0.0.0/8")
    assert canonical_arguments({"v": one}) == canonical_arguments({"v": other})
    other.note = "x"  # type: ignore[attr-defined]
    with pytest.raises(NoCanonicalForm):
        canonical_arguments({"v": other})
    iface = ipaddress.IPv6Interface("fe80::1%eth0/64")
    assert canonical_arguments({"v": iface}) == canonical_arguments(
        {"v": ipaddress.IPv6Interface("fe80::1%eth0/64")}
    )
    assert canonical_arguments({"v": iface}) != canonical_arguments(
        {"v": ipaddress.IPv6Interface("fe80::1%eth1/64")}
    )


def test_a_class_its_name_does_not_lead_to_is_refused() -> None:
    """Classes made inside a function, by ``type()``, or replaced since (a reloaded
    module) share their ``module.qualname`` with other classes."""

    class Local:
        pass

    with pytest.raises(NoCanonicalForm, match="define the class at module level"):
        canonical_arguments({"v": Local()})
    with pytest.raises(NoCanonicalForm):
        canonical_arguments({"v": ElsewhereTwin(1)})
    before = canonical_arguments({"v": Twin(1)})
    old = Twin(1)
    module = sys.modules[__name__]
    module.Twin = _twin()  # type: ignore[attr-defined]  # the module reloaded
    try:
        with pytest.raises(NoCanonicalForm):
            canonical_arguments({"v": old})
    finally:
        module.Twin = type(old)  # type: ignore[attr-defined]
    assert canonical_arguments({"v": old}) == before


def test_the_sign_of_a_nan_is_part_of_the_call() -> None:
    nan = float("nan")
    assert canonical_arguments({"v": nan}) == canonical_arguments({"v": float("nan")})
    assert canonical_arguments({"v": nan}) != canonical_arguments({"v": -nan})
    assert canonical_arguments({"v": complex(nan, 0)}) != canonical_arguments(
        {"v": complex(-nan, 0)}
    )


# -- values that are never approved ---------------------------------------------------


class Buffer(io.StringIO):
    pass


class MyDecimal(decimal.Decimal):
    pass


class Holder:
    def __init__(self, inner: Any) -> None:
        self.inner = inner


class Ordered(collections.OrderedDict):  # type: ignore[type-arg]
    pass


class Action:
    def __call__(self) -> None:
        pass


def _generator() -> Any:
    yield 1


def refused_values() -> list[Any]:
    sock = socket.socket()
    sock.close()
    return [
        io.StringIO("report"),
        io.BytesIO(b"report"),
        Buffer("report"),
        open(__file__, encoding="utf-8"),  # closed by the test
        threading.Lock(),
        sock,
        len,
        lambda: 1,
        _generator(),
        type("Made", (), {}),  # a class its name does not lead to
        sys,
        memoryview(b"x"),
        MyDecimal("1"),
        Ordered(a=1),
        Holder(io.StringIO("report")),
        Recipients([threading.Lock()]),
        Action(),
        collections.defaultdict(lambda: 0),
        ValueError("x"),
    ]


@pytest.mark.parametrize(
    "value",
    refused_values(),
    ids=lambda v: v.__qualname__ if isinstance(v, type) else type(v).__qualname__,
)
def test_values_whose_state_python_does_not_show_have_no_canonical_form(value: Any) -> None:
    try:
        with pytest.raises(NoCanonicalForm):
            canonical_arguments({"v": value})
    finally:
        if isinstance(value, io.IOBase):
            value.close()


# -- what the approver is shown -------------------------------------------------------


def test_keys_of_different_types_are_shown_apart_and_big_ints_in_full() -> None:
    class Same:
        def __repr__(self) -> str:
            return "Same()"

    shown = json_arguments(
        {"prices": {1: 10, "1": 99999}, "cap": 2**70, "same": {Same(): 1, Same(): 2}}
    )
    assert shown["prices"] == {"__dict__": {"1": 10, "'1'": 99999}}
    assert shown["cap"] == {"__int__": str(2**70)}
    same = f'{{"__class__":"{__name__}.{Same.__qualname__} <not the class its name leads to>"}}'
    assert shown["same"] == {"__dict__": {same: 1, f"{same} #2": 2}}  # its state, not repr
    assert json_arguments({"n": 2**53})["n"] == 2**53  # exact in every JSON reader
    assert json_arguments({"n": 2**53 + 1})["n"] == {"__int__": str(2**53 + 1)}
    huge = json_arguments({"n": 10**5000})["n"]["__int__"]  # beyond the int-to-text limit
    assert isinstance(huge, str) and int(huge, 16) == 10**5000


def test_attributes_outside_a_dataclass_fields_are_shown() -> None:
    made = Transfer("a")
    made.destination = "acct-9"  # type: ignore[attr-defined]
    shown = json_arguments({"t": made})["t"]
    assert shown == {"__class__": f"{__name__}.Transfer", "account": "a", "destination": "acct-9"}
