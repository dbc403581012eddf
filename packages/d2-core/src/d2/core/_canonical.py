"""The canonical form of a call's arguments: which call an approval is for.

:func:`canonical_arguments` writes bound arguments as exact JSON, every value
tagged with its type. The promise, and how each part keeps it:

* Two values get one form only when they are the same type with the same state,
  all the way down, in the same order, sharing the same objects the same way
  (``move(a, a)`` is not ``move(a, copy(a))``: a container or an instance of an
  app's class, met again, is written as a reference to its first meeting, as the
  view shows it; see :class:`_Walk`). An instance that holds nothing but its
  identity (a sentinel) has no canonical form: two would be one call. A mapping
  is written in its own order (a tool may follow it); a set, which has none, by
  the sorted forms of its items.
* A type is what the interpreter says, never what a value or its class claims:
  ``type(v)``, never ``v.__class__``; a class's layout, namespace, MRO and name
  read through ``type``'s own descriptors, never attributes a metaclass defines;
  tables of types keyed by ``id``, never by ``==`` or ``hash``.
* State is read where attribute access finds it: the instance dictionary through
  the interpreter's own descriptor, each slot through its own member descriptor,
  a built-in base's value through the built-in's methods.
* A class is named by its module and qualname only when that name leads to it
  (a class passed as a value too: a class method's ``cls``); a value
  whose state Python does not show (a class written in C, a callable) or whose
  class has no such name has no canonical form (:class:`NoCanonicalForm`): a call
  with it is never approved.
* The work is bounded: each object is read once per meeting, and a value larger
  than :data:`_BUDGET` values or :data:`_MAX_TEXT` bytes of canonical text (counted
  by size: a big int, a long ``Decimal``, a string by its escaped length, bytes)
  has no canonical form. A string or bytes longer than :data:`_LONG` is written as
  its SHA-256, hashed once per object per digest (``[s] * 10`` is not written ten
  times).

It imports nothing of D2.
"""

from __future__ import annotations

import collections
import enum
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterable
from typing import Any

from ._atoms import atom_text, is_python_atom
from ._classes import (
    _HEAP_TYPE,
    _MISSING,
    NoCanonicalForm,
    _base,
    _compared_by_identity,
    _declared_slots,
    _dictoffset,
    _entry,
    _enum_member,
    _flags,
    _instance_dict,
    _known,
    _layout_is_python,
    _module,
    _name_of,
    _named,
    _overridden,
    _qualname,
    _qualname_of,
    _space,
    _stdlib,
)

__all__ = ["NoCanonicalForm", "canonical_arguments"]

_MAX_DEPTH = 64
# values read per digest: five per value the view can show whole (a call it cannot show
# whole is never approved), for keys and the sort keys of sets
_BUDGET = 500_000
_MAX_TEXT = 128 * 1024 * 1024  # bytes of canonical text written per digest, at most
# items of sets sorted per digest (each by a canonical text of its own, the costliest
# work per value): the view shows 100,000 values at most, so no approvable call sorts more
_MAX_SORTED = 100_000
# a string, bytes or bytearray longer than this is written as the SHA-256 of its content
# (hashed once per object per digest): a big string met many times is not rewritten
_LONG = 4096
_UNSET = {"__t": "unset"}  # a slot that holds nothing (no value has this form)
_NOTHING = {"__t": "dict", "v": []}  # an empty instance dictionary

# Exact stdlib value types written in C, digested by an exact text: (module, qualname)
# -> how. Looked up by name so that digesting never imports a module the app did not.
# (Paths, ipaddress values, Fraction and UUID are written in Python: their text is
# given only when it describes the whole value, by _atoms.atom_text.)
_ATOMS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("datetime", "date"): lambda v: v.isoformat(),
    ("datetime", "timedelta"): lambda v: [v.days, v.seconds, v.microseconds],
    ("datetime", "timezone"): repr,  # offset and name
    ("decimal", "Decimal"): str,  # exact: sign, digits, exponent, NaN payloads
}


