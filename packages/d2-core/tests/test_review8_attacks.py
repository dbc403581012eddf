"""Attacks on the approval digest and the approver's view from the eighth hostile
review, against commit a6aaa79.

Each test asserts the SAFE behaviour: an approver approves what they are shown,
the digest binds exactly what the tool receives, neither the digest nor the view
runs the app's code, what cannot be represented faithfully is refused, and a
refusal is fast. Each failed on the commit the review was written against.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import ipaddress
import json
import pathlib
import threading
import time
import uuid
import zoneinfo
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
    read_once,
    shown_arguments,
)
from d2.core.testing import policy_document

LEAD = {"role": "finance_lead", "permissions": []}
REFUSED = ("approval_required", "approval_unsupported")


def _configure(tool: str) -> None:
    grant = {"tool": tool, "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="review8")
    configure_rbac_sync(source=InMemorySource(doc))


def _held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def _approve(request: ApprovalRequest) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id)
    set_user("agent-7", roles=["agent"])


def _refused_by_digest_and_view(value: Any) -> None:
    with pytest.raises(NoCanonicalForm):
        canonical_arguments({"v": value})
    assert not shown_arguments({"v": value})[1], "shown whole"


# -- 1. a thread changes an argument between the digest and the view ------------------


def _runner(ran: list[str]) -> Callable[[dict[str, Any]], str]:
    _configure("ops.run")

    @d2_guard("ops.run")
    def run(job: dict[str, Any]) -> str:
        ran.append(job["cmd"])
        return f"executed {job['cmd']!r}"

    set_user("agent-7", roles=["agent"])
    return run


def test_an_argument_changed_between_the_digest_and_the_view_is_not_approved_unseen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: the digest and the view were two readings of the live arguments; a
    thread that flipped ``job["cmd"]`` between them got ``ls /tmp`` shown and
    ``rm -rf ~`` digested, and the approved retry ran ``rm -rf ~``. Here the flip
    happens exactly between the readings: the first of the digest and the view
    runs with ``rm -rf ~``, the second with ``ls /tmp``. Safe: the view and the
    digest come from one reading: what is shown is what is digested, so the call
    that runs under the approval is the one the approver read."""
    from d2.core import evaluate

    ran: list[str] = []
    run = _runner(ran)
    job = {"rows": [1, 2, 3], "cmd": "rm -rf ~"}
    readings: list[str] = []

    def flipping(real: Callable[..., Any]) -> Callable[..., Any]:
        def reading(*args: Any, **kwargs: Any) -> Any:
            job["cmd"] = ("rm -rf ~", "ls /tmp")[min(len(readings), 1)]
            readings.append(job["cmd"])  # another thread, between the two readings
            try:
                return real(*args, **kwargs)
            finally:
                job["cmd"] = "rm -rf ~"

        return reading

    for name in ("call_digest", "shown_arguments", "shown_with_reason"):
        if hasattr(evaluate, name):
            monkeypatch.setattr(evaluate, name, flipping(getattr(evaluate, name)))
    request = _held(lambda: run(job))
    monkeypatch.undo()
    assert len(readings) == 2
    _approve(request)
    try:
        run(job)
    except PermissionDeniedError as err:
        assert err.reason in REFUSED
    assert all(cmd == request.arguments["job"]["cmd"] for cmd in ran), (request.arguments, ran)


