"""What an approver and the decision log are shown of a call's arguments.

:func:`shown_arguments` turns bound arguments into plain JSON and says whether that
display is *whole*: every part the digest reads is in it. A call is approvable only
when its display is whole (an approver never approves what they were not shown).
The promise, and how each part keeps it:

* Two calls the digest tells apart are shown apart (a pydantic secret excepted:
  it is hidden). JSON's own values are shown as themselves: ``null``, booleans,
  finite floats, strings (whose characters can all be seen), integers within
  2**53, lists, and objects whose keys are such strings none of which looks like a
  tag (``__...__``). Every other value is an object whose keys are tags:

  - ``{"__str__": repr}``: a string holding a character an approver cannot see (a
    control, format (bidi override, zero-width), separator or surrogate
    character; line breaks and tabs excepted), each as an escape; a key or
    attribute name holding one is shown as its ``repr``, as a tag-like one is;
  - ``{"__tuple__": [...]}``, ``{"__set__": [...]}``, ``{"__frozenset__": [...]}``
    (a set's items in the order of their displays' text), ``{"__bytes__": hex}``,
    ``{"__bytearray__": hex}``, ``{"__int__": digits}`` (beyond 2**53; ``0x...``
    beyond Python's int-to-text limit), ``{"__float__": "nan"}`` (``-nan``,
    ``inf``, ``-inf``, or a NaN's bits), ``{"__complex__": [real, imag]}``;
  - ``{"__dict__": {key text: value}}``: a mapping with a key that is not a
    string, or looks like a tag: a string key as its ``repr`` (``'1'``), any
    other as the JSON text of its display (``1``), repeats with `` #n``;
  - ``{"__class__": "module.Name", ...}``: any other object: a subclass of a
    built-in type with its built-in value under ``__value__``, a standard-library
    value with its text under ``__value__`` (a datetime with ``__tzinfo__`` and
    ``__fold__``), an enum member with ``__member__``, a ``defaultdict`` with
    ``__factory__``, a pydantic model with ``__unset__``, ``__extra__`` and
    ``__private__``, a secret as ``**********``; then every attribute (its
    ``__dict__`` entries and slots, a name that looks like a tag as its ``repr``);
  - ``{"__type__": "module.Name"}``: a class passed as a value;
  - ``{"__same__": "/path"}``: a container or object met again (``move(a, a)`` is
    not ``move(a, copy(a))``; a structure that contains itself): the JSON pointer
    of where it was first shown (``/x/__dict__`` after an object's path: its
    attribute dictionary; ``@n`` in a ``__dict__``: the key of its n-th entry).

* State is read as the digest reads it (:mod:`d2.core._classes`): the
  interpreter's own descriptors, never ``__repr__``, ``model_dump``, properties or
  ``isinstance`` (which asks a value its ``__class__``); the app's code is never
  run. A value the digest refuses to read (a subclass of a built-in type that
  overrides the built-in's methods, a path whose cached text is not its parts, a
  class written in C, code) is shown as a ``<not shown: ...>`` marker.
* The work is bounded: at most :data:`_MAX_SHOWN` values and :data:`_MAX_TEXT`
  characters of text. Past a bound, nested too deeply, or for a marker, the
  display is not whole.

It imports nothing of D2 but :mod:`d2.core._classes`, :mod:`d2.core._atoms` (how
the digest reads state), :mod:`d2.core._canonical` and :mod:`d2.core._shown_text`.
"""

from __future__ import annotations

import collections
import enum
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._atoms import atom_text, is_python_atom
from ._canonical import _secret_base
from ._classes import (
    _HEAP_TYPE,
    NoCanonicalForm,
    _compared_by_identity,
    _dictoffset,
    _enum_member,
    _flags,
    _instance_dict,
    _known,
    _leads_to,
    _module,
    _mro,
    _overridden,
    _qualname_of,
    _slot_values,
    _stdlib,
)
from ._shown_text import _SAFE_INT, _float_text, _int_text, _seen

__all__ = ["TOO_LARGE", "shown_arguments", "shown_with_reason"]