class _Walk:
    """One digest's memory of the containers and instances with state met so far,
    in the order met: meeting one again writes a reference to the first meeting,
    so ``move(a, a)`` and ``move(a, copy(a))`` differ. The objects are kept (an id
    is never reused while the walk lives). A fresh walk (:meth:`fresh`, to sort a
    set's items by what they hold) shares the digest's budget and its memo of
    those sort keys."""

    __slots__ = ("budget", "longs", "misses", "names", "seen", "texts")

    def __init__(self, parent: _Walk | None = None) -> None:
        self.seen: dict[int, tuple[int, Any]] = {}
        self.texts: dict[int, tuple[str, Any]] = {} if parent is None else parent.texts
        # the form of each long string or bytes met (_long), hashed once per digest
        self.longs: dict[int, tuple[Any, Any]] = {} if parent is None else parent.longs
        # whether each class met leads to itself by its name (_named), once per digest
        self.names: dict[int, tuple[bool, type]] = {} if parent is None else parent.names
        # the classes of modules not loaded (_known), not looked for again
        self.misses: set[tuple[str, str]] = set() if parent is None else parent.misses
        # values left, bytes of text left, set items left to sort: shared by every
        # walk of one digest
        self.budget: list[int] = (
            [_BUDGET, _MAX_TEXT, _MAX_SORTED] if parent is None else parent.budget
        )

    def fresh(self) -> _Walk:
        """A walk that has met nothing, sharing this digest's budget and memo."""
        return _Walk(self)

    def spend(self, size: int = 0) -> None:
        """Count one value, and ``size`` bytes of the text it writes, against the
        digest's budget. Immutable values are written in full at every meeting (a
        list repeating one big int writes it each time), so text counts by size."""
        budget = self.budget
        budget[0] -= 1
        budget[1] -= size
        if budget[0] < 0 or budget[1] < 0:
            raise NoCanonicalForm(
                f"the arguments are too large to digest (over {_BUDGET:,} values or "
                f"{_MAX_TEXT // 2**20} MiB of text): pass a smaller value, or a "
                "reference to the data instead of the data"
            )

    def sort(self, count: int) -> None:
        """Count ``count`` items of a set against the digest's budget of items to
        sort, before any is read: a set too large is refused at once."""
        self.budget[2] -= count
        if self.budget[2] < 0:
            raise NoCanonicalForm(
                f"the arguments are too large to digest (over {_MAX_SORTED:,} items of "
                "sets to order): pass a smaller value, or a reference to the data "
                "instead of the data"
            )

    def meet(self, value: Any) -> Any:
        """``None`` the first time ``value`` is met, else its reference."""
        seen = self.seen.get(id(value))
        if seen is not None:
            return {"__t": "ref", "v": seen[0]}
        self.seen[id(value)] = (len(self.seen), value)
        return None


# one encoder (json.dumps with options makes a new one per call: a set's every item)
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_NON_ASCII = re.compile("[^\x00-\x7e]+")  # DEL too, as ensure_ascii escapes it
_SURROGATE = re.compile("[\ud800-\udfff]")
_escape_run: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _ascii_run(found: re.Match[str]) -> str:
    """A run of DEL and non-ASCII characters as JSON's ASCII escapes (``ensure_ascii``:
    lowercase hex, a character beyond U+FFFF as its surrogate pair), except that a
    lone surrogate is written in uppercase hex (``\\uD83D``): JSON's encoder never
    writes that, so ``"\\U0001f600"`` and the two lone surrogates
    ``"\\ud83d\\ude00"`` are two texts (with ``ensure_ascii`` they were one)."""
    run = found.group()
    if _SURROGATE.search(run) is None:
        return _escape_run(run)[1:-1]
    return "".join(
        f"\\u{ord(ch):04X}" if "\ud800" <= ch <= "\udfff" else _escape_run(ch)[1:-1] for ch in run
    )