def test_a_thread_flipping_an_argument_never_runs_a_call_nobody_was_shown() -> None:
    """The review's own attack, with a real thread flipping the command every 2 ms
    while the agent asks (bounded to a few seconds): once a request shows
    ``ls /tmp``, it is approved, the thread stops, and the agent retries with
    ``rm -rf ~``. Safe: every request shows the call its digest binds, so the
    approval of ``ls /tmp`` never runs ``rm -rf ~``."""
    ran: list[str] = []
    run = _runner(ran)
    job = {"rows": list(range(60_000)), "cmd": "rm -rf ~"}
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            job["cmd"] = "ls /tmp"
            time.sleep(0.002)
            job["cmd"] = "rm -rf ~"
            time.sleep(0.002)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    deadline = time.monotonic() + 4
    request = None
    try:
        while request is None and time.monotonic() < deadline:
            held = _held(lambda: run(job))
            if held.arguments["job"]["cmd"] == "ls /tmp":  # looks harmless
                request = held
    finally:
        stop.set()
        flipper.join()
    assert request is not None, "the harmless command was never shown"
    job["cmd"] = "rm -rf ~"
    _approve(request)
    with pytest.raises(PermissionDeniedError):
        run(job)
    assert ran == []


class Slotted:
    __slots__ = ("__dict__", "a", "b")

    def __init__(self, a: Any) -> None:
        self.a = a


class Tags(frozenset):  # type: ignore[type-arg]
    pass


class Rows(dict):  # type: ignore[type-arg]
    pass


class Patch(pydantic.BaseModel):
    email: str | None = None
    role: str | None = None


@dataclasses.dataclass
class Job:
    cmd: str
    rows: list[int]


class Level(enum.IntEnum):
    ONE = 1


