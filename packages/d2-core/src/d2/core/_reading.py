"""One reading of a call's arguments: what the digest binds and the approver is shown.

The digest (:mod:`d2.core._canonical`) and the approver's view
(:mod:`d2.core._display`) each walk the values they are given. Walked twice over the
live arguments, they could read two different states: another thread (or a
finalizer run by the collector) that changes an argument between the two walks
gets one call shown and another digested. :func:`read_once` reads the live
arguments once and gives a private copy that nothing else holds; the digest and the
view both read that copy, so they describe the same state. The tool still receives
the live arguments: the approved retry digests them again, and the check before the
tool runs (``Evaluator._verify``) compares that digest with the approved one.

The copy is read as the digest reads values (:mod:`d2.core._classes`) and runs no
code of the app:

* exact built-in values are copied (containers item by item, each container read
  in one step of the interpreter: ``list.copy``, ``dict.items``...), immutable
  scalars shared; a container or object met again is copied once (sharing, and
  cycles, are kept);
* an instance of an app's class is made with its built-in base's ``__new__`` (never
  its own), and its ``__dict__`` and slots are set through the interpreter's own
  descriptors;
* values the digest reads by name and identity (classes, enum members, the
  standard library's immutable values written in C) are shared; the standard
  library's values written in Python (paths, addresses...) are made afresh from
  their checked text (:func:`d2.core._atoms.atom_copy`);
* a dict key or set item is copied only when hashing the copy runs no code of the
  app (its class's ``__hash__`` and ``__eq__`` are the interpreter's or the standard
  library's); any other value, and any value the digest cannot read, has no
  canonical form (:class:`NoCanonicalForm`).

The copy counts the values it reads against the digest's budget and depth: a value
too large or too deep is refused before the digest runs.

It imports nothing of D2 but :mod:`d2.core._classes`, :mod:`d2.core._atoms` and
:mod:`d2.core._canonical` (its bounds).
"""

from __future__ import annotations

import collections
import enum
import types
from collections.abc import Callable
from typing import Any

from ._atoms import atom_copy, is_python_atom
from ._canonical import _BUDGET, _MAX_DEPTH
from ._classes import (
    _HEAP_TYPE,
    _MISSING,
    NoCanonicalForm,
    _base,
    _declared_slots,
    _dict_descriptor,
    _dictoffset,
    _enum_member,
    _flags,
    _instance_dict,
    _layout_is_python,
    _mro,
    _qualname,
    _space,
    _stdlib,
)

__all__ = ["read_once"]