def ascii_json(text: str) -> str:
    """JSON text written with ``ensure_ascii=False`` made ASCII: what
    ``ensure_ascii=True`` writes, but lone surrogates apart (see :func:`_ascii_run`):
    two different strings never give one text."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _NON_ASCII.sub(_ascii_run, text)


def _text(value: Any, depth: int, walk: _Walk) -> str:
    return ascii_json(_encode(_canon(value, depth, walk)))


def _in_order(items: Collection[Any], depth: int, walk: _Walk) -> list[tuple[str, Any]]:
    """``items`` with the canonical text of each (met afresh: what it holds, never
    where else it is referenced; each item's text computed once per digest),
    sorted by that text: the order in which the items of a set are digested. The
    items count against the digest's budget of items to sort first."""
    walk.sort(len(items))
    memo = walk.texts
    keyed = []
    for item in items:
        known = memo.get(id(item))
        if known is None:
            known = memo[id(item)] = (_text(item, depth, walk.fresh()), item)  # (item kept)
        keyed.append((known[0], item))
    keyed.sort(key=lambda entry: entry[0])
    return keyed


def _int(value: int) -> Any:
    return value if -(2**63) <= value < 2**63 else {"__t": "int", "v": format(value, "x")}


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    import struct  # off the cold path: NaN and infinities only

    return {"__t": "float", "v": struct.pack(">d", value).hex()}  # the sign of a NaN too


def _entries(value: dict[Any, Any]) -> dict[Any, Any]:
    """What a dict (of any subclass) holds, read from its own storage in its own
    order: never through ``keys()``, ``__iter__`` or ``__getitem__``, which a
    subclass may override (werkzeug's ``MultiDict`` answers ``md[key]`` with the
    first of the values it keeps per key)."""
    return dict(dict.items(value))


def _dict(value: dict[Any, Any], depth: int, walk: _Walk) -> Any:
    """A dict in its own order: a tool may act in that order."""
    return _pairs(dict.items(value), depth, walk)


def _pairs(items: Iterable[tuple[Any, Any]], depth: int, walk: _Walk) -> Any:
    """A dict's entries (``items``, in order), as a dict is written."""
    return {
        "__t": "dict",
        "v": [[_canon(k, depth, walk), _canon(x, depth, walk)] for k, x in items],
    }


_odict_items = collections.OrderedDict.items  # its own linked order (C: no override)


def _odict(value: Any, depth: int, walk: _Walk) -> Any:
    """An exact ``OrderedDict``: its entries in its own linked order (which
    ``move_to_end`` changes and the dict storage does not show) and its instance
    ``__dict__`` (an ``OrderedDict``, unlike a dict, takes attributes). A subclass
    is refused (:func:`_instance`: ``OrderedDict`` is written in C)."""
    entries = [[_canon(k, depth, walk), _canon(x, depth, walk)] for k, x in _odict_items(value)]
    attributes = _instance_dict(value, collections.OrderedDict)
    seen = walk.meet(attributes)  # the dict itself may be passed too: vars(od)
    state = seen if seen is not None else _dict(attributes, depth, walk)
    return {"__t": "odict", "v": entries, "s": state}


def _set(tag: str, value: Any, depth: int, walk: _Walk) -> Any:
    return {"__t": tag, "v": [_canon(x, depth, walk) for _, x in _in_order(value, depth, walk)]}


def _defaultdict(value: Any, depth: int, walk: _Walk) -> Any:
    factory = value.default_factory
    if factory is not None and id(factory) not in _EXACT:  # a function: its behaviour is code
        raise NoCanonicalForm("a defaultdict whose default_factory is not a built-in type")
    name = None if factory is None else _name_of(factory)
    return {"__t": "defaultdict", "f": name, "v": _dict(value, depth, walk)}


def _zone(value: Any) -> Any:
    """A ``ZoneInfo``, by its key, only when it is the zone that key names:
    ``ZoneInfo.from_file(f, key=...)`` (and ``no_cache``) accept any key."""
    key = value.key
    try:
        named = type(key) is str and type(value)(key) is value
    except Exception:  # no such zone
        named = False
    if not named:
        raise NoCanonicalForm(
            "a ZoneInfo not made by ZoneInfo(key) (ZoneInfo.from_file, ZoneInfo.no_cache) "
            "has no canonical form: its key may not name the zone it holds"
        )
    return {"__t": "zoneinfo.ZoneInfo", "v": key}


def _clock(value: Any, depth: int, walk: _Walk) -> Any:
    """A datetime or time: its fields, ``fold`` and its time zone (``None``, a
    ``datetime.timezone`` or a ``ZoneInfo``; any other is refused)."""
    zone = value.tzinfo
    return {
        "__t": _qualname(type(value)),
        "v": value.replace(tzinfo=None).isoformat(),
        "f": value.fold,
        "z": None if zone is None else _canon(zone, depth, walk),
    }


def _atom(value: Any, cls: type, how: Callable[[Any], Any]) -> Any:
    """A standard-library value written in C (a date, a ``Decimal``...): its exact
    text, which its class's own code writes from state no app can set."""
    return {"__t": _qualname(cls), "v": how(value)}


def _enum(value: enum.Enum, cls: type, depth: int, walk: _Walk) -> Any:
    """An enum member: its class and name (members are singletons). Only a member
    its class lists is one, found by name and identity (:func:`_enum_member`): an
    object whose class merely says it is an enum (a crafted ``__mro__``) or made by
    ``object.__new__`` has no canonical form, and its value is never hashed."""
    member, name, raw = _enum_member(value, cls)
    if not member:
        raise NoCanonicalForm(f"a {_qualname(cls)} value is not a member of its enum")
    try:
        inner = _canon(raw, depth, walk)
    except NoCanonicalForm:  # members are singletons: the name tells them apart
        inner = None
    return {"__t": f"enum:{_named(cls, walk.names)}", "n": name, "v": inner}


_EXACT: dict[int, Callable[[Any, int, _Walk], Any]] = {
    id(type(None)): lambda v, d, w: None,
    id(str): lambda v, d, w: v,
    id(bool): lambda v, d, w: v,
    id(int): lambda v, d, w: _int(v),
    id(float): lambda v, d, w: _float(v),
    id(complex): lambda v, d, w: {"__t": "complex", "v": [_float(v.real), _float(v.imag)]},
    id(list): lambda v, d, w: [_canon(x, d, w) for x in v],
    id(tuple): lambda v, d, w: {"__t": "tuple", "v": [_canon(x, d, w) for x in v]},
    id(dict): _dict,
    id(set): lambda v, d, w: _set("set", v, d, w),
    id(frozenset): lambda v, d, w: _set("frozenset", v, d, w),
    id(bytes): lambda v, d, w: {"__t": "bytes", "v": v.hex()},
    id(bytearray): lambda v, d, w: {"__t": "bytearray", "v": bytes(v).hex()},
    id(collections.OrderedDict): lambda v, d, w: _odict(v, d, w),
    id(collections.defaultdict): _defaultdict,
}
# exact container types: a second meeting is a reference (see _Walk); a tuple or
# frozenset too (immutable, but expanded at each meeting a small value of shared
# tuples would have exponentially many leaves)
_REFERENCED = frozenset(
    id(t)
    for t in (
        list,
        tuple,
        dict,
        set,
        frozenset,
        bytearray,
        collections.OrderedDict,
        collections.defaultdict,
    )
)


def _str_size(value: str) -> int:
    """Bytes of ASCII JSON ``value`` is written as, at most: printable ASCII
    as itself (a quote or backslash doubles), any other character escaped
    (``\\u00e9``: 6 bytes; an astral one as two: 12)."""
    if value.isascii():
        if not value.isprintable():  # a control character: 6 bytes (\\u0001)
            return 6 * len(value)
        return 2 * len(value) if '"' in value or "\\" in value else len(value)
    return 12 * len(value) if ord(max(value)) > 0xFFFF else 6 * len(value)


_LONGS = {id(str): "str#", id(bytes): "bytes#", id(bytearray): "bytearray#"}


def _long(value: Any, key: int, walk: _Walk) -> Any:
    """A long string, bytes or bytearray: its type and the SHA-256 of its content (a
    string's as UTF-8, a lone surrogate as itself: two different strings never give
    one text), hashed once per object per digest; its length counts once against
    the digest's budget of text."""
    known = walk.longs.get(id(value))
    if known is not None:
        walk.spend()
        return known[0]
    walk.spend(len(value))
    import hashlib  # off the cold path: loaded on first use

    data = value.encode("utf-8", "surrogatepass") if key == id(str) else value
    form = {"__t": _LONGS[key], "v": hashlib.sha256(data).hexdigest()}
    walk.longs[id(value)] = (form, value)  # (the value kept: its id is never reused)
    return form


# exact types whose text grows with the value: the bytes of text each writes
_SIZED: dict[int, Callable[[Any], int]] = {
    id(str): _str_size,
    id(int): lambda v: v.bit_length() // 4,  # hex digits (beyond 2**63)
    id(bytes): lambda v: 2 * len(v),
    id(bytearray): lambda v: 2 * len(v),
}

# Built-in types an app's class may extend: digested as their built-in value (read
# through the built-in's own methods, never an override) plus the instance's state;
# a class that overrides how the built-in value reads (_overridden) is refused.
_BUILTIN_VALUE: dict[int, Callable[[Any], Any]] = {
    id(str): str.__str__,
    id(int): int.__int__,
    id(float): float.__float__,
    id(complex): lambda v: complex(complex.real.__get__(v), complex.imag.__get__(v)),
    id(list): list.copy,
    id(tuple): lambda v: tuple(tuple.__iter__(v)),
    id(dict): _entries,
    id(set): set.copy,
    id(frozenset): frozenset.copy,
    # from their own storage: never through the buffer protocol, which a subclass
    # may define in Python (__buffer__, 3.12+)
    id(bytes): lambda v: bytes.__getitem__(v, slice(None)),
    id(bytearray): bytearray.copy,
}


def _state(value: Any, chain: list[type], depth: int, walk: _Walk, hide: str = "") -> Any:
    """Everything an instance holds: its ``__dict__`` and every slot of the classes
    of ``chain`` (an unset slot as such). ``hide``: a ``__dict__`` key left out."""
    state: dict[str, Any] = {}
    cls = type(value)
    if _dictoffset(cls):
        found = _instance_dict(value, cls)
        seen = walk.meet(found)  # the dict itself may be passed too: vars(a)
        if seen is not None:
            state["__dict__"] = seen
        else:
            # hide: a key left out (by exact strings: a key of the app's type is never
            # compared, nor hashed into a new dict)
            items: Iterable[tuple[Any, Any]] = dict.items(found)
            if hide:
                items = [(k, v) for k, v in items if not (type(k) is str and k == hide)]
            state["__dict__"] = _pairs(items, depth, walk)
    for i, klass in enumerate(chain):
        space = _space(klass)
        for name in _declared_slots(klass):
            try:
                held = space[name].__get__(value, cls)
            except AttributeError:
                state[f"{i}:{name}"] = _UNSET
                continue
            state[f"{i}:{name}"] = _canon(held, depth, walk)
    return state


def _secret_base(misses: set[tuple[str, str]] | None = None) -> type | None:
    """pydantic's secret base class, when pydantic is loaded (else no value is one).
    ``misses``: see :func:`_known`."""
    return _known("pydantic.types", "_SecretBase", misses)


_PROCESS_KEY = os.urandom(32)  # this process's key when D2_APPROVAL_SECRET_KEY is unset
_KEY: list[bytes] = []  # the key in use, read once


def _secret_key() -> bytes:
    """The key a pydantic secret is digested with (HMAC-SHA256): the call digest is
    kept in the store beside the request (which shows every other part of the
    call), so an unkeyed hash of a PIN or a password would be found by guessing.
    ``D2_APPROVAL_SECRET_KEY`` (the same in every process of the app, never in the
    store) when set, else a random key of this process: a call with a secret is
    then approvable only when retried in the process that asked (or a child it
    forked)."""
    if not _KEY:
        configured = os.environ.get("D2_APPROVAL_SECRET_KEY", "")
        _KEY.append(configured.encode() if configured else _PROCESS_KEY)
    return _KEY[0]


def _instance(value: Any, cls: type, depth: int, walk: _Walk) -> Any:
    """An instance of an app's class: its type and its whole state. Accepted only
    when every class between it and ``object`` (or the built-in type it extends)
    keeps its state where Python shows it, and the class is the one its name
    leads to."""
    chain: list[type] = []
    base: type = cls
    while base is not object and id(base) not in _BUILTIN_VALUE:
        if not _layout_is_python(base):
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value has no canonical form (its class "
                f"{_qualname(base)} keeps state Python does not show)"
            )
        chain.append(base)
        base = _base(base) or object  # (never None past the layout check)
    if base is object and callable(value):
        raise NoCanonicalForm(f"a {_qualname(cls)} value is callable: its behaviour is code")
    if base is not object:
        overridden = _overridden(cls, base)
        if overridden is not None:
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value has no canonical form: its class defines "
                f"{overridden}, so it may not read as the {_name_of(base)} it holds (which "
                f"is what an approver is shown); pass a plain {_name_of(base)}"
            )
    name = _named(cls, walk.names)
    seen = walk.meet(value)  # every object met again, as the view shows it
    if seen is not None:
        return seen
    secret = _secret_base(walk.misses)
    if secret is not None and issubclass(cls, secret):  # digested, never in the text
        import hashlib  # off the cold path: loaded on first use

        hidden = _entry(_instance_dict(value, cls), "_secret_value")
        if hidden is _MISSING:
            raise NoCanonicalForm(f"a {name} value holds no secret value")
        import hmac

        text = _text(hidden, depth, walk).encode()
        digest = hmac.new(_secret_key(), text, hashlib.sha256).hexdigest()
        return {
            "__t": f"secret:{name}",
            "h": digest,
            "v": _state(value, chain, depth, walk, hide="_secret_value"),
        }
    state = _state(value, chain, depth, walk)
    if base is object:
        slots = [held for key, held in state.items() if key != "__dict__"]
        if (
            state.get("__dict__", _NOTHING) == _NOTHING
            and all(held is _UNSET for held in slots)
            and _compared_by_identity(cls)
        ):
            raise NoCanonicalForm(
                f"a {_qualname(cls)} value holds nothing but its identity (no attribute, no "
                "slot set, equal only to itself): two such objects would be one call; pass "
                "an enum member instead"
            )
        return {"__t": f"object:{name}", "v": state}
    inner = _canon(_BUILTIN_VALUE[id(base)](value), depth, walk)
    return {"__t": f"{_name_of(base)}:{name}", "v": inner, "s": state}