def _readings() -> list[Any]:
    job = Job("ls", [1, 2])
    looped: list[Any] = [1]
    looped.append(looped)
    held: list[Any] = []
    in_tuple = (held, 1)
    held.append(in_tuple)
    slotted = Slotted([1])
    slotted.extra = {"k": slotted}  # type: ignore[attr-defined]
    ordered = collections.OrderedDict(b=1, a=2)
    ordered.note = "kept"  # type: ignore[attr-defined]
    ordered.move_to_end("b")
    tags = Tags({"a", 1})
    tags.owner = job  # type: ignore[attr-defined]
    rows = Rows(a=[job])
    used = pathlib.PurePosixPath("/tmp/x")
    str(used), hash(used), used.parts
    return [
        job,
        [job, job, vars(job)],
        looped,
        in_tuple,
        slotted,
        ordered,
        collections.defaultdict(list, a=[1]),
        tags,
        rows,
        {Level.ONE: (1, "a"), ("x", 2): frozenset({3})},
        Patch.model_validate({"email": "a@corp"}),
        pydantic.SecretStr("1234"),
        used,
        ipaddress.ip_network("10.0.0.0/30"),
        ipaddress.ip_interface("fe80::1%eth0/64"),
        uuid.UUID(int=5, is_safe=uuid.SafeUUID.safe),
        fractions.Fraction(1, 3),
        decimal.Decimal("1.50"),
        datetime.datetime(2030, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        bytearray(b"ab"),
        {pathlib.PurePosixPath("/a"), ipaddress.ip_address("10.0.0.1")},
        int,
    ]


@pytest.mark.parametrize("value", _readings())
def test_one_reading_digests_and_shows_as_the_value_itself(value: Any) -> None:
    """The reading a request is made from is a private copy: it digests and shows
    exactly as the live value (sharing, cycles, attributes of containers, caches of
    paths, secrets), so the approved retry, digested from the live value, matches."""
    arguments = {"v": value, "w": [value]}
    reading = read_once(arguments)
    assert canonical_arguments(reading) == canonical_arguments(arguments)
    assert shown_arguments(reading) == shown_arguments(arguments)
    assert shown_arguments(reading)[1]


@dataclasses.dataclass(frozen=True)
class Key:
    name: str


class Hashed(enum.Enum):
    """An enum whose members hash with the app's code."""

    A = 1

    def __hash__(self) -> int:
        Hashed.calls += 1  # type: ignore[attr-defined]
        return 1


Hashed.calls = 0  # type: ignore[attr-defined]


def test_a_key_whose_hash_is_the_app_s_code_is_refused_by_the_reading() -> None:
    """A dict key or set item is copied into the reading, which hashes it: one whose
    ``__hash__`` or ``__eq__`` is the app's code (a frozen dataclass, an enum that
    defines its own) is refused rather than run (use a built-in key or an enum
    member); the built-ins' and the standard library's are used."""
    values = ({Key("a"): 1}, {Key("a")}, frozenset({(1, Key("a"))}), {Hashed.A: 1})
    Hashed.calls = 0  # type: ignore[attr-defined]
    for value in values:
        with pytest.raises(NoCanonicalForm, match="__hash__"):
            read_once({"v": value})
    assert Hashed.calls == 0  # type: ignore[attr-defined]
    fine = {Level.ONE: 1, Tag("t"): 2, (1, "a"): 3, frozenset({Level.ONE}): 4}
    assert canonical_arguments(read_once({"v": fine})) == canonical_arguments({"v": fine})


# -- 2. the sixth review's defence against built-in subclasses, bypassed ---------------


def _shell_refused(command: Any) -> None:
    """``shell(command)`` is refused outright (no request an approver could be
    misled by) and the tool never runs."""
    _configure("ops.shell")
    ran: list[str] = []

    @d2_guard("ops.shell")
    def shell(command: str) -> str:
        ran.append(f"{command}")
        return ran[-1]

    set_user("agent-7", roles=["agent"])
    with pytest.raises(PermissionDeniedError) as info:
        shell(command)
    assert info.value.reason == "approval_unsupported"
    assert ran == []


class _LyingName(str):
    """A method name that says it is ``__init__`` once its class is built."""

    built = False
    calls = 0

    def __hash__(self) -> int:
        if _LyingName.built:
            _LyingName.calls += 1
            return hash("__init__")
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        if _LyingName.built:
            _LyingName.calls += 1
            if other == "__init__":
                return True
        return str.__eq__(self, other)


def _rm(self: Any, spec: str = "") -> str:
    return "rm -rf ~"


def test_a_method_named_by_a_str_subclass_is_not_taken_for_a_harmless_one() -> None:
    """Attack: ``type(name, bases, ns)`` keeps the keys of ``ns``; a key of a ``str``
    subclass whose ``__hash__``/``__eq__`` answer ``__init__`` once the class is
    built made ``_overridden`` take ``__str__`` and ``__format__`` for ``__init__``:
    ``Cmd("ls /tmp")`` was shown as ``ls /tmp`` and ran ``rm -rf ~``. Safe: a class
    with a namespace key that is not exactly a ``str`` is refused, without running
    the key's code."""
    cmd_class = type(
        "LyingCmd",
        (str,),
        {"__module__": __name__, _LyingName("__str__"): _rm, _LyingName("__format__"): _rm},
    )
    globals()["LyingCmd"] = cmd_class
    _LyingName.built = True
    try:
        cmd = cmd_class("ls /tmp")
        assert f"{cmd}" == "rm -rf ~"
        _LyingName.calls = 0
        _refused_by_digest_and_view(cmd)
        _shell_refused(cmd)
        assert _LyingName.calls == 0
    finally:
        _LyingName.built = False


def test_a_class_written_into_a_standard_library_module_is_not_trusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: ``_trusted`` believed a class whose ``__module__`` is a standard-library
    module once ``module.qualname`` led to it, both written by the class's author
    (``__module__ = "string"``, ``string.Cmd = Cmd``): its ``__str__`` and
    ``__format__`` answering ``rm -rf ~`` were taken for the standard library's.
    Safe: the standard library's classes are trusted by identity only."""
    import string

    class Cmd(str):
        __module__ = "string"
        __qualname__ = "Cmd"

        def __str__(self) -> str:
            return "rm -rf ~"

        def __format__(self, spec: str) -> str:
            return "rm -rf ~"

    monkeypatch.setattr(string, "Cmd", Cmd, raising=False)
    cmd = Cmd("ls /tmp")
    _refused_by_digest_and_view(cmd)
    _shell_refused(cmd)


class _CollidingKey:
    """A class-namespace key whose hash is that of ``"__slots__"`` (and
    ``"__dict__"``): a lookup of either name runs its ``__eq__``."""

    calls = 0

    def __init__(self, like: str) -> None:
        self.like = like

    def __eq__(self, other: object) -> bool:
        _CollidingKey.calls += 1
        return False

    def __hash__(self) -> int:
        return hash(self.like)


OddlyNamed = type(
    "OddlyNamed",
    (),
    {_CollidingKey("__slots__"): 1, _CollidingKey("__dict__"): 2, "__module__": __name__},
)


def test_a_class_namespace_key_of_the_app_s_type_is_never_compared() -> None:
    """Attack: a non-str key in a class namespace, whose hash equals that of
    ``"__slots__"``, had its ``__eq__`` run by ``.get("__slots__")`` in every digest
    and view (the call stayed approvable). Safe: such a class is refused, and the
    key's code never runs."""
    value = OddlyNamed()
    _CollidingKey.calls = 0
    _refused_by_digest_and_view(value)
    with pytest.raises(NoCanonicalForm):
        read_once({"v": value})
    assert _CollidingKey.calls == 0


# -- 3. the digest and the view ran the app's code -------------------------------------


class _Slots(tuple):  # type: ignore[type-arg]
    """A ``__slots__`` object whose ``__iter__`` is the app's code: it can tell the
    view from the digest by its caller, and change what either reads."""

    calls = 0

    def __iter__(self) -> Any:
        _Slots.calls += 1
        return tuple.__iter__(self)


class SwappingJob:
    __slots__ = _Slots(("cmd",))

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd


def test_a_slots_object_of_the_app_s_type_is_never_iterated() -> None:
    """Attack: ``_declared_slots`` iterated a class's ``__slots__`` object as the class
    statement stored it: its ``__iter__`` ran three times per digest and once per
    view, and (telling them apart by its caller) showed ``ls /tmp`` while the digest
    and the tool read ``rm -rf ~``. Safe: ``__slots__`` must be exactly a ``str``, or
    a tuple, list or dict of exact strings; any other is refused, never iterated."""
    job = SwappingJob("rm -rf ~")
    _Slots.calls = 0
    _refused_by_digest_and_view(job)
    with pytest.raises(NoCanonicalForm):
        read_once({"v": job})
    assert _Slots.calls == 0
    _shell_refused(job)
    assert _Slots.calls == 0


class ReadLogged:
    """A class attribute named ``__dict__`` hides the instance dictionary; reading
    its state through ``object.__getstate__`` ran ``__getattribute__`` per slot."""

    __slots__ = ("__dict__", "amount")
    __dict__ = property(lambda self: {})  # type: ignore[assignment]
    reads: ClassVar[list[str]] = []

    def __getattribute__(self, name: str) -> Any:
        ReadLogged.reads.append(name)
        time.sleep(0.05)
        return object.__getattribute__(self, name)


def test_state_hidden_by_a_dict_attribute_is_refused_without_running_the_app_s_code() -> None:
    """Attack: when a class attribute named ``__dict__`` hid the descriptor, the
    digest and the view fell back to ``object.__getstate__``, which reads every slot
    with the app's ``__getattribute__`` (a slow one held the caller; the call stayed
    approvable). Safe: such a value is refused at once, nothing of it run."""
    order = ReadLogged()
    object.__setattr__(order, "amount", 5)
    ReadLogged.reads.clear()
    start = time.perf_counter()
    _refused_by_digest_and_view(order)
    with pytest.raises(NoCanonicalForm):
        read_once({"v": order})
    _shell_refused(order)
    assert ReadLogged.reads == []
    assert time.perf_counter() - start < 0.5


class _SecretKey:
    """A dict key whose hash is that of ``"_secret_value"``, and whose comparisons
    are the app's code."""

    calls = 0

    def __eq__(self, other: object) -> bool:
        _SecretKey.calls += 1
        return False

    def __ne__(self, other: object) -> bool:
        _SecretKey.calls += 1
        return True

    def __hash__(self) -> int:
        _SecretKey.calls += 1
        return hash("_secret_value")


def test_a_key_of_the_app_s_type_in_a_secret_is_never_compared() -> None:
    """Attack: the digest of a pydantic secret looked up ``"_secret_value"`` with
    ``.get`` and left it out with ``k != hide``: a dict key of the app's type had its
    ``__hash__``, ``__eq__`` and ``__ne__`` run. Safe: the entries are scanned by
    exact-string keys; nothing of the key runs (and such a secret is not shown
    whole)."""
    secret = pydantic.SecretStr("1234")
    secret.__dict__[_SecretKey()] = 1
    _SecretKey.calls = 0
    try:
        canonical_arguments({"v": secret})
    except NoCanonicalForm:
        pass
    assert not shown_arguments({"v": secret})[1]
    with pytest.raises(NoCanonicalForm):
        read_once({"v": secret})
    assert _SecretKey.calls == 0


class _ModuleName:
    """An object set as a class's ``__module__``: comparing, hashing or formatting it
    runs the app's code (slowly)."""

    calls: ClassVar[list[str]] = []

    def __eq__(self, other: object) -> bool:
        _ModuleName.calls.append("__eq__")
        time.sleep(0.05)
        return False

    def __hash__(self) -> int:
        _ModuleName.calls.append("__hash__")
        time.sleep(0.05)
        return 1

    def __format__(self, spec: str) -> str:
        _ModuleName.calls.append("__format__")
        return "formatted"

    def __str__(self) -> str:
        _ModuleName.calls.append("__str__")
        return "text"

    def __repr__(self) -> str:
        _ModuleName.calls.append("__repr__")
        return "text"


class OddModule:
    __module__ = _ModuleName()  # type: ignore[assignment]

    def __init__(self, host: str) -> None:
        self.host = host


def test_a_class_module_of_the_app_s_type_is_never_compared_hashed_or_formatted() -> None:
    """Attack: ``__module__`` may be any object: the digest compared it with ``==``,
    the view hashed it, and error messages formatted it, each running its code (the
    guarded call took 1 s of its sleeps before it was refused). Safe: a class's
    ``__module__`` and ``__qualname__`` are read only when exactly ``str``; the value
    is refused at once, nothing of it run."""
    value = OddModule("db1")
    _ModuleName.calls.clear()
    start = time.perf_counter()
    with pytest.raises(NoCanonicalForm) as info:
        canonical_arguments({"v": value})
    assert "formatted" not in str(info.value) and "text" not in str(info.value)
    assert not shown_arguments({"v": value})[1]
    _shell_refused(value)
    assert _ModuleName.calls == []
    assert time.perf_counter() - start < 0.5


# -- 4. two different objects, one digest ----------------------------------------------


class Payee:
    __slots__ = ()  # a sentinel: identity is everything


class Marker:
    """Another stateless class (an empty ``__dict__``)."""


ALICE, MALLORY = Payee(), Payee()
ACCOUNTS = {ALICE: "DE00 alice", MALLORY: "XX99 mallory"}


def test_two_objects_that_hold_nothing_but_their_identity_are_never_one_call() -> None:
    """Attack: an instance of a class with ``__slots__ = ()`` (the sentinel pattern)
    was digested and shown as its class alone: ``pay(ALICE, 5000)`` was approved and
    ``pay(MALLORY, 5000)`` paid mallory under that approval. Safe: an object that
    holds nothing but its identity (no attribute, no slot set, equality by
    identity) has no canonical form; the call is refused outright (use an enum
    member for such a token)."""
    _configure("ops.pay")
    paid: list[str] = []

    @d2_guard("ops.pay")
    def pay(who: Payee, amount: int) -> str:
        paid.append(ACCOUNTS[who])
        return "paid"

    set_user("agent-7", roles=["agent"])
    for who in (ALICE, MALLORY):
        with pytest.raises(PermissionDeniedError) as info:
            pay(who, 5000)
        assert info.value.reason == "approval_unsupported"
    assert paid == []
    for value in (ALICE, Marker(), {"m": {ALICE: "ok"}, "who": ALICE}):
        _refused_by_digest_and_view(value)


@dataclasses.dataclass
class NoFields:
    """Stateless, but compared by value: every instance is the same call."""


class Tag(str):
    __slots__ = ()


def test_the_digest_and_the_view_agree_on_which_objects_are_one() -> None:
    """Attack: the digest wrote an instance without state of its own in full at each
    meeting, while the view wrote ``{"__same__": ...}`` the second time: two calls
    the view told apart (one object twice, or two equal ones) had one digest. Safe:
    the digest refers to every object met again, as the view does; a stateless
    class compared by value (a dataclass without fields) is still approvable."""
    one, other = Tag("x"), Tag("x")
    twice, pair = {"v": [one, one]}, {"v": [one, other]}
    assert shown_arguments(twice) != shown_arguments(pair)
    assert canonical_arguments(twice) != canonical_arguments(pair)
    assert shown_arguments({"v": NoFields()})[1]
    assert canonical_arguments({"v": NoFields()}) == canonical_arguments({"v": NoFields()})


# -- 5. exponential work before any budget ----------------------------------------------


def _doubling(levels: int) -> list[Any]:
    """``levels + 1`` small lists, each holding the next twice: 2**levels leaves to
    a walk that does not remember what it has read."""
    shared: list[Any] = [0]
    for _ in range(levels):
        shared = [shared, shared]
    return shared


def _tagged_network(tag: Any) -> Any:
    net = ipaddress.IPv4Network("10.0.0.0/30")
    net.tag = tag  # type: ignore[attr-defined]
    return net


@pytest.mark.parametrize(
    "make",
    [
        lambda: _tagged_network(_doubling(40)),
        lambda: _tagged_network(list(range(2_000_000))),
        lambda: _tagged_network(tuple([_doubling(40)] * 3)),
    ],
    ids=["shared-lists-40-levels", "flat-2M-items", "shared-in-a-tuple"],
)
def test_state_of_a_standard_library_value_is_checked_in_bounded_time(
    make: Callable[[], Any],
) -> None:
    """Attack: the check that a path's, address's, ``Fraction``'s or ``UUID``'s state
    is plain walked the lists it holds without a memo or a bound, before any budget:
    ``x = [x, x]`` 22 times took 3.9 s (digest) and 4.7 s (view), doubling with
    each level (40 levels: weeks). Safe: each list is read once and the items
    counted against a small budget; the value is refused, by the digest, the view,
    the reading and the guarded call, each well under a second."""
    value = make()
    start = time.perf_counter()
    _refused_by_digest_and_view(value)
    with pytest.raises(NoCanonicalForm):
        read_once({"v": value})
    _shell_refused(value)
    assert time.perf_counter() - start < 1.0


def test_a_path_whose_state_shares_a_list_is_still_one_call() -> None:
    """The memo does not refuse what the standard library shares itself: a path's
    parts and its cached case-folded parts may be one list."""
    used = pathlib.PurePosixPath("/tmp/a/b")
    used == pathlib.PurePosixPath("/tmp")  # noqa: B015 - fills the comparison caches
    fresh = pathlib.PurePosixPath("/tmp/a/b")
    assert canonical_arguments({"v": used}) == canonical_arguments({"v": fresh})
    assert shown_arguments({"v": used})[1]


# -- 6. a small argument that costs a lot to digest -------------------------------------


def test_a_string_too_long_to_show_is_refused_before_it_is_digested(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: a single 44 MB string cost about 1.3 s of digest before the view
    refused it (the digest ran first). Safe: the view, which refuses it at once (over
    16 Mi characters), runs before the digest; the digest never runs."""
    from d2.core import evaluate

    digested: list[Any] = []
    real = evaluate.call_digest

    def counted(*args: Any) -> str:
        digested.append(args[0])
        return real(*args)

    monkeypatch.setattr(evaluate, "call_digest", counted)
    huge = "\U0001f600" * (17 * 2**20)
    start = time.perf_counter()
    _shell_refused(huge)
    assert time.perf_counter() - start < 0.5
    assert digested == []


def test_a_big_string_shared_many_times_is_hashed_once() -> None:
    """Attack: ``[s] * 10`` with ``s`` a string of a million astral characters (a
    4 MB argument) wrote about 120 MB of canonical JSON, then copied it again to
    hash it: 1.5 s and 400 MB per reading, and the call was approvable (each retry
    paid it again). Safe: a string or bytes longer than 4,096 is digested as its
    SHA-256, once per object per digest; the digest takes a fraction of the time
    and memory, and still tells every two different values apart."""
    import tracemalloc

    text = "\U0001f600" * 1_000_000
    rows = [text] * 10
    start = time.perf_counter()
    digest = call_digest("t", {"rows": rows}, "u", "v")
    assert time.perf_counter() - start < 0.3
    tracemalloc.start()
    try:
        assert call_digest("t", {"rows": rows}, "u", "v") == digest
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, peak
    copies = [("\U0001f600" * 999_999) + "\U0001f600" for _ in range(10)]  # equal, not one
    assert call_digest("t", {"rows": copies}, "u", "v") == digest
    changed = [*rows[:9], text[:-1] + "\U0001f601"]
    assert call_digest("t", {"rows": changed}, "u", "v") != digest
    long = "a" * 5000
    for one, other in [
        (long, long[:-1] + "b"),
        (long, long.encode()),
        (long.encode(), bytearray(long.encode())),
        (long + "\ud800", long + "\udc00"),  # lone surrogates digest too
        (long, [long]),
    ]:
        assert canonical_arguments({"v": one}) != canonical_arguments({"v": other})


# -- 7. a lone surrogate on a Redis store ---------------------------------------------------


def test_a_lone_surrogate_in_an_argument_is_held_for_approval_on_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: ``"hello \\ud800"`` was digested and shown whole, but the request
    written with ``ensure_ascii=False`` kept the surrogate, which redis-py cannot
    encode: the call was refused ``budget_unavailable`` while Redis was healthy, and
    the process's one store-failure warning was spent on it. Safe: the request is
    stored (a lone surrogate written as its JSON escape); the approved call runs;
    nothing is logged."""
    from d2.core import _refusals

    monkeypatch.setattr(_refusals, "_store_log", [-_refusals._LOG_EVERY, 0])
    grant = {"tool": "ops.send", "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="surrogate")
    configure_rbac_sync(source=InMemorySource(doc), store=redis_url)
    sent: list[str] = []

    @d2_guard("ops.send")
    def send(note: str) -> str:
        sent.append(note)
        return "sent"

    set_user("agent-7", roles=["agent"])
    note = "hello \ud800"
    with caplog.at_level("WARNING", logger="d2"):
        request = _held(lambda: send(note))
        assert ApprovalRequest.from_json(request.to_json()) == request
        request.to_json().encode()  # what redis-py does: no UnicodeEncodeError
        _approve(request)
        assert send(note) == "sent"
    assert sent == [note]
    assert "store failed" not in caplog.text


def test_every_store_outage_is_logged_not_only_the_first(
    redis_instance: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the store-failure warning was logged once per process: one failure
    (here a first outage; in the review, the surrogate) used it up, and every later
    outage went unlogged. Safe: the warning is rate-limited (at most one a minute,
    with the count of failures since), not spent for good."""
    from d2.core import _refusals

    grant = {"tool": "ops.send", "approval": {"approvers": ["finance_lead"]}}
    doc = policy_document({"role": "agent", "permissions": [grant]}, LEAD, name="outages")
    configure_rbac_sync(source=InMemorySource(doc), store=redis_instance.url)
    send = d2_guard("ops.send")(lambda note: "sent")
    set_user("agent-7", roles=["agent"])
    clock = [1000.0]
    monkeypatch.setattr(_refusals, "_clock", lambda: clock[0])
    monkeypatch.setattr(_refusals, "_store_log", [-_refusals._LOG_EVERY, 0])
    redis_instance.stop()
    with caplog.at_level("WARNING", logger="d2"):
        for later in (0.0, 1.0, 120.0):  # two outages a minute apart, one just after
            clock[0] += later
            with pytest.raises(PermissionDeniedError) as info:
                send("hello")
            assert info.value.reason == "budget_unavailable"
    warnings = [r for r in caplog.records if "store failed" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert "1 more" in warnings[1].getMessage()


def test_a_user_id_with_a_lone_surrogate_is_counted_on_redis(redis_url: str) -> None:
    """The same encoding error, through the user id: the key of a ``per: user``
    budget hashed the id encoded strictly, and the guarded call raised
    ``UnicodeEncodeError``. Safe: the id is hashed as it is; its budget counts like
    any other user's."""
    limit = {"max": 2, "per": "user", "window": "1m"}
    doc = policy_document(
        {"role": "agent", "permissions": [{"tool": "ops.count", "limits": [limit]}]},
        name="surrogate-user",
    )
    configure_rbac_sync(source=InMemorySource(doc), store=redis_url)
    count = d2_guard("ops.count")(lambda: "counted")
    set_user("agent-\ud800", roles=["agent"])
    assert [count(), count()] == ["counted", "counted"]
    with pytest.raises(PermissionDeniedError) as info:
        count()
    assert info.value.reason == "budget_exceeded"


# -- characters an approver cannot see (the review's note) ------------------------------


@pytest.mark.parametrize(
    "hidden",
    [
        "\u202e",  # right-to-left override: "exe.txt" reads "txt.exe"
        "\u200b",  # zero-width space
        "\u2066",  # left-to-right isolate
        "\x1b[2J",  # a terminal escape
        "\x00",
        "\ud800",  # a lone surrogate
        "\u2028",  # line separator
        "\U000e0041",  # a tag character
    ],
)
def test_characters_an_approver_cannot_see_are_shown_escaped(hidden: str) -> None:
    """A string holding a control, format (bidi override, zero-width), separator or
    surrogate character is shown in a request as ``{"__str__": repr}``: every such
    character as an escape the approver can read, never raw; a dict key or attribute
    name holding one as its ``repr``. A string with only visible characters, line
    breaks and tabs is shown as itself, and a string that spells an escape is not
    shown like the character it spells. (A decision log keeps the string: ``d2
    replay`` judges it.)"""
    text = f"invoice{hidden}fdp.exe"
    values = {"v": text, "k": {text: 1}, "p": pathlib.PurePosixPath(text)}
    shown, whole = shown_arguments(values, escape=True)
    assert whole
    assert shown["v"] == {"__str__": repr(text)}
    assert hidden not in json.dumps(shown, ensure_ascii=False)
    assert shown["k"] == {"__dict__": {repr(text): 1}}
    assert shown["p"]["__value__"] == {"__str__": repr(text)}
    spelled = repr(text)  # printable: the text of an escape, not the character
    assert shown_arguments({"v": spelled}, escape=True)[0]["v"] == spelled
    visible = "two\nlines\tand tabs é 😀"
    assert shown_arguments({"v": visible}, escape=True)[0]["v"] == visible
    assert shown_arguments(values)[0]["v"] == text  # a decision log keeps the string


def test_a_request_shows_the_escape_of_a_hidden_character() -> None:
    """Through the guard: the request an approver reads holds the escape."""
    _configure("ops.send")
    send = d2_guard("ops.send")(lambda name: "sent")
    set_user("agent-7", roles=["agent"])
    request = _held(lambda: send("report\u202etxt.exe"))
    assert request.arguments == {"name": {"__str__": "'report\\u202etxt.exe'"}}