# immutable exact values: shared (they hold no other object)
_SHARED = frozenset(id(t) for t in (type(None), str, bool, int, float, complex, bytes))
# the standard library's immutable values written in C, shared: (module, qualname)
_C_VALUES = (
    ("datetime", "date"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("datetime", "datetime"),
    ("datetime", "time"),
    ("decimal", "Decimal"),
    ("zoneinfo", "ZoneInfo"),
)
_odict_items = collections.OrderedDict.items
_factory = vars(collections.defaultdict)["default_factory"].__get__
_set_item = dict.__setitem__


_Layout = tuple[type, list[Any], Any]  # built-in base, slot descriptors, __dict__ descriptor


class _Reading:
    """One snapshot's copies so far (by the id of the live object, which is kept:
    an id is never reused while the reading lives) and its budget of values."""

    __slots__ = ("classes", "left", "memo")

    def __init__(self) -> None:
        self.left = _BUDGET
        self.memo: dict[int, tuple[Any, Any]] = {}
        self.classes: dict[int, tuple[type, _Layout]] = {}  # _layout, once per class

    def keep(self, value: Any, copy: Any) -> Any:
        self.memo[id(value)] = (copy, value)
        return copy


def _too_large() -> NoCanonicalForm:
    return NoCanonicalForm(
        f"the arguments are too large to digest (over {_BUDGET:,} values): pass a smaller "
        "value, or a reference to the data instead of the data"
    )


# the built-in types whose __hash__ and __eq__ a class may hold a copy of (an enum with
# a data type does): they read the value's own built-in state only
_PLAIN_HASHES = (object, int, str, bytes, float, complex, tuple, frozenset)


def _hash_is_safe(cls: type) -> bool:
    """Whether hashing and comparing a value of ``cls`` runs no code of the app: the
    ``__hash__`` and ``__eq__`` it finds first in its MRO are written in C, or are
    the standard library's (an enum's, a path's, an address's...), even when a class
    of the app holds a copy of them (an enum class may)."""
    trusted: list[type] = [*_PLAIN_HASHES, enum.Enum]
    if is_python_atom(cls):
        trusted.extend(_mro(cls))
    for name in ("__hash__", "__eq__"):
        for klass in _mro(cls):
            held = _space(klass).get(name, _MISSING)
            if held is _MISSING:
                continue
            if not (
                not _flags(klass) & _HEAP_TYPE
                or held is None  # unhashable: hashing it fails (refused), runs nothing
                or any(klass is known or held is _space(known).get(name) for known in trusted)
            ):
                return False
            break
    return True


def _key(value: Any, depth: int, reading: _Reading) -> Any:
    """The copy of a dict key or a set item: a copy that can be hashed without the
    app's code (a tuple's items too)."""
    copy = _copy(value, depth, reading)
    _hashable(copy, depth)
    return copy


def _hashable(copy: Any, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise NoCanonicalForm("nested too deeply")
    cls = type(copy)
    if id(cls) in _SHARED:
        return
    if not _hash_is_safe(cls):
        raise NoCanonicalForm(
            f"a dict key or set item of class {_qualname(cls)} defines its own __hash__ or "
            "__eq__: reading it once for the digest and the view would run the app's code; "
            "use a key of a built-in type (a str, an int, a tuple of them) or an enum member"
        )
    if issubclass(cls, tuple):  # its hash is its items' (a frozenset's: stored)
        for item in tuple.__iter__(copy):
            _hashable(item, depth + 1)


def _list(value: list[Any], depth: int, reading: _Reading) -> Any:
    copy: list[Any] = reading.keep(value, [])
    copy.extend([_copy(item, depth, reading) for item in list.copy(value)])
    return copy


def _tuple(value: tuple[Any, ...], depth: int, reading: _Reading) -> Any:
    items = [_copy(item, depth, reading) for item in value]
    known = reading.memo.get(id(value))  # made while its items were (a cycle)
    return known[0] if known is not None else reading.keep(value, tuple(items))


def _entries(items: list[tuple[Any, Any]], copy: Any, depth: int, reading: _Reading) -> Any:
    for key, held in items:
        _set_item(copy, _key(key, depth, reading), _copy(held, depth, reading))
    return copy


def _dict(value: dict[Any, Any], depth: int, reading: _Reading) -> Any:
    return _entries(list(dict.items(value)), reading.keep(value, {}), depth, reading)


def _set(value: set[Any], depth: int, reading: _Reading) -> Any:
    copy: set[Any] = reading.keep(value, set())
    for item in list(set.copy(value)):
        set.add(copy, _key(item, depth, reading))
    return copy


def _frozenset(value: frozenset[Any], depth: int, reading: _Reading) -> Any:
    items = [_key(item, depth, reading) for item in list(frozenset.__iter__(value))]
    known = reading.memo.get(id(value))
    return known[0] if known is not None else reading.keep(value, frozenset(items))


def _attributes(value: Any, copy: Any, cls: type, depth: int, reading: _Reading) -> None:
    """Set the copy's ``__dict__`` to a copy of the value's (through the
    interpreter's own descriptor, as attribute access finds it)."""
    found = _instance_dict(value, cls)
    mine = _copy(found, depth, reading)  # (the dict itself may be passed too: vars(a))
    descriptor = _dict_descriptor(cls)
    if descriptor is None or type(mine) is not dict:
        raise NoCanonicalForm(f"a {_qualname(cls)} value keeps its attributes out of reach")
    descriptor.__set__(copy, mine)


def _odict(value: Any, depth: int, reading: _Reading) -> Any:
    copy = reading.keep(value, collections.OrderedDict())
    for key, held in list(_odict_items(value)):
        copy[_key(key, depth, reading)] = _copy(held, depth, reading)
    _attributes(value, copy, collections.OrderedDict, depth, reading)
    return copy


def _defaultdict(value: Any, depth: int, reading: _Reading) -> Any:
    factory = _factory(value)
    if factory is not None and id(factory) not in _EXACT and id(factory) not in _SHARED:
        raise NoCanonicalForm("a defaultdict whose default_factory is not a built-in type")
    copy = reading.keep(value, collections.defaultdict(factory))
    return _entries(list(dict.items(value)), copy, depth, reading)


_EXACT: dict[int, Callable[[Any, int, _Reading], Any]] = {
    id(list): _list,
    id(tuple): _tuple,
    id(dict): _dict,
    id(set): _set,
    id(frozenset): _frozenset,
    id(bytearray): lambda v, d, r: r.keep(v, bytearray.copy(v)),
    id(collections.OrderedDict): _odict,
    id(collections.defaultdict): _defaultdict,
}


def _made(value: Any, cls: type, base: type, depth: int, reading: _Reading) -> Any:
    """A new ``cls`` holding a copy of the built-in value of ``value`` (made by the
    built-in's own ``__new__`` and methods: never the class's own), kept."""
    if base is object:
        return reading.keep(value, object.__new__(cls))
    if base is list:
        copy = reading.keep(value, list.__new__(cls))
        list.extend(copy, [_copy(item, depth, reading) for item in list.copy(value)])
        return copy
    if base is dict:
        copy = reading.keep(value, dict.__new__(cls))
        return _entries(list(dict.items(value)), copy, depth, reading)
    if base is set:
        copy = reading.keep(value, set.__new__(cls))
        for item in list(set.copy(value)):
            set.add(copy, _key(item, depth, reading))
        return copy
    if base is bytearray:
        copy = reading.keep(value, bytearray.__new__(cls))
        bytearray.extend(copy, bytearray.copy(value))
        return copy
    if base is tuple or base is frozenset:
        copy_item = _copy if base is tuple else _key
        items = [copy_item(item, depth, reading) for item in list(base.__iter__(value))]
        known = reading.memo.get(id(value))
        if known is not None:
            return known[0]
        return reading.keep(value, base.__new__(cls, items))
    raw: Any
    if base is complex:
        raw = (complex.real.__get__(value), complex.imag.__get__(value))
        return reading.keep(value, complex.__new__(cls, *raw))
    reads: dict[type, Callable[[Any], Any]] = {
        str: str.__str__,
        int: int.__int__,
        float: float.__float__,
        bytes: lambda v: bytes.__getitem__(v, slice(None)),
    }
    raw = reads[base](value)
    return reading.keep(value, base.__new__(cls, raw))


_BASES = frozenset(
    id(t) for t in (str, int, float, complex, bytes, bytearray, list, tuple, dict, set, frozenset)
)


def _instance(value: Any, cls: type, depth: int, reading: _Reading) -> Any:
    """A copy of an instance of an app's class: the same class, a copy of its
    built-in value, its ``__dict__`` and every slot it has set."""
    base, slots, descriptor = _layout(cls, reading)
    try:
        copy = _made(value, cls, base, depth, reading)
    except NoCanonicalForm:
        raise
    except Exception:  # an abstract class, a base that refuses the copy
        raise NoCanonicalForm(f"a {_qualname(cls)} value cannot be read once") from None
    if descriptor is not None:  # its __dict__: a copy, set where attribute access finds it
        mine = _copy(_instance_dict(value, cls), depth, reading)  # (vars(a) may be passed too)
        if type(mine) is not dict:
            raise NoCanonicalForm(f"a {_qualname(cls)} value keeps its attributes out of reach")
        descriptor.__set__(copy, mine)
    for held in slots:
        try:
            found = held.__get__(value, cls)
        except AttributeError:  # unset: left unset
            continue
        held.__set__(copy, _copy(found, depth, reading))
    return copy


def _layout(cls: type, reading: _Reading) -> _Layout:
    """The built-in base of ``cls`` (``object`` or a type of :data:`_BASES`), the
    member descriptors of every slot of its classes, and the descriptor of its
    ``__dict__`` (``None`` without one): once per class per reading. A class whose
    layout Python does not show, or whose ``__dict__`` is hidden, is refused."""
    known = reading.classes.get(id(cls))
    if known is not None and known[0] is cls:
        return known[1]
    slots: list[Any] = []
    base: type = cls
    while base is not object and id(base) not in _BASES:
        if not _layout_is_python(base):
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value has no canonical form (its class "
                f"{_qualname(base)} keeps state Python does not show)"
            )
        space = _space(base)
        for name in _declared_slots(base):
            held = space.get(name)
            if type(held) is not types.MemberDescriptorType:
                raise NoCanonicalForm(f"a {_qualname(cls)} value hides its slot {name}")
            slots.append(held)
        base = _base(base) or object
    descriptor = None
    if _dictoffset(cls):
        descriptor = _dict_descriptor(cls)
        if descriptor is None:
            raise NoCanonicalForm(f"a {_qualname(cls)} value keeps its attributes out of reach")
    found: _Layout = (base, slots, descriptor)
    reading.classes[id(cls)] = (cls, found)
    return found


def _c_value(cls: type) -> bool:
    return any(_stdlib(cls, module, name) for module, name in _C_VALUES)


def _copy(value: Any, depth: int, reading: _Reading) -> Any:
    """A private copy of ``value``: the same types, the same state, the same sharing."""
    if depth > _MAX_DEPTH:
        raise NoCanonicalForm("nested too deeply")
    reading.left -= 1
    if reading.left < 0:
        raise _too_large()
    cls = type(value)
    if id(cls) in _SHARED:
        return value
    known = reading.memo.get(id(value))
    if known is not None:
        return known[0]
    depth += 1
    exact = _EXACT.get(id(cls))
    if exact is not None:
        return exact(value, depth, reading)
    if issubclass(cls, type):  # a class: digested and shown by its name
        return value
    if issubclass(cls, enum.Enum):  # a member: by name and identity
        member, name, _ = _enum_member(value, cls)
        if not member or type(name) is not str:
            raise NoCanonicalForm(f"a {_qualname(cls)} value is not a member of its enum")
        return value
    if _c_value(cls):
        zone = getattr(value, "tzinfo", None)  # a datetime's or a time's (C: no code)
        if zone is not None and not _c_value(type(zone)):
            raise NoCanonicalForm(
                "a date or time in a time zone of the app's has no canonical form"
            )
        return value
    if is_python_atom(cls):
        return reading.keep(value, atom_copy(value, cls))
    return _instance(value, cls, depth, reading)


def read_once(arguments: dict[str, Any]) -> dict[str, Any]:
    """A private copy of bound ``arguments`` (names to values), read once, for the
    digest and the approver's view alike (see the module's description). Raises
    :class:`NoCanonicalForm` for a value that cannot be read without the app's code
    or that the digest could not read."""
    reading = _Reading()
    try:
        return {name: _copy(value, 0, reading) for name, value in dict.items(arguments)}
    except NoCanonicalForm:
        raise
    except RecursionError:
        raise NoCanonicalForm("nested too deeply") from None
    except Exception as exc:  # anything unexpected: no approval can be tied to it
        raise NoCanonicalForm(f"the arguments cannot be read once ({type(exc).__name__})") from None
