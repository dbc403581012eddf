"""Attacks on the approval digest and the approver's view from the sixth hostile
review, against commit 28a9759.

Each test asserts the SAFE behaviour: an approver approves what they are shown,
the digest binds exactly what the tool receives, the view never runs the app's
code nor shows two different values alike, and what cannot be represented
faithfully is refused. Each failed on the commit the review was written against.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import ipaddress
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pydantic
import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    set_user,
)
from d2.core.approval_data import (
    NoCanonicalForm,
    call_digest,
    canonical_arguments,
    shown_arguments,
)
from d2.core.testing import policy_document

LEAD = {"role": "finance_lead", "permissions": []}
REFUSED = ("approval_required", "approval_unsupported")


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review6")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _approved_then(approved: Any, other: Any, act: Callable[[Any], Any]) -> list[Any]:
    """Approve ``tool(approved)``, then call ``tool(other)``: what the tool acted on
    (``act(argument)``), in order. Safe: ``other`` is refused."""
    _configure("ops.run")
    acted: list[Any] = []

    @d2_guard("ops.run")
    def tool(arg: Any) -> str:
        acted.append(act(arg))
        return "done"

    set_user("agent-7", roles=["agent"])
    _approve(_held(lambda: tool(approved)))
    try:
        tool(other)
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    return acted


def _shown_or_refused(value: Any) -> ApprovalRequest | None:
    """The request an approver is shown for ``tool(value)``, or None when the call
    is refused outright as one that cannot be approved (nothing misleading shown)."""
    _configure("ops.send")

    @d2_guard("ops.send")
    def tool(arg: Any) -> str:
        return "sent"

    set_user("agent-7", roles=["agent"])
    try:
        return _held(lambda: tool(value))
    except PermissionDeniedError as err:
        assert err.reason == "approval_unsupported", err.reason
        return None


def _refused_by_digest_and_view(value: Any) -> None:
    with pytest.raises(NoCanonicalForm):
        canonical_arguments({"v": value})
    assert not shown_arguments({"v": value})[1], "shown whole"


# -- (a) a path whose cached text is not its parts ------------------------------------

_CACHES = (  # the caches pathlib keeps beside a path's parts (3.10 to 3.14)
    "_str",
    "_hash",
    "_pparts",
    "_cached_cparts",
    "_str_normcase_cached",
    "_parts_normcase_cached",
    "_lines_cached",
)


def _use(path: Any) -> None:
    """What using a path does: print, hash, compare, order, split and match it."""
    other = type(path)(str(path))
    assert path == other and not path < other and {path: 1}[other] == 1
    assert path.parts and path.match("*") in (True, False)
    path.parent, path.name, path / "x"


def _lying_path(cls: type[pathlib.PurePath], real: str, shown: str) -> Any:
    """A path to ``real`` whose every cache (text, hash, the cached ``parts``
    tuple...) is that of ``shown``: ``str()``, ``==`` and ``hash`` say ``shown``,
    ``parent``, ``name`` and ``/`` act on ``real``."""
    path, decoy = cls(real), cls(shown)
    _use(decoy)
    for name in _CACHES:
        try:
            object.__setattr__(path, name, object.__getattribute__(decoy, name))
        except AttributeError:
            continue
    return path


@pytest.mark.parametrize("cls", [pathlib.PurePosixPath, pathlib.PosixPath])
def test_a_path_whose_cached_text_is_not_its_parts_is_never_approved(cls: type) -> None:
    """Attack: a path was digested and shown by ``str(p)``, which is a cache
    (``_str``) anyone holding the object can set, while ``p.parent``, ``p.name``
    and ``p / x`` read the parts. The approval of removing the parent of
    ``/tmp/work/report.txt`` removed ``/home/alice/.ssh``. Safe: the second call is
    refused; the tool never acts on ``.ssh``."""
    approved = cls("/tmp/work/report.txt")
    other = _lying_path(cls, "/home/alice/.ssh/id_rsa", "/tmp/work/report.txt")
    assert str(other) == str(approved) and str(other.parent) == "/home/alice/.ssh"
    acted = _approved_then(approved, other, lambda p: str(p.parent))
    assert "/home/alice/.ssh" not in acted


@pytest.mark.parametrize("cls", [pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath])
def test_a_path_whose_cached_text_is_not_its_parts_is_refused_and_not_shown_whole(
    cls: type,
) -> None:
    real, shown = (
        ("/etc/passwd", "/tmp/x")
        if cls is not pathlib.PureWindowsPath
        else (
            "c:/windows/system32",
            "c:/temp/x",
        )
    )
    _refused_by_digest_and_view(_lying_path(cls, real, shown))
    only_text = cls(real)
    object.__setattr__(only_text, "_str", str(cls(shown)))
    _refused_by_digest_and_view(only_text)


@pytest.mark.parametrize("cls", [pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath])
def test_a_path_is_one_call_whatever_it_has_cached(cls: type) -> None:
    """A path used before the call (printed, hashed, compared, matched, split)
    fills its caches: it is still the call made with a fresh path."""
    used = cls("/tmp/work/report.txt")
    _use(used)
    fresh = cls("/tmp/work/report.txt")
    assert canonical_arguments({"v": used}) == canonical_arguments({"v": fresh})
    assert shown_arguments({"v": used}) == shown_arguments({"v": fresh})
    assert shown_arguments({"v": used})[1]
    joined = cls("/tmp", "work", "report.txt")
    assert canonical_arguments({"v": joined}) == canonical_arguments({"v": fresh})
    assert canonical_arguments({"v": cls("/tmp/work")}) != canonical_arguments({"v": fresh})


# -- (a') (b1) a subclass of a built-in type that overrides how it reads ---------------


class Cmd(str):
    """A command whose text is ``ls /tmp`` and which formats as ``rm -rf /``."""

    def __str__(self) -> str:
        return "rm -rf /"

    def __format__(self, spec: str) -> str:
        return "rm -rf /"


def test_a_str_subclass_that_formats_as_another_command_is_never_approved() -> None:
    """Attack: a subclass of a built-in type was digested and shown as its built-in
    value (``str.__str__``), without its class: the approver of ``run(cmd)`` read
    ``"ls /tmp"``; the tool's ``f"{cmd}"`` ran ``rm -rf /``. Safe: the call is refused
    outright (an override of the built-in's methods has no faithful view), and the
    tool never runs."""
    _configure("ops.shell")
    ran: list[str] = []

    @d2_guard("ops.shell")
    def shell(cmd: str) -> str:
        ran.append(f"{cmd}")
        return ran[-1]

    set_user("agent-7", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        shell(Cmd("ls /tmp"))
    assert info.value.reason == "approval_unsupported"
    assert ran == []


def _override(base: type, name: str) -> type:
    """A subclass of ``base`` (at module level: its name leads to it) that defines
    ``name`` itself."""

    def method(self: Any, *args: Any) -> Any:  # pragma: no cover - never run
        raise AssertionError(f"{name} ran")

    cls = type(f"Over_{base.__name__}_{name.strip('_')}", (base,), {name: method})
    cls.__module__ = __name__
    globals()[cls.__name__] = cls
    return cls


_OVERRIDES = [
    (str, "__str__"),
    (str, "__repr__"),
    (str, "__format__"),
    (str, "__eq__"),
    (str, "__hash__"),
    (str, "__iter__"),
    (str, "__getitem__"),
    (str, "__len__"),
    (str, "__fspath__"),
    (str, "__index__"),
    (str, "__getattribute__"),
    (str, "__getattr__"),
    (str, "strip"),  # not a dunder: the built-in's own method, shadowed
    (str, "encode"),
    (int, "__int__"),
    (int, "__index__"),
    (int, "__str__"),
    (int, "__format__"),
    (float, "__float__"),
    (bytes, "__bytes__"),
    (bytes, "__buffer__"),  # PEP 688 (3.12+): bytes(memoryview(v)) would call it
    (bytes, "decode"),
    (bytearray, "__buffer__"),
    (list, "__iter__"),
    (list, "__getitem__"),
    (list, "__len__"),
    (tuple, "__iter__"),
    (dict, "__getitem__"),
    (dict, "items"),
    (dict, "__missing__"),  # d[key] for a key it lacks: the app's code answers
    (frozenset, "__contains__"),
    (set, "__iter__"),
]


@pytest.mark.parametrize(
    ("base", "name"), _OVERRIDES, ids=[f"{b.__name__}.{n}" for b, n in _OVERRIDES]
)
def test_a_builtin_subclass_that_overrides_the_builtin_is_refused(base: type, name: str) -> None:
    value = _override(base, name)()
    _refused_by_digest_and_view(value)


class Blob(bytes):
    """Bytes whose buffer (Python 3.12+) is another command's."""

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(b"echo hello")


def test_bytes_that_define_their_own_buffer_are_never_approved() -> None:
    """Attack (Python 3.12+, PEP 688): bytes were read as ``bytes(memoryview(v))``,
    which calls a subclass's ``__buffer__``: ``Blob(b"rm -rf ~")`` digested and showed
    as ``echo hello``. Safe: such a subclass is refused, and bytes are read from
    their own storage (never through the buffer protocol a class defines)."""
    _refused_by_digest_and_view(Blob(b"rm -rf ~"))
    request = _shown_or_refused(Blob(b"rm -rf ~"))
    assert request is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 688: __buffer__ is used on 3.12+")
def test_bytes_are_read_from_their_own_storage_not_a_buffer_their_class_defines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind the refusal: were such a class let through, the digest and the view
    would still read the bytes the object holds, never its ``__buffer__``."""
    import d2.core._canonical as canonical
    import d2.core._display as display

    monkeypatch.setattr(canonical, "_overridden", lambda cls, base: None)
    monkeypatch.setattr(display, "_overridden", lambda cls, base: None)
    blob = Blob(b"rm -rf ~")
    assert memoryview(blob).tobytes() == b"echo hello"  # the protocol says otherwise
    assert b"rm -rf ~".hex() in canonical_arguments({"v": blob})
    assert b"rm -rf ~".hex() in json.dumps(shown_arguments({"v": blob})[0])


class Amount(int):
    """A subclass of a built-in type that overrides nothing."""


Point = collections.namedtuple("Point", "x y")


def test_a_builtin_subclass_is_shown_with_its_class() -> None:
    """Attack: a subclass holding nothing beyond its value was shown as that value:
    ``Amount(5)`` and ``5`` looked alike, though the tool may tell them apart. Safe:
    its class is shown; a named tuple (its methods are the standard library's) is
    still approvable."""
    assert shown_arguments({"v": Amount(5)}) != shown_arguments({"v": 5})
    assert "Amount" in json.dumps(shown_arguments({"v": Amount(5)})[0])
    shown, whole = shown_arguments({"v": Point(1, 2)})
    assert whole and "Point" in json.dumps(shown)
    assert canonical_arguments({"v": Point(1, 2)}) != canonical_arguments({"v": (1, 2)})


# -- (b2) the slots of a pydantic model ------------------------------------------------


class Transfer(pydantic.BaseModel):
    """A payment whose route is kept in a slot of its own (outside the fields)."""

    __slots__ = ("route",)
    amount: int

    def target(self) -> str:
        return str(getattr(self, "route", "default-account"))


def test_the_approver_is_shown_the_slots_of_a_pydantic_model() -> None:
    """Attack: a pydantic model's own slots were digested but not shown: two
    transfers of 5 looked alike, and the approved one paid ``attacker-iban``. Safe:
    the route is in what the approver is shown (or the call is refused)."""
    transfer = Transfer(amount=5)
    object.__setattr__(transfer, "route", "attacker-iban")
    request = _shown_or_refused(transfer)
    if request is not None:
        assert "attacker-iban" in json.dumps(request.arguments), request.arguments
    assert shown_arguments({"v": transfer}) != shown_arguments({"v": Transfer(amount=5)})


# -- (b3) state set on an ipaddress network --------------------------------------------


def test_state_set_on_a_network_is_never_approved_unseen() -> None:
    """Attack: a network's ``__dict__`` was digested beside its text but not shown;
    a cached ``broadcast_address`` set by hand makes ``hosts()`` of a /30 yield 16
    million hosts. The approver read ``10.0.0.0/30``. Safe: the state is shown or
    the call is refused; the tool never scans past the /30."""
    net = ipaddress.ip_network("10.0.0.0/30")
    net.__dict__["broadcast_address"] = ipaddress.ip_address("10.255.255.255")
    request = _shown_or_refused(net)
    if request is not None:
        assert "10.255.255.255" in json.dumps(request.arguments), request.arguments
    plain = ipaddress.ip_network("10.0.0.0/30")
    acted = _approved_then(plain, net, lambda n: sum(1 for _ in n.hosts()))
    assert all(count <= 2 for count in acted), acted


@pytest.mark.parametrize(
    "make",
    [
        lambda: ipaddress.ip_network("10.0.0.0/30"),
        lambda: ipaddress.ip_network("10.0.0.0/31"),
        lambda: ipaddress.ip_network("10.0.0.1/32"),
        lambda: ipaddress.IPv4Network(167772161),  # 10.0.0.1/32, from an int
        lambda: ipaddress.ip_network("10.0.0.7/29", strict=False),
        lambda: ipaddress.ip_network("2001:db8::/126"),
        lambda: ipaddress.ip_network("2001:db8::1/128"),
        lambda: ipaddress.ip_interface("10.0.0.7/29"),
        lambda: ipaddress.ip_interface("fe80::1%eth0/64"),
        lambda: ipaddress.ip_address("fe80::1%eth0"),
    ],
)
def test_a_network_is_one_call_whatever_it_has_cached(make: Callable[[], Any]) -> None:
    used, fresh = make(), make()
    for name in ("broadcast_address", "hostmask", "network", "netmask"):
        getattr(used, name, None)
    assert str(used) and hash(used) and used == make()
    list(getattr(used, "hosts", list)())
    assert canonical_arguments({"v": used}) == canonical_arguments({"v": fresh})
    assert shown_arguments({"v": used}) == shown_arguments({"v": fresh})
    assert shown_arguments({"v": used})[1]


class LoudInt(int):
    """An int whose methods are the app's code (they count their calls)."""

    calls: ClassVar[int] = 0

    def to_bytes(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        LoudInt.calls += 1
        return int(self).to_bytes(*args, **kwargs)

    def __format__(self, spec: str) -> str:
        LoudInt.calls += 1
        return "0"


def test_a_standard_library_value_holding_an_app_object_is_refused_unread() -> None:
    """The text of an address, a UUID or a Fraction is written from its slots: one
    set to an object of the app's would run its code while digesting and showing
    the value (and write what it says). Safe: refused, nothing of it run."""
    import fractions
    import uuid

    address = ipaddress.ip_address("10.0.0.1")
    object.__setattr__(address, "_ip", LoudInt(167772161))
    token = uuid.UUID(int=5)
    object.__setattr__(token, "int", LoudInt(5))
    third = fractions.Fraction(1, 3)
    object.__setattr__(third, "_numerator", LoudInt(1))
    LoudInt.calls = 0
    for value in (address, token, third):
        _refused_by_digest_and_view(value)
    assert LoudInt.calls == 0


# -- (b4) values of different types shown alike ----------------------------------------


class Color(enum.Enum):
    RED = "red"


class Plain:
    def __init__(self, v: Any) -> None:
        self.v = v


_ALIKE = [
    pytest.param(b"hi", {"bytes": "6869"}, id="bytes-vs-dict"),
    pytest.param(2**60, str(2**60), id="big-int-vs-text"),
    pytest.param((1, 2), [1, 2], id="tuple-vs-list"),
    pytest.param(
        collections.defaultdict(list), collections.defaultdict(int), id="defaultdict-factory"
    ),
    pytest.param(collections.defaultdict(list), {}, id="defaultdict-vs-dict"),
    pytest.param(b"hi", bytearray(b"hi"), id="bytes-vs-bytearray"),
    pytest.param({1, 2}, [1, 2], id="set-vs-list"),
    pytest.param({1, 2}, frozenset({1, 2}), id="set-vs-frozenset"),
    pytest.param(collections.OrderedDict(a=1), {"a": 1}, id="ordereddict-vs-dict"),
    pytest.param(decimal.Decimal("1.5"), "1.5", id="decimal-vs-text"),
    pytest.param(pathlib.PurePosixPath("/etc"), "/etc", id="path-vs-text"),
    pytest.param(datetime.date(2024, 1, 2), "2024-01-02", id="date-vs-text"),
    pytest.param(Color.RED, f"{__name__}.Color.RED", id="enum-vs-text"),
    pytest.param(pydantic.SecretStr("x"), "**********", id="secret-vs-text"),
    pytest.param(float("nan"), -float("nan"), id="nan-signs"),
    pytest.param(complex(1, 2), "(1+2j)", id="complex-vs-text"),
    pytest.param(collections.deque([1]), [1], id="deque-vs-list"),
    pytest.param(Plain(1), {"__class__": f"{__name__}.Plain", "v": 1}, id="object-vs-dict"),
    pytest.param(int, "<class builtins.int>", id="class-vs-text"),
    pytest.param(
        datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        datetime.datetime(
            2030, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "UTC+01:00")
        ),
        id="zone-names",
    ),
    pytest.param(datetime.datetime(2030, 1, 1), datetime.datetime(2030, 1, 1, fold=1), id="fold"),
]


@pytest.mark.parametrize(("one", "other"), _ALIKE)
def test_values_of_different_types_are_shown_apart(one: Any, other: Any) -> None:
    """Attack: the view wrote bytes as ``{"bytes": hex}`` (a dict looks the same), an
    int beyond 2**53 as its digits (a string looks the same), a tuple as a list, a
    defaultdict without its factory: two different calls, one view. Safe: different
    values are shown differently (as the text an approver reads)."""
    shown = [json.dumps(shown_arguments({"v": v})[0]) for v in (one, other)]
    assert shown[0] != shown[1], shown


# -- (c2) a forged enum member: its value is hashed ------------------------------------


class Slow:
    """A value whose hash is the app's code (it counts its calls)."""

    hashed: ClassVar[int] = 0

    def __hash__(self) -> int:
        Slow.hashed += 1
        return 1

    def __eq__(self, other: object) -> bool:
        return False


class Mode(enum.Enum):
    SAFE = 1


def test_a_forged_enum_member_is_refused_without_running_its_value_s_code() -> None:
    """Attack: an object made with ``object.__new__(Mode)`` and a name no member has
    was looked up by value (``_value2member_map_.get(value)``), which hashes the
    value: the app's ``__hash__`` ran inside the digest (a slow one held the caller
    10 s). Safe: it is refused without hashing its value."""
    forged = object.__new__(Mode)
    forged.__dict__.update(_name_="Z", _value_=Slow())
    Slow.hashed = 0
    with pytest.raises(NoCanonicalForm, match="not a member"):
        canonical_arguments({"v": forged})
    assert not shown_arguments({"v": forged})[1]
    assert Slow.hashed == 0


# -- (c3) many small sets --------------------------------------------------------------


def test_a_set_of_many_small_sets_is_refused_promptly() -> None:
    """Attack: a frozenset of 400,000 small frozensets took about 6 s of the caller's
    thread before the digest refused it (each item's sort key is a canonical text of
    its own). Safe: the digest refuses it, and the view gives up, within a second
    each (both well under on an idle machine)."""
    value = frozenset(frozenset({i, -i - 1, "x" * 40}) for i in range(400_000))
    start = time.perf_counter()
    with pytest.raises(NoCanonicalForm, match="too large"):
        call_digest("t", {"v": value}, "u", "v")
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    assert not shown_arguments({"v": value})[1]
    assert time.perf_counter() - start < 1.0
