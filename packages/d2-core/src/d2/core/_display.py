"""What an approver and the decision log are shown of a call's arguments.

:func:`shown_arguments` turns bound arguments into plain JSON values and says
whether that display is *whole*: every part the digest reads is in it. A call is
approvable only when its display is whole (an approver never approves what they
were not shown). The promise, and how each part keeps it:

* The state the digest reads is shown: an object of an app's class (a dataclass,
  a plain class, a pydantic model) as its class name, every ``__dict__`` entry
  and every slot, read as the digest reads them (the interpreter's own
  descriptors, never the class's ``__repr__``, ``model_dump`` or field lists,
  which may leave state out); a subclass of a built-in type as its built-in value
  plus its attributes; a pydantic secret as ``**********``.
* Orders are the tool's: a dict (of any subclass) from its own storage, an
  ``OrderedDict`` in its own linked order.
* The work is bounded: at most :data:`_MAX_SHOWN` values and :data:`_MAX_TEXT`
  characters of text; the app's own code (``__repr__``, ``__iter__``,
  properties) is never run. Past a bound, or for a value whose state Python does
  not show (a class written in C), a marker is shown and the display is not whole.

It imports nothing of D2 but :mod:`d2.core._classes` (how the digest reads state)
and :mod:`d2.core._canonical`.
"""

from __future__ import annotations

import collections
import enum
import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ._atoms import atom_text, is_python_atom
from ._canonical import _secret_base
from ._classes import (
    _HEAP_TYPE,
    NoCanonicalForm,
    _declared_slots,
    _dictoffset,
    _enum_member,
    _flags,
    _instance_dict,
    _module,
    _mro,
    _namespace,
    _qualname_of,
)

__all__ = ["shown_arguments"]

_MAX_DEPTH = 64  # how deep a display goes
_MAX_SHOWN = 100_000  # values shown at most; past it, the rest of a container is _NOT_SHOWN
_MAX_TEXT = 16 * 1024 * 1024  # characters of text shown at most (strings, digits, hex)
_NOT_SHOWN = "<not shown: the arguments hold more than a display shows>"
_SAFE_INT = 2**53  # beyond this, JSON readers (JavaScript) round: shown as text
_SECRET = "**********"
_CYCLE = "<cycle: the value that contains it>"