_MAX_DEPTH = 64  # how deep a display goes
_MAX_SHOWN = 100_000  # values shown at most; past it, the rest of a container is _NOT_SHOWN
_MAX_TEXT = 16 * 1024 * 1024  # characters of text shown at most (strings, digits, hex)
_NOT_SHOWN = "<not shown: the arguments hold more than a display shows>"
_TOO_DEEP = "<not shown: nested too deeply>"
TOO_LARGE = frozenset({_NOT_SHOWN, _TOO_DEEP})  # the markers of a display past its bounds
_SECRET = "**********"
# never referenced (by identity: ``in`` a tuple of types would run a metaclass's __eq__)
_SCALARS = frozenset(id(t) for t in (str, int, float, bool, bytes, complex, type(None)))
_PYDANTIC = ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")

# Standard-library values written in C, shown by their text, by exact class.
_C_TEXTUAL = {
    ("datetime", "date"),
    ("datetime", "datetime"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("zoneinfo", "ZoneInfo"),
}
# JSON texts (one encoder each: json.dumps with options makes a new one per call)
_SORT_TEXT = json.JSONEncoder(separators=(",", ":")).encode  # a set item's sort key
_KEY_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # a key
_odict_items = collections.OrderedDict.items  # its own linked order (C: no override)
_factory = vars(collections.defaultdict)["default_factory"].__get__
_maxlen = vars(collections.deque)["maxlen"].__get__


class _View:
    """One display's budget (values and characters left), whether it is whole so
    far, and where each container and object was first shown (by id; the objects
    are kept, so an id is never reused while the display lives)."""

    __slots__ = ("escape", "left", "misses", "names", "seen", "text", "whole", "why")

    def __init__(self, escape: bool = False) -> None:
        self.escape = escape  # strings with characters an approver cannot see: escaped
        self.left = _MAX_SHOWN
        self.text = _MAX_TEXT
        self.whole = True
        self.why = ""  # the first part not shown
        self.seen: dict[int, tuple[str, Any]] = {}
        self.names: dict[int, tuple[bool, type]] = {}  # _leads_to, once per class
        self.misses: set[tuple[str, str]] = set()  # _known: modules not loaded

    def part(self, marker: str) -> str:
        """``marker`` in place of a part not shown: the display is not whole."""
        self.whole = False
        self.why = self.why or marker
        return marker

    def chars(self, text: str) -> str:
        """``text`` when the budget still has room for it, else the marker."""
        self.text -= len(text)
        return text if self.text >= 0 else self.part(_NOT_SHOWN)

    def met(self, value: Any, path: str) -> dict[str, str] | None:
        """A reference to where ``value`` was first shown; ``None`` the first time
        (then it is recorded as shown at ``path``)."""
        found = self.seen.get(id(value))
        if found is not None:
            return {"__same__": self.chars(found[0])}
        self.seen[id(value)] = (path, value)
        return None


def _at(path: str, step: str) -> str:
    """``path`` one step down (a JSON pointer: ``~`` and ``/`` escaped)."""
    if "~" in step or "/" in step:
        step = step.replace("~", "~0").replace("/", "~1")
    return f"{path}/{step}"


def _reserved(key: str, view: _View) -> bool:
    """Whether a string key looks like a tag of the display (``__...__``) or (in a
    request) holds a character an approver cannot see: then it is shown as its
    ``repr``."""
    if len(key) >= 4 and key.startswith("__") and key.endswith("__"):
        return True
    return view.escape and not _seen(key)


def _text(text: str, view: _View) -> Any:
    """A string as itself, or ``{"__str__": its repr}`` when it holds a character an
    approver cannot see (:func:`_seen`): each such character as a readable escape."""
    if not view.escape or len(text) > view.text or _seen(text):  # (past the budget:
        return view.chars(text)  # refused, unread)
    return {"__str__": view.chars(repr(text))}


def _in(klass: Any, cls: type) -> bool:
    """Whether ``klass`` is in the MRO of ``cls`` (by identity: no class's code)."""
    return klass is not None and any(k is klass for k in _mro(cls))


def _class_name(cls: type, view: _View) -> str:
    """``module.qualname``; one that does not lead to ``cls`` (a class made in a
    function, by ``type()``, or replaced since) is marked, and the display is not
    whole (the digest refuses it)."""
    module, qualname = _module(cls), _qualname_of(cls)
    if type(module) is not str or type(qualname) is not str:
        return view.part("<not shown: a class without a name>")
    name = view.chars(f"{module}.{qualname}")
    if view.escape and not name.isprintable():
        return view.part("<not shown: a class named with characters that cannot be seen>")
    if not _leads_to(cls, view.names):
        view.part(f"<not shown: {name} is not the class its name leads to>")
        return f"{name} <not the class its name leads to>"
    return name


# -- the built-in value of a value (exact, or of a subclass) ---------------------------


def _listed(items: Iterable[Any], path: str, depth: int, view: _View) -> list[Any]:
    """The display of each item, in order; once the budget is spent, one marker for
    the rest (a display past its bound gives up at once: it is not whole)."""
    shown = []
    for i, item in enumerate(items):
        if view.left <= 0:
            shown.append(view.part(_NOT_SHOWN))
            break
        shown.append(_shown(item, f"{path}/{i}", depth, view))
    return shown


def _sorted(items: Iterable[Any], path: str, depth: int, view: _View) -> list[Any]:
    """A set's items, ordered by the JSON text of each item's display made afresh
    (what it holds, not where else it was met), then shown in that order."""
    keyed = []
    for item in items:
        if view.left <= 0:
            return [view.part(_NOT_SHOWN)]
        if id(type(item)) in _SCALARS:  # never met again as one object: shown once
            shown = _shown(item, "", depth, view)
            keyed.append((_SORT_TEXT(shown), shown))
            continue
        seen, view.seen = view.seen, {}
        try:
            text = _SORT_TEXT(_shown(item, "", depth, view))
        finally:
            view.seen = seen
        keyed.append((text, _Again(item)))
    keyed.sort(key=lambda entry: entry[0])
    shown_items = []
    for i, (_, item) in enumerate(keyed):
        if type(item) is _Again:  # shown again, where other places may refer to it
            shown_items.append(_shown(item.value, f"{path}/{i}", depth, view))
        else:
            shown_items.append(item)
    return shown_items


class _Again:
    """A set's item ordered by its display made afresh: shown again in its place."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _mapping(items: list[tuple[Any, Any]], path: str, depth: int, view: _View) -> Any:
    """A mapping's entries, in its order: as a JSON object when every key is a
    string that does not look like a tag, else under ``__dict__`` with each key as
    text (a string as its ``repr``, any other as the JSON text of its display), so
    keys of different types never merge into one entry."""
    shown: dict[str, Any] = {}
    if all(type(k) is str and not _reserved(k, view) for k, _ in items):
        for k, v in items:
            if view.left <= 0:
                shown[_NOT_SHOWN] = view.part(_NOT_SHOWN)
                break
            shown[view.chars(k)] = _shown(v, _at(path, k), depth, view)
        return shown
    path = f"{path}/__dict__"
    for i, (k, v) in enumerate(items):
        view.left -= 1
        if view.left <= 0:
            shown[_NOT_SHOWN] = view.part(_NOT_SHOWN)
            break
        if type(k) is str:
            text = view.chars(repr(k))
        else:
            key = _shown(k, f"{path}/@{i}", depth, view)
            text = view.chars(_KEY_TEXT(key))
        name, n = text, 1
        while name in shown:
            n += 1
            name = f"{text} #{n}"
        shown[name] = _shown(v, _at(path, name), depth, view)
    return {"__dict__": shown}


def _content(base: type, raw: Any, path: str, depth: int, view: _View) -> Any:
    """The display of ``raw``, a built-in value of the type ``base`` (exact), as
    the inside of its tag (or the ``__value__`` of a subclass)."""
    if base is str:
        return _text(raw, view)
    if base is int:
        text = _int_text(raw)
        return text if type(text) is int else view.chars(str(text))
    if base is float:
        return _float_text(raw)
    if base is complex:
        return [_float_text(raw.real), _float_text(raw.imag)]
    if base is bytes or base is bytearray:
        return view.chars(raw.hex())
    if base is list or base is tuple or base is collections.deque:
        return _listed(raw, path, depth, view)
    if base is set or base is frozenset:
        return _sorted(raw, path, depth, view)
    return _mapping(list(dict.items(raw)), path, depth, view)  # a dict, in its order


# The built-in types a value may extend: the tag of an exact one, and how the
# built-in value is read from a subclass (the built-in's own methods: never an
# override, never the buffer protocol a class defines).
_BUILTINS: dict[int, tuple[type, str, Callable[[Any], Any]]] = {
    id(t): (t, tag, read)
    for t, tag, read in (
        (str, "", str.__str__),
        (int, "__int__", int.__int__),
        (float, "__float__", float.__float__),
        (
            complex,
            "__complex__",
            lambda v: complex(complex.real.__get__(v), complex.imag.__get__(v)),
        ),
        (bytes, "__bytes__", lambda v: bytes.__getitem__(v, slice(None))),
        (bytearray, "__bytearray__", bytearray.copy),
        (list, "", list.copy),
        (tuple, "__tuple__", lambda v: tuple(tuple.__iter__(v))),
        (set, "__set__", set.copy),
        (frozenset, "__frozenset__", frozenset.copy),
        (dict, "", lambda v: dict(dict.items(v))),
        # (a dict in its linked order)
        (collections.OrderedDict, "", lambda v: dict(_odict_items(v))),
        (collections.defaultdict, "", lambda v: dict(dict.items(v))),
        (collections.deque, "", lambda v: list(collections.deque.__iter__(v))),
    )
}
_CONTAINERS = frozenset(
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
        collections.deque,
    )
)


def _builtin(value: Any, cls: type, path: str, depth: int, view: _View) -> Any:
    """An exact built-in value: itself when JSON has it, else under its tag."""
    if value is None or cls is bool:
        return value
    if cls is str:
        return _text(value, view)
    _, tag, _ = _BUILTINS[id(cls)]
    if not tag and cls is not dict and cls is not list:  # OrderedDict, defaultdict, deque
        return _subclass(value, cls, cls, path, depth, view)
    if id(cls) in _CONTAINERS:
        seen = view.met(value, path)
        if seen is not None:
            return seen
    if cls is dict:
        return _mapping(list(dict.items(value)), path, depth, view)
    if cls is list:
        return _listed(value, path, depth, view)
    if cls is int or cls is float:
        text = _int_text(value) if cls is int else _float_text(value)
        if type(text) is not str:
            return text
        return {"__int__" if cls is int else "__float__": view.chars(text)}
    return {tag: _content(cls, value, _at(path, tag), depth, view)}


# -- objects ---------------------------------------------------------------------------


def _attributes(
    value: Any, cls: type, shown: dict[str, Any], path: str, depth: int, view: _View, skip: Any = ()
) -> None:
    """Add every ``__dict__`` entry and every set slot of ``value`` to ``shown``
    (read as the digest reads them; names in ``skip`` left out). A name that looks
    like a tag is shown as its ``repr``; a name that is not a string, or one both a
    slot and a ``__dict__`` entry hold, leaves the display not whole."""
    entries: list[tuple[Any, Any]] = []
    if _dictoffset(cls):
        found = _instance_dict(value, cls)
        seen = view.met(found, f"{path}/__dict__")  # the dict itself may be passed too
        if seen is not None:
            shown["__dict__"] = seen
        else:
            entries.extend(dict.items(found))
    entries.extend(_slot_values(value, cls))
    for key, held in entries:
        if type(key) is not str:
            shown[_NOT_SHOWN] = view.part("<not shown: an attribute not named by a string>")
            continue
        if key in skip:
            continue
        name = view.chars(repr(key) if _reserved(key, view) else key)
        if name in shown:
            name = view.part(f"{name} <again>")
        shown[name] = _shown(held, _at(path, name), depth, view)


def _subclass(value: Any, cls: type, base: type, path: str, depth: int, view: _View) -> Any:
    """A value of a (subclass of a) built-in type: its class, its built-in value,
    its attributes; refused when the class overrides how the built-in value reads."""
    overridden = None if cls is base else _overridden(cls, base)
    if overridden is not None:
        return view.part(
            f"<not shown: a {_class_name(cls, view)} value, whose class defines "
            f"{overridden}: it may not read as the {base.__name__} it holds>"
        )
    seen = view.met(value, path)
    if seen is not None:
        return seen
    shown: dict[str, Any] = {"__class__": _class_name(cls, view)}
    if base is collections.defaultdict:
        shown["__factory__"] = _shown(_factory(value), f"{path}/__factory__", depth, view)
    raw = _BUILTINS[id(base)][2](value)
    kind = dict if base is collections.OrderedDict or base is collections.defaultdict else base
    shown["__value__"] = _content(kind, raw, f"{path}/__value__", depth, view)
    if base is collections.deque and _maxlen(value) is not None:
        shown["__maxlen__"] = _maxlen(value)
    _attributes(value, cls, shown, path, depth, view)
    return shown


def _model(value: Any, cls: type, path: str, depth: int, view: _View) -> Any:
    """A pydantic model: every field it holds (those excluded from serialisation
    too) and every slot; which fields were set as ``__unset__`` (the fields left
    out, as in a PATCH body) or, when that does not say it exactly,
    ``__fields_set__``; its extra and private attributes under ``__extra__`` and
    ``__private__`` (when it keeps them)."""
    seen = view.met(value, path)
    if seen is not None:
        return seen
    shown: dict[str, Any] = {"__class__": _class_name(cls, view)}
    fields = _instance_dict(value, cls)
    own = dict(_slot_values(value, cls))
    given: Any = own.get(_PYDANTIC[0])
    extra = own.get(_PYDANTIC[1])
    names = [k for k in fields if type(k) is str]
    extras = [k for k in extra if type(k) is str] if type(extra) is dict else []
    exact = type(given) is set and all(type(k) is str for k in given)
    unset = [k for k in names if k not in given] if exact else []
    if any(slot not in own for slot in _PYDANTIC):  # unset: pydantic always sets them
        shown[_NOT_SHOWN] = view.part("<not shown: a model whose pydantic state is unset>")
    elif exact and given == (set(names) - set(unset)) | set(extras):
        if unset:
            shown["__unset__"] = [view.chars(k) for k in unset]
    else:
        shown["__fields_set__"] = _shown(given, f"{path}/__fields_set__", depth, view)
    _attributes(value, cls, shown, path, depth, view, skip=_PYDANTIC)
    for slot, tag in zip(_PYDANTIC[1:], ("__extra__", "__private__"), strict=True):
        if own.get(slot) is not None:
            shown[tag] = _shown(own[slot], f"{path}/{tag}", depth, view)
    return shown


def _textual(value: Any, cls: type, view: _View) -> Any:
    """A standard-library value written in C: its class and its text, written by
    the standard library (a datetime's zone and fold beside it)."""
    shown: dict[str, Any] = {"__class__": _class_name(cls, view)}
    qualname = _qualname_of(cls)
    if qualname in ("datetime", "time"):
        zone = value.tzinfo
        if zone is not None and not _standard_zone(type(zone)):
            return view.part(f"<not shown: a {qualname} in an app's time zone>")  # its code
        shown["__value__"] = view.chars(str(value))
        if zone is not None:
            shown["__tzinfo__"] = _textual(zone, type(zone), view)
        if value.fold:
            shown["__fold__"] = 1
        return shown
    if qualname == "ZoneInfo":
        key = value.key
        try:
            named = type(key) is str and cls(key) is value
        except Exception:
            named = False
        if not named:  # from_file, no_cache: its key may not name the zone it holds
            return view.part("<not shown: a ZoneInfo not made by ZoneInfo(key)>")
        shown["__value__"] = view.chars(key)
        return shown
    shown["__value__"] = view.chars(repr(value) if qualname == "timezone" else str(value))
    return shown


def _standard_zone(cls: type) -> bool:
    """Whether ``cls`` is ``datetime.timezone`` or ``zoneinfo.ZoneInfo`` itself
    (by identity: a class that only takes their names runs the app's code)."""
    return cls is _known("datetime", "timezone") or cls is _known("zoneinfo", "ZoneInfo")


def _object(value: Any, cls: type, path: str, depth: int, view: _View) -> Any:
    """Any value that is not an exact built-in one."""
    if _in(type, cls):  # a class as a value (a class method's cls): its name
        return {"__type__": _class_name(value, view)}
    if _in(_secret_base(view.misses), cls):  # its class and state, never its secret
        seen = view.met(value, path)
        if seen is not None:
            return seen
        shown: dict[str, Any] = {"__class__": _class_name(cls, view), "__value__": _SECRET}
        _attributes(value, cls, shown, path, depth, view, skip=("_secret_value",))
        return shown
    if _in(enum.Enum, cls):
        member, name, raw = _enum_member(value, cls)  # by name and identity: no app code
        if member and type(name) is str:
            return {"__class__": _class_name(cls, view), "__member__": _text(name, view)}
        if member and type(raw) is int:  # a composite flag without a name (3.10)
            return {"__class__": _class_name(cls, view), "__value__": _int_text(raw)}
        return view.part(f"<not shown: a {_class_name(cls, view)} value that is no member>")
    if is_python_atom(cls):  # a path, an address...: its text only when it is the value
        try:
            return {
                "__class__": _class_name(cls, view),
                "__value__": _text(atom_text(value, cls), view),
            }
        except NoCanonicalForm:
            return view.part(
                f"<not shown: a {_class_name(cls, view)} whose text is not what it holds>"
            )
    module, qualname = _module(cls), _qualname_of(cls)
    named = type(module) is str and type(qualname) is str  # (else never hashed: app code)
    if named and (module, qualname) in _C_TEXTUAL and _stdlib(cls, module, qualname):
        return _textual(value, cls, view)
    if _in(_known("pydantic", "BaseModel", view.misses), cls):
        return _model(value, cls, path, depth, view)
    base = next((k for k in _mro(cls) if id(k) in _BUILTINS), None)
    if base is not None:
        return _subclass(value, cls, base, path, depth, view)
    if not _flags(cls) & _HEAP_TYPE or callable(value):  # a class written in C, code
        return view.part(f"<not shown: a {_class_name(cls, view)} value>")
    seen = view.met(value, path)
    if seen is not None:
        return seen
    shown = {"__class__": _class_name(cls, view)}
    solid = next(k for k in _mro(cls) if not _flags(k) & _HEAP_TYPE)
    if solid is not object:  # a base written in C keeps state no attribute shows
        shown["__value__"] = view.part(
            f"<not shown: the state of its {_class_name(solid, view)} base>"
        )
    _attributes(value, cls, shown, path, depth, view)
    if len(shown) == 1 and _compared_by_identity(cls):  # shown, never approved (the
        view.part("<not shown: an object that holds nothing but its identity>")  # digest
    return shown  # refuses it too: two such objects would be one call)


def _shown(value: Any, path: str, depth: int, view: _View) -> Any:
    """A JSON value for display (``path``: the JSON pointer it is shown at): never
    raises, never runs the app's code."""
    if depth > _MAX_DEPTH:
        return view.part(_TOO_DEEP)
    view.left -= 1
    if view.left < 0:
        return view.part(_NOT_SHOWN)
    cls = type(value)
    if cls is str:  # the common values first (a logged call shows every one)
        return _text(value, view) if view.escape else view.chars(value)
    if value is None or cls is bool or (cls is int and -_SAFE_INT <= value <= _SAFE_INT):
        return value
    try:
        if id(cls) in _BUILTINS:
            return _builtin(value, cls, path, depth + 1, view)
        return _object(value, cls, path, depth + 1, view)
    except Exception:  # a display must never fail the call
        return view.part("<not shown: a value that cannot be read>")


def shown_arguments(
    arguments: Mapping[str, Any], escape: bool = False
) -> tuple[dict[str, Any], bool]:
    """``arguments`` as plain JSON (what an approver and the decision log are shown;
    see the module's description), and whether that display is whole (every part
    the digest reads is in it); never raises, never runs the app's code.
    ``escape``: as a request shows them, a string holding a character an approver
    cannot see as ``{"__str__": repr}`` (a decision log keeps the string, which
    ``d2 replay`` judges)."""
    shown, why = shown_with_reason(arguments, escape)
    return shown, not why


def shown_with_reason(
    arguments: Mapping[str, Any], escape: bool = False
) -> tuple[dict[str, Any], str]:
    """:func:`shown_arguments`, with the first part not shown (its marker) in place
    of whether the display is whole: ``""`` when it is."""
    view = _View(escape)
    try:
        if type(arguments) is collections.OrderedDict:
            items = list(_odict_items(arguments))
        elif isinstance(arguments, dict):
            items = list(dict.items(arguments))
        else:
            items = list(dict(arguments).items())
        if all(type(k) is str for k, _ in items):  # argument names: as they are
            shown: dict[str, Any] = {}
            for k, v in items:
                shown[view.chars(k)] = _shown(v, _at("", k), 0, view)
        else:
            shown = _mapping(items, "", 0, view)
    except Exception:
        return {}, "<not shown: arguments that cannot be read>"
    return shown, "" if view.whole else view.why or _NOT_SHOWN