def _canon(value: Any, depth: int, walk: _Walk) -> Any:
    """An exact, typed stand-in for ``value`` (JSON values; other types tagged
    with ``__t``) or :class:`NoCanonicalForm`. Two values get the same stand-in
    only when they are the same type with the same content, all the way down,
    sharing the same objects the same way."""
    if depth > _MAX_DEPTH:
        raise NoCanonicalForm("nested too deeply")
    depth += 1
    cls = type(value)
    key = id(cls)
    exact = _EXACT.get(key)
    if exact is not None:
        if key in _REFERENCED:
            seen = walk.meet(value)
            if seen is not None:
                return seen
        if key in _LONGS and len(value) > _LONG:
            return _long(value, key, walk)
        sized = _SIZED.get(key)
        walk.spend(0 if sized is None else sized(value))
        return exact(value, depth, walk)
    walk.spend()
    if issubclass(cls, type):  # a class as a value (a class method's cls): by its name
        return {"__t": "class", "v": _named(value, walk.names)}
    module, qualname = _module(cls), _qualname_of(cls)
    if type(module) is str and type(qualname) is str:
        how = _ATOMS.get((module, qualname))
        if how is not None and _stdlib(cls, module, qualname):
            found = _atom(value, cls, how)
        elif is_python_atom(cls):  # a path, an address, a Fraction, a UUID: checked whole
            found = {"__t": _qualname(cls), "v": atom_text(value, cls)}
        else:
            found = None
        if found is not None:
            text = found["v"]
            walk.spend(len(text) if type(text) is str else 0)  # a Decimal of a million digits
            return found
    if _stdlib(cls, "datetime", "datetime", "time"):
        return _clock(value, depth, walk)
    if _stdlib(cls, "zoneinfo", "ZoneInfo"):
        return _zone(value)
    if issubclass(cls, enum.Enum):  # the real class: a __class__ property cannot pose
        return _enum(value, cls, depth, walk)
    return _instance(value, cls, depth, walk)


def canonical_arguments(arguments: Any) -> str:
    """Exact canonical JSON of bound arguments (sorted keys, ASCII, types tagged,
    an object met again as a reference to its first meeting), as digested by
    :func:`call_digest`. Raises :class:`NoCanonicalForm` for a value whose state
    cannot be read exactly (a file, a lock, a socket, a function, an instance of a
    class written in C, of a class its name does not lead to...)."""
    try:
        return _text(arguments, 0, _Walk())
    except NoCanonicalForm:
        raise
    except Exception as exc:  # anything unexpected: no approval can be tied to it
        raise NoCanonicalForm(_failure(exc)) from None


def _failure(exc: Exception) -> str:
    """What went wrong, for a message: an exception of the interpreter's with text
    arguments is written out; any other only by its class (formatting an object of
    the app's would run its code)."""
    cls = type(exc)
    name = _qualname(cls)
    if not _flags(cls) & _HEAP_TYPE and all(type(arg) is str for arg in exc.args):
        return f"{name}: {exc}"
    return name