# Standard-library values shown by their text (``str`` written in C: bounded by
# the value's own size), by exact class.
_TEXTUAL = {
    ("datetime", "date"),
    ("datetime", "datetime"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("fractions", "Fraction"),
    ("uuid", "UUID"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib._local", "PurePosixPath"),
    ("pathlib._local", "PureWindowsPath"),
    ("pathlib._local", "PosixPath"),
    ("pathlib._local", "WindowsPath"),
    ("ipaddress", "IPv4Address"),
    ("ipaddress", "IPv6Address"),
    ("ipaddress", "IPv4Network"),
    ("ipaddress", "IPv6Network"),
    ("ipaddress", "IPv4Interface"),
    ("ipaddress", "IPv6Interface"),
    ("zoneinfo", "ZoneInfo"),
}
_odict_items = collections.OrderedDict.items


class _View:
    """One display's budget (values and characters left), whether it is whole so
    far, and the containers on the path being shown (a cycle is shown as one)."""

    __slots__ = ("left", "path", "text", "whole")

    def __init__(self) -> None:
        self.left = _MAX_SHOWN
        self.text = _MAX_TEXT
        self.whole = True
        self.path: set[int] = set()

    def part(self, marker: str) -> str:
        """``marker`` in place of a part not shown: the display is not whole."""
        self.whole = False
        return marker

    def chars(self, text: str) -> str:
        """``text`` when the budget still has room for it, else the marker."""
        self.text -= len(text)
        return text if self.text >= 0 else self.part(_NOT_SHOWN)


def _int_text(value: int) -> Any:
    if -_SAFE_INT <= value <= _SAFE_INT:
        return value
    if value.bit_length() > 14_000:  # over Python's 4,300 decimal digits: shown in hex
        return hex(value)
    return str(value)  # the exact decimal digits


def _name(cls: type) -> str:
    return f"{_module(cls)}.{_qualname_of(cls)}"


def _key_text(key: Any, depth: int, view: _View) -> str:
    """A key of a mapping whose keys are not all strings: a string as its ``repr``
    (``'1'``, apart from ``1``), any other key as the JSON text of its display
    (never its ``repr``: the app's code, unbounded); bounded like any value."""
    if type(key) is str:
        view.left -= 1
        return view.chars(repr(key))
    return json.dumps(_shown(key, depth, view), ensure_ascii=False, separators=(",", ":"))


def _items(value: Any) -> list[tuple[Any, Any]] | None:
    """A dict's entries in the order a tool reads them, never through code the
    value's class defines (``None``: not a dict)."""
    if isinstance(value, collections.OrderedDict):
        return list(_odict_items(value))  # its own linked order (C)
    if isinstance(value, dict):
        return list(dict.items(value))  # its own storage (a subclass may hide entries)
    return None


def _listed(items: Iterable[Any], depth: int, view: _View) -> list[Any]:
    """The display of each item, in order; once the budget is spent, one marker for
    the rest (a display past its bound gives up at once: it is not whole)."""
    shown = []
    for item in items:
        if view.left <= 0:
            shown.append(view.part(_NOT_SHOWN))
            break
        shown.append(_shown(item, depth, view))
    return shown


def _shown_mapping(items: list[tuple[Any, Any]], depth: int, view: _View) -> dict[str, Any]:
    """Entries for display. String keys as they are; when any key is not a string,
    every key as the JSON text of its display, so keys of different types never
    merge into one entry; texts that repeat get a ``#n`` suffix."""
    shown: dict[str, Any] = {}
    if all(type(k) is str for k, _ in items):
        for k, v in items:
            if view.left <= 0:
                shown[_NOT_SHOWN] = view.part(_NOT_SHOWN)
                break
            shown[view.chars(k)] = _shown(v, depth, view)
        return shown
    for k, v in items:
        if view.left <= 0:
            shown[_NOT_SHOWN] = view.part(_NOT_SHOWN)
            break
        name = base = _key_text(k, depth, view)
        n = 1
        while name in shown:
            n += 1
            name = f"{base} #{n}"
        shown[name] = _shown(v, depth, view)
    return shown


def _state(value: Any, cls: type, shown: dict[str, Any], depth: int, view: _View) -> None:
    """Add every ``__dict__`` entry and every set slot of ``value`` to ``shown``
    (read as the digest reads them)."""
    entries: list[tuple[Any, Any]] = []
    if _dictoffset(cls):
        entries.extend(dict.items(_instance_dict(value, cls)))
    for klass in _mro(cls):
        if not _flags(klass) & _HEAP_TYPE:
            continue
        space = _namespace(klass)
        for slot in _declared_slots(klass):
            try:
                entries.append((slot, space[slot].__get__(value, cls)))
            except AttributeError:  # an unset slot: nothing to show
                continue
    for key, held in entries:
        name = base = view.chars(key) if type(key) is str else _key_text(key, depth, view)
        n = 1
        while name in shown:
            n += 1
            name = f"{base} #{n}"
        shown[name] = _shown(held, depth, view)


def _model(value: Any, cls: type, depth: int, view: _View) -> dict[str, Any]:
    """A pydantic model: every field it holds (those excluded from serialisation
    too), its extra and private attributes; secrets as ``**********``."""
    shown: dict[str, Any] = {"__class__": _name(cls)}
    fields = _instance_dict(value, cls)
    parts: list[tuple[Any, Any]] = list(dict.items(fields))
    found: dict[str, Any] = {}
    for klass in _mro(cls):
        space = _namespace(klass)
        for slot in _declared_slots(klass):
            try:
                found.setdefault(slot, space[slot].__get__(value, cls))
            except AttributeError:
                continue
    for slot in ("__pydantic_extra__", "__pydantic_private__"):
        if type(found.get(slot)) is dict:
            parts.extend(dict.items(found[slot]))
    given = found.get("__pydantic_fields_set__")
    if type(given) is set:  # a PATCH body: a field left out is not one set to its default
        unset = [view.chars(k) for k in fields if type(k) is str and k not in given]
        if unset:
            shown["__unset__"] = unset
    for key, held in parts:
        name = base = view.chars(key) if type(key) is str else _key_text(key, depth, view)
        n = 1
        while name in shown:
            n += 1
            name = f"{base} #{n}"
        shown[name] = _shown(held, depth, view)
    return shown


def _is_model(cls: type) -> bool:
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return isinstance(base, type) and issubclass(cls, base)


def _builtin(value: Any) -> tuple[type, Any] | None:
    """The built-in type ``value`` is an instance of, and its built-in value read
    through the built-in's own methods (``None``: not one)."""
    for base, read in _BUILTINS:
        if isinstance(value, base):
            return base, read(value)
    return None


_BUILTINS: tuple[tuple[type, Any], ...] = (
    (bool, bool.__bool__),
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
    (complex, lambda v: complex(complex.real.__get__(v), complex.imag.__get__(v))),
    (list, lambda v: list(list.__iter__(v))),
    (tuple, lambda v: list(tuple.__iter__(v))),
    (dict, lambda v: v),
    (set, lambda v: list(set.__iter__(v))),
    (frozenset, lambda v: list(frozenset.__iter__(v))),
    (bytes, lambda v: bytes(memoryview(v))),
    (bytearray, lambda v: bytes(memoryview(v))),
)


def _plain(base: type, value: Any, raw: Any, depth: int, view: _View) -> Any:
    """The display of a built-in value ``raw`` of type ``base`` (read from ``value``)."""
    if base is bool or raw is None:
        return raw
    if base is str:
        return view.chars(raw)
    if base is int:
        shown = _int_text(raw)
        return view.chars(shown) if type(shown) is str else shown
    if base is float:
        return raw
    if base is complex:
        return view.chars(str(raw))
    if base in (list, tuple):
        return _listed(raw, depth, view)
    if base is dict:
        items = _items(value)
        assert items is not None
        return _shown_mapping(items, depth, view)
    if base in (set, frozenset):
        shown_items = _listed(raw, depth, view)
        keys = [json.dumps(v, sort_keys=True, default=str) for v in shown_items]
        return [item for _, item in sorted(zip(keys, shown_items, strict=True), key=lambda e: e[0])]
    return {"bytes": view.chars(raw.hex())}


def _shown(value: Any, depth: int, view: _View) -> Any:
    """A JSON value for display: never raises, never runs the app's code."""
    if depth > _MAX_DEPTH:
        return view.part("<nested too deeply>")
    view.left -= 1
    if view.left < 0:
        return view.part(_NOT_SHOWN)
    depth += 1
    cls = type(value)
    if value is None or cls is bool or cls is float:
        return value
    if cls is str:
        return view.chars(value)
    if cls is int:
        text = _int_text(value)
        return text if type(text) is int else view.chars(text)
    key = id(value)
    if key in view.path:
        return _CYCLE  # the digest writes it as a reference: nothing is hidden
    view.path.add(key)
    try:
        if cls is dict:  # the common containers first (a logged call shows every one)
            return _shown_mapping(list(dict.items(value)), depth, view)
        if cls is list or cls is tuple:
            return _listed(value, depth, view)
        return _shown_object(value, cls, depth, view)
    except Exception:  # a display must never fail the call
        return view.part(f"<{cls.__qualname__}>")
    finally:
        view.path.discard(key)


def _shown_object(value: Any, cls: type, depth: int, view: _View) -> Any:
    secret = _secret_base()
    if secret is not None and issubclass(cls, secret):
        return _SECRET
    if issubclass(cls, type):  # a class as a value (a class method's cls): its name
        return view.chars(f"<class {_name(value)}>")
    if issubclass(cls, enum.Enum):
        member, name, raw = _enum_member(value, cls)  # by name and identity: no app code
        if member and type(name) is str:
            return view.chars(f"{_name(cls)}.{name}")
        if member and type(raw) is int:  # a composite flag without a name (3.10)
            return view.chars(f"{_name(cls)}({raw})")
        return view.part(f"<not shown: a {_name(cls)} value that is not a member>")
    if (_module(cls), _qualname_of(cls)) in _TEXTUAL:
        return _textual(value, cls, view)
    if _is_model(cls):
        return _model(value, cls, depth, view)
    found = _builtin(value)
    if found is not None:
        base, raw = found
        plain = _plain(base, value, raw, depth, view)
        if cls is base:
            return plain
        extra: dict[str, Any] = {}
        _state(value, cls, extra, depth, view)
        if not extra:
            return plain  # a subclass holding nothing more: its value
        return {"__class__": _name(cls), "__value__": plain, **extra}
    if cls is collections.deque:
        return _listed(collections.deque.__iter__(value), depth, view)
    if not _flags(cls) & _HEAP_TYPE or callable(value):  # a class written in C, code
        return view.part(f"<{_name(cls)}>")
    shown: dict[str, Any] = {"__class__": _name(cls)}
    solid = next(k for k in _mro(cls) if not _flags(k) & _HEAP_TYPE)
    if solid is not object:  # a base written in C keeps state no attribute shows
        shown["__value__"] = view.part(f"<not shown: the state of its {_name(solid)} base>")
    _state(value, cls, shown, depth, view)
    return shown


def _textual(value: Any, cls: type, view: _View) -> Any:
    """A standard-library value (a date, a ``Decimal``, a path...): its text,
    written by the standard library."""
    module = sys.modules.get(_module(cls))
    if getattr(module, _qualname_of(cls), None) is not cls:
        return view.part(f"<{_name(cls)}>")  # a class that only takes the name
    if is_python_atom(cls):  # a path, an address...: its text only when it is the value
        try:
            return view.chars(atom_text(value, cls))
        except NoCanonicalForm:
            return view.part(f"<not shown: a {_name(cls)} whose text is not what it holds>")
    zone = getattr(value, "tzinfo", None) if _module(cls) == "datetime" else None
    if zone is not None and not _standard_zone(type(zone)):
        return view.part(f"<{_name(cls)} in an app's time zone>")  # its text runs app code
    return view.chars(str(value))


def _standard_zone(cls: type) -> bool:
    """Whether ``cls`` is ``datetime.timezone`` or ``zoneinfo.ZoneInfo`` itself
    (by identity: a class that only takes their names runs the app's code)."""
    import datetime  # loaded already: the value is a datetime

    zoneinfo = sys.modules.get("zoneinfo")
    return cls is datetime.timezone or (
        zoneinfo is not None and cls is getattr(zoneinfo, "ZoneInfo", None)
    )


def shown_arguments(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``arguments`` as plain JSON values (what an approver and the decision log
    are shown), and whether that display is whole (every part the digest reads is
    in it); never raises. Keys of different types never merge; integers beyond
    2**53 are shown as their decimal digits (a string)."""
    view = _View()
    items = _items(arguments)
    try:
        if items is None:
            items = list(dict(arguments).items())
        shown = _shown_mapping(items, 0, view)
    except Exception:
        return {}, False
    return shown, view.whole
